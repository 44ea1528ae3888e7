"""Train and evaluate the skeleton classifier (2s-AGCN) on iMiGUE clips; one run directory.

    RUN/config.toml       the resolved config          RUN/run.json      command, data, versions
    RUN/<stream>/last.pt  model + optimiser each epoch (a killed run resumes from it)
    RUN/<stream>/metrics.csv                           loss, train top-1 per epoch
    RUN/metrics.json      test top-1/top-5, mean class accuracy, per-class, confusion, per stream
                          and fused (summed softmax of the streams)
    RUN/predictions.csv   per test clip: video, row, frames, true class, predicted top-5 (fused)
    RUN/confusion.csv     the fused confusion matrix (rows true, columns predicted)
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from classify.clips import Clip, ClipIndex, index_imigue
from classify.config import ClassifyConfig
from classify.emotion import run_emotion
from classify.fusion_train import run_heads, skeleton_tokens
from classify.metrics import classification_report, ranked
from classify.model.agcn import AGCN
from classify.rgb_tokens import extract_rgb_tokens, load_rgb_tokens
from classify.skeleton import clip_input
from classify.skeleton_cache import Skeletons, check_clip_frames, load_skeletons
from extract.config import config_to_dict, to_toml
from extract.io import (
    RunError,
    append_metrics_row,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
)
from extract.provenance import versions
from extract.runtime import resolve_device


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
    if epoch < t.warmup_epochs:
        return t.lr * (epoch + 1) / (t.warmup_epochs + 1)
    span = max(t.epochs - t.warmup_epochs, 1)
    return 0.5 * t.lr * (1 + math.cos(math.pi * (epoch - t.warmup_epochs) / span))


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
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and not n.endswith(".B")]
    rest = [p for n, p in model.named_parameters() if not (p.ndim > 1 and not n.endswith(".B"))]
    optim = torch.optim.SGD([{"params": decay, "weight_decay": t.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=t.lr, momentum=0.9, nesterov=True)
    data = SkeletonClips(clips, keypoints, stream, cfg.data.frames, train=True, seed=t.seed)
    if not len(data):
        raise RunError(f"no training clips for the {stream} stream")
    start = 0
    last = out / "last.pt"
    if last.is_file():
        ck = load_checkpoint(last)
        model.load_state_dict(ck["model"])
        optim.load_state_dict(ck["optim"])
        start = int(ck["epoch"]) + 1
    gen = torch.Generator().manual_seed(t.seed)
    steps = math.ceil(len(data) / t.batch_size)
    bar = tqdm(total=t.epochs * steps, initial=start * steps, desc=f"train {stream}",
               unit="batch", disable=not progress)
    with bar:
        for epoch in range(start, t.epochs):
            model.train()
            data.epoch = epoch
            gen.manual_seed(t.seed * 1000 + epoch)
            loader = DataLoader(data, batch_size=t.batch_size, shuffle=True, generator=gen,
                                drop_last=len(data) > t.batch_size)
            t0, total, hits, seen = time.perf_counter(), 0.0, 0, 0
            for i, (x, y) in enumerate(loader):
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
                                   "epoch": epoch, "stream": stream})
            append_metrics_row(out, {"epoch": epoch, "loss": total / max(seen, 1),
                                     "train_top1": hits / max(seen, 1),
                                     "lr": lr_at(epoch, cfg),
                                     "seconds": round(time.perf_counter() - t0, 2)})
    return model


def _write_predictions(path: Path, clips: list[Clip], scores: np.ndarray,
                       classes: tuple[str, ...]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["video", "row", "start_frame", "end_frame", "label", "class", "pred",
                "pred_class", "top5", "score"])
    order = ranked(scores)
    for c, rank, s in zip(clips, order, scores, strict=True):
        w.writerow([c.video, c.row, c.start, c.end, c.label + 1, classes[c.label],
                    rank[0] + 1, classes[rank[0]], " ".join(str(r + 1) for r in rank[:5]),
                    f"{s[rank[0]]:.4f}"])
    atomic_write_bytes(path, buf.getvalue().encode())


def run_classify(cfg: ClassifyConfig, data_root: Path, cache: Path, out: Path,
                 progress: bool = True, index: ClipIndex | None = None) -> dict:
    """Index, read skeletons, train every stream, evaluate on the test clips; returns metrics.

    Class ids in predictions.csv are iMiGUE's 1-32 (32 = file class 99)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    index = index or index_imigue(Path(data_root), cfg.data.split or None)
    skel: Skeletons = load_skeletons(index, Path(cache), progress)
    check_clip_frames(index, skel)
    for vid, msg in sorted(skel.failed.items()):
        print(f"skipped video {vid}: {msg}", file=sys.stderr)
    train_clips = [c for c in index.subset("train") if c.video in skel.keypoints]
    test_clips = [c for c in index.subset("test") if c.video in skel.keypoints]
    if not train_clips or not test_clips:
        raise RunError(f"{data_root}: {len(train_clips)} training and {len(test_clips)} test "
                       "clips with a readable skeleton; both are needed")
    atomic_write_bytes(out / "config.toml", to_toml(config_to_dict(cfg)).encode())
    atomic_write_json(out / "run.json", {
        "command": sys.argv, "data": str(Path(data_root).resolve()),
        "cache": str(Path(cache).resolve()), "versions": versions(),
        "clips": {"train": len(train_clips), "test": len(test_clips)},
        "skipped_videos": skel.failed, "device": str(device)})
    classes = index.classes
    metrics: dict = {"streams": {}}
    fused = np.zeros((len(test_clips), len(classes)))
    labels = np.array([c.label for c in test_clips])
    models: dict[str, AGCN] = {}
    for stream in cfg.skeleton.streams:
        t0 = time.perf_counter()
        model = train_stream(cfg, stream, train_clips, skel.keypoints, len(classes),
                             out / stream, device, progress)
        scores = clip_scores(model, SkeletonClips(test_clips, skel.keypoints, stream,
                                                  cfg.data.frames, train=False), device)
        fused += scores
        models[stream] = model
        rep = classification_report(scores, labels, classes)
        rep["train_minutes"] = (time.perf_counter() - t0) / 60
        rep["params"] = sum(p.numel() for p in model.parameters())
        metrics["streams"][stream] = rep
    metrics["fused"] = classification_report(fused, labels, classes)
    metrics["fused"]["streams"] = list(cfg.skeleton.streams)
    metrics["final"] = {**metrics["fused"], "source": "fused"}
    final, final_clips = fused, test_clips
    if cfg.rgb.enabled:
        final_clips, final, rgb = _run_rgb_fusion(cfg, index, train_clips, test_clips, skel,
                                                  models, out, device, metrics, progress)
        if cfg.emotion.enabled:
            t0 = time.perf_counter()
            metrics["emotion"] = run_emotion(cfg.emotion, index, train_clips, test_clips,
                                             skel.keypoints, rgb, out, device, progress)
            metrics["emotion"]["minutes"] = (time.perf_counter() - t0) / 60
    metrics["versions"] = versions()
    atomic_write_json(out / "metrics.json", metrics)
    _write_predictions(out / "predictions.csv", final_clips, final, classes)
    write_miga_csv(out / "miga_track1.csv", final_clips, final, index)
    write_ablation_table(out / "ablations.md", metrics)
    cm = np.asarray(metrics["final"]["confusion"])
    rows = [",".join(["true\\pred", *[str(i + 1) for i in range(len(classes))]])]
    rows += [",".join([str(i + 1), *map(str, r)]) for i, r in enumerate(cm)]
    atomic_write_bytes(out / "confusion.csv", ("\n".join(rows) + "\n").encode())
    return metrics


