"""Train one 2s-AGCN skeleton stream on iMiGUE clips, resumably, and score clips with it.

    RUN/<stream>/last.pt      model + optimiser each epoch (a killed run resumes from it)
    RUN/<stream>/metrics.csv  loss, train top-1 per epoch
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from classify.config import ClassifyConfig
from classify.data.clips import Clip
from classify.data.skeleton import clip_input
from classify.model.agcn import AGCN
from extract.io import (
    RunError,
    append_metrics_row,
    save_checkpoint,
)
from extract.progress import progress as progress_bar
from extract.threads import ThreadGovernor
from extract.training import data_digest, parameter_groups, resume, warmup_cosine


class SkeletonClips(Dataset):
    """Clips as model inputs (3, frames, 25) of one stream, with their labels. In training the
    frames are drawn anew each epoch (deterministic in seed, epoch and clip)."""

    def __init__(self, clips: list[Clip], keypoints: dict[str, np.ndarray], stream: str,
                 frames: int, train: bool, seed: int = 0) -> None:
        self.clips = [c for c in clips if c.video in keypoints]
        self.kp, self.stream, self.frames, self.train = keypoints, stream, frames, train
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        c = self.clips[i]
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        x = clip_input(self.kp[c.video][c.start:c.end + 1], self.frames, self.stream, rng)
        return torch.from_numpy(x), c.label


def lr_at(epoch: float, cfg: ClassifyConfig) -> float:
    """Linear warmup, then cosine to 0, of train.lr (epoch may be fractional)."""
    t = cfg.train
    return warmup_cosine(epoch, t.lr, ramp=t.warmup_epochs + 1, start=t.warmup_epochs,
                         span=t.epochs - t.warmup_epochs)


@torch.inference_mode()
def clip_scores(model: torch.nn.Module, data: SkeletonClips, device: torch.device,
                batch_size: int = 64) -> np.ndarray:
    """Softmax scores (N, C) of every clip of `data`, in order."""
    model.eval()
    out = [torch.softmax(model(x.to(device)).float(), -1).cpu()
           for x, _ in DataLoader(data, batch_size=batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.fc.out_features), np.float32)


def train_stream(cfg: ClassifyConfig, stream: str, clips: list[Clip],
                 keypoints: dict[str, np.ndarray], num_classes: int, out: Path,
                 device: torch.device, progress: bool = True) -> AGCN:
    """Train one stream to the last epoch, resuming from `out/last.pt`; returns the model."""
    t = cfg.train
    torch.manual_seed(t.seed)
    model = AGCN(cfg.skeleton.agcn, num_classes).to(device)
    optim = torch.optim.SGD(parameter_groups(model, t.weight_decay), lr=t.lr, momentum=0.9,
                            nesterov=True)
    data = SkeletonClips(clips, keypoints, stream, cfg.data.frames, train=True, seed=t.seed)
    if not len(data):
        raise RunError(f"no training clips for the {stream} stream")
    last = out / "last.pt"
    data_id = data_digest(stream, str(cfg.data.frames), *sorted(c.key for c in data.clips))
    start = resume(last, model, optim, data_id)
    gen = torch.Generator().manual_seed(t.seed)
    steps = math.ceil(len(data) / t.batch_size)
    bar = progress_bar(total=t.epochs * steps, initial=start * steps, desc=f"train {stream}",
                       unit="batch", enabled=progress)
    threads = ThreadGovernor(t.threads)
    with bar:
        for epoch in range(start, t.epochs):
            model.train()
            data.epoch = epoch
            gen.manual_seed(t.seed * 1000 + epoch)
            loader = DataLoader(data, batch_size=t.batch_size, shuffle=True, generator=gen,
                                drop_last=len(data) > t.batch_size)
            t0, total, hits, seen = time.perf_counter(), 0.0, 0, 0
            for i, (x, y) in enumerate(loader):
                threads.update()  # fewer threads while other processes keep our cores busy
                for g in optim.param_groups:
                    g["lr"] = lr_at(epoch + i / steps, cfg)
                x, y = x.to(device), y.to(device)
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=t.label_smoothing)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                total += loss.item() * len(y)
                hits += int((logits.argmax(-1) == y).sum())
                seen += len(y)
                bar.update(1)
            save_checkpoint(last, {"model": model.state_dict(), "optim": optim.state_dict(),
                                   "epoch": epoch, "stream": stream, "data": data_id})
            append_metrics_row(out, {"epoch": epoch, "loss": total / max(seen, 1),
                                     "train_top1": hits / max(seen, 1),
                                     "lr": lr_at(epoch, cfg),
                                     "seconds": round(time.perf_counter() - t0, 2)})
    return model
