"""Train fusion heads (`classify.model.fusion`) on cached tokens; one folder per head.

A head is a name and the modalities it uses, e.g. {"rgb": ("rgb",), "skeleton": ("skeleton",),
"token": ("rgb", "skeleton")}. `run_heads` trains them all and adds "late": the mean softmax of
the one-modality heads (nothing is trained for it).

Skeleton tokens are the trained 2s-AGCN streams' last-layer tokens averaged over joints, the
streams concatenated along channels: (T', sum of channels) per clip, at the test-time frame
sampling. The AGCN saw the training clips, so its training-clip tokens are cleaner than its
test-clip tokens; a fusion head may lean on the skeleton more than it should on real data.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from classify.config import FusionConfig
from classify.data.clips import Clip
from classify.data.skeleton import clip_input
from classify.model.agcn import AGCN
from classify.model.fusion import FusionClassifier
from extract.io import append_metrics_row, save_checkpoint
from extract.progress import progress as progress_bar
from extract.training import data_digest, resume, warmup_cosine

Tokens = dict[str, np.ndarray]  # modality -> (N, N_m, C_m)


@torch.inference_mode()
def skeleton_tokens(models: dict[str, AGCN], clips: list[Clip], keypoints: dict[str, np.ndarray],
                    frames: int, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """(N, T', C) skeleton tokens of `clips` (see the module docstring)."""
    out = []
    for m in models.values():
        m.eval()
    for b in range(0, len(clips), batch_size):
        parts = []
        for stream, m in models.items():
            x = np.stack([clip_input(keypoints[c.video][c.start:c.end + 1], frames, stream)
                          for c in clips[b:b + batch_size]])
            parts.append(m.tokens(torch.from_numpy(x).to(device)).mean(2).float().cpu())
        out.append(torch.cat(parts, -1))
    return torch.cat(out).numpy()


def _lr(step: float, steps_per_epoch: int, cfg: FusionConfig) -> float:
    """One warm-up epoch, then a cosine to 0 over the other epochs (per step)."""
    return warmup_cosine(step, cfg.lr, ramp=steps_per_epoch, start=steps_per_epoch,
                         span=cfg.epochs * steps_per_epoch - steps_per_epoch)


def train_head(cfg: FusionConfig, uses: tuple[str, ...], inputs: Tokens, labels: np.ndarray,
               num_classes: int, out: Path, device: torch.device, seed: int = 0,
               progress: bool = True) -> FusionClassifier:
    """Train one head to the last epoch, resuming from `out/last.pt`."""
    torch.manual_seed(seed)
    shapes = {m: inputs[m].shape[1:] for m in uses}
    model = FusionClassifier(cfg, uses, num_classes, shapes).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    last = Path(out) / "last.pt"
    data_id = data_digest(labels.tobytes(), *(np.ascontiguousarray(inputs[m]).tobytes()
                                              for m in uses))
    start = resume(last, model, optim, data_id)
    x = {m: torch.from_numpy(inputs[m]).to(device) for m in uses}
    y = torch.from_numpy(labels).to(device)
    steps = math.ceil(len(y) / cfg.batch_size)
    gen = torch.Generator().manual_seed(seed)
    for epoch in progress_bar(range(start, cfg.epochs), desc=f"head {Path(out).name}",
                              unit="epoch", enabled=progress):
        model.train()
        gen.manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(y), generator=gen).to(device)
        t0, total = time.perf_counter(), 0.0
        for i in range(steps):
            for g in optim.param_groups:
                g["lr"] = _lr(epoch * steps + i, steps, cfg)
            b = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            loss = F.cross_entropy(model({m: v[b] for m, v in x.items()}), y[b],
                                   label_smoothing=cfg.label_smoothing)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += loss.item() * len(b)
        save_checkpoint(last, {"model": model.state_dict(), "optim": optim.state_dict(),
                               "epoch": epoch, "uses": list(uses), "data": data_id})
        append_metrics_row(Path(out), {"epoch": epoch, "loss": total / len(y),
                                       "seconds": round(time.perf_counter() - t0, 2)})
    return model


@torch.inference_mode()
def head_scores(model: FusionClassifier, inputs: Tokens, device: torch.device,
                batch_size: int = 256) -> np.ndarray:
    """Softmax scores (N, C)."""
    model.eval()
    n = len(next(iter(inputs.values())))
    out = [torch.softmax(model({m: torch.from_numpy(inputs[m][b:b + batch_size]).to(device)
                                for m in model.uses}), -1).cpu()
           for b in range(0, n, batch_size)]
    return torch.cat(out).numpy()


def run_heads(cfg: FusionConfig, heads: dict[str, tuple[str, ...]], train: Tokens,
              labels: np.ndarray, test: Tokens, num_classes: int, out: Path,
              device: torch.device, seed: int = 0, progress: bool = True
              ) -> dict[str, np.ndarray]:
    """Test scores (N, C) of every head, and "late" (see the module docstring)."""
    models = {name: train_head(cfg, uses, train, labels, num_classes, Path(out) / name, device,
                               seed, progress) for name, uses in heads.items()}
    return score_heads(models, test, device)


def score_heads(models: dict[str, FusionClassifier], inputs: Tokens,
                device: torch.device) -> dict[str, np.ndarray]:
    """Scores (N, C) of every trained head on `inputs`, and "late": the mean of the
    one-modality heads' when there are several."""
    scores = {name: head_scores(m, inputs, device) for name, m in models.items()}
    single = [scores[n] for n, m in models.items() if len(m.uses) == 1]
    if len(single) > 1:
        scores["late"] = sum(single) / len(single)
    return scores