def _run_rgb_fusion(cfg: ClassifyConfig, index: ClipIndex, train_clips: list[Clip],
                    test_clips: list[Clip], skel: Skeletons, models: dict[str, AGCN], out: Path,
                    device: torch.device, metrics: dict, progress: bool
                    ) -> tuple[list[Clip], np.ndarray, dict[str, np.ndarray]]:
    """RGB tokens, then the rgb / skeleton / late / token heads on the clips with both
    modalities; fills metrics["fusion"] and returns the test clips, their token-fusion scores
    and the RGB tokens {clip key: (1 + frames/2, 768)}."""
    fs = extract_rgb_tokens(index, Path(cfg.rgb.cache), cfg.rgb, progress)
    for vid, msg in sorted(fs.failures().items()):
        print(f"no RGB tokens for video {vid}: {msg}", file=sys.stderr)
    rgb = load_rgb_tokens(fs, train_clips + test_clips)
    tr = [c for c in train_clips if c.key in rgb]
    te = [c for c in test_clips if c.key in rgb]
    if not tr or not te:
        raise RunError(f"{len(tr)} training and {len(te)} test clips have RGB tokens; both "
                       "are needed for the fusion")

    def tokens(clips: list[Clip]) -> dict[str, np.ndarray]:
        return {"rgb": np.stack([rgb[c.key] for c in clips]),
                "skeleton": skeleton_tokens(models, clips, skel.keypoints, cfg.data.frames,
                                            device)}

    t0 = time.perf_counter()
    heads = {"rgb": ("rgb",), "skeleton": ("skeleton",), "token": ("rgb", "skeleton")}
    scores = run_heads(cfg.fusion, heads, tokens(tr), np.array([c.label for c in tr]),
                       tokens(te), len(index.classes), out / "fusion", device, cfg.train.seed,
                       progress)
    labels = np.array([c.label for c in te])
    metrics["fusion"] = {m: classification_report(s, labels, index.classes)
                         for m, s in scores.items()}
    metrics["fusion"]["rgb_featureset"] = str(fs.path)
    metrics["fusion"]["minutes"] = (time.perf_counter() - t0) / 60
    metrics["final"] = {**metrics["fusion"]["token"], "source": "fusion.token"}
    return te, scores["token"], rgb


def write_miga_csv(path: Path, clips: list[Clip], scores: np.ndarray, index: ClipIndex) -> None:
    """The MiGA classification submission: `videoID_clipIndex,label` per clip, the clip index
    0-based within its video's label file and the label 0-based (file class 99 -> 31)."""
    position: dict[str, int] = {}
    for vid in sorted({c.video for c in index.clips}):
        rows = sorted(c.row for c in index.clips if c.video == vid)
        position.update({f"{vid}/{r}": i for i, r in enumerate(rows)})
    pred = ranked(scores)[:, 0]
    lines = [f"{c.video}_{position[c.key]},{int(p)}" for c, p in zip(clips, pred, strict=True)]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def write_ablation_table(path: Path, metrics: dict) -> None:
    """A markdown table of every model of the run (top-1, top-5, mean class accuracy)."""
    rows = [(f"skeleton 2s-AGCN, {k} stream", v) for k, v in metrics["streams"].items()]
    rows.append(("skeleton 2s-AGCN, streams fused", metrics["fused"]))
    names = {"rgb": "RGB only (MViTv2-S tokens)", "skeleton": "skeleton only (AGCN tokens)",
             "late": "late fusion (mean softmax)", "token": "cross-modal token fusion"}
    rows += [(names[m], metrics["fusion"][m]) for m in names if m in metrics.get("fusion", {})]
    lines = ["| model | top-1 | top-5 | mean class | clips |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {100 * r['top1']:.2f} | {100 * r['top5']:.2f} | "
              f"{100 * r['mean_class_accuracy']:.2f} | {r['clips']} |" for n, r in rows]
    if "emotion" in metrics:
        names = {"face": "face only (SwinFace)", "context": "context only (MViTv2-S)",
                 "late": "late fusion (mean softmax)", "interfusion": "InterFusion"}
        lines += ["", "Emotion (win / lose per test video):", "",
                  "| model | accuracy | F1 (win) | AUROC | videos |", "|---|---|---|---|---|"]
        lines += [f"| {names[h]} | {100 * r['accuracy']:.2f} | {100 * r['f1']:.2f} | "
                  f"{r['auroc']:.3f} | {r['videos']} |"
                  for h, r in metrics["emotion"].items() if h in names]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def format_metrics(metrics: dict) -> str:
    lines = []
    fusion = [(m, metrics["fusion"][m]) for m in ("rgb", "skeleton", "late", "token")
              if m in metrics.get("fusion", {})]
    for name, rep in [*metrics["streams"].items(), ("fused", metrics["fused"]), *fusion]:
        lines.append(f"{name:>6}: top-1 {100 * rep['top1']:.2f}  top-5 {100 * rep['top5']:.2f}  "
                     f"mean class {100 * rep['mean_class_accuracy']:.2f}  ({rep['clips']} clips)")
    for h in ("face", "context", "late", "interfusion"):
        if h in metrics.get("emotion", {}):
            r = metrics["emotion"][h]
            lines.append(f"emotion {h:>11}: accuracy {100 * r['accuracy']:.2f}  F1 "
                         f"{100 * r['f1']:.2f}  AUROC {r['auroc']:.3f}  ({r['videos']} videos)")
    return "\n".join(lines)
