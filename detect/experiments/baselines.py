"""Baselines the detector must beat, scored as the detector is (`python -m detect baseline`).

- probe: a per-step linear classifier (multinomial logistic regression over the C classes and
  background, on standardised features, L-BFGS, L2-regularised); runs of one argmax class become
  segments scored by the class's mean probability over the run.
- dense: the detector's dense head alone (input projection, then DenseHead: Conv1d k3 -> dropout
  -> Conv1d k1, per-class sigmoid) trained with the detector's dense BCE; for each class, the runs
  above each of several probability levels become candidate segments (scored by the mean
  probability over the run), merged by the detector's per-class NMS.

Both tune their score threshold on `val` and report `test` with it, like `train` + `eval`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detect.config import EvalConfig
from detect.data.annotations import Annotations, load_annotations
from detect.data.standardize import channel_stats
from detect.data.windows import dense_targets, instances_in_feature_time
from detect.evaluation.evaluate import score_detections
from detect.inference.detections import Detections, save_predictions
from detect.inference.postprocess import apply_threshold, merge_video
from detect.model.detector import DenseHead
from extract.cache import FeatureSet
from extract.io import atomic_write_json
from extract.progress import progress as progress_bar
from extract.provenance import versions
from extract.streams import FeatureStreams, open_features

KINDS = ("probe", "dense")
DENSE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class BaselineConfig:
    kind: str = "probe"  # "probe" | "dense"
    l2: float = 1e-3  # probe: weight of the L2 penalty on the weights (mean loss per step)
    iterations: int = 200  # probe: L-BFGS iterations
    hidden_dim: int = 64  # dense: D of the input projection
    epochs: int = 40  # dense: passes over the training videos
    lr: float = 1e-3  # dense: AdamW learning rate
    weight_decay: float = 1e-4
    seed: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class _Video:
    vid: str
    x: np.ndarray  # (T, dim) float32
    dense: np.ndarray  # (T, C) multi-hot


def _videos(fs: FeatureSet | FeatureStreams, ann: Annotations, subset: str) -> list[_Video]:
    out = []
    for vid in ann.subset(subset).video_ids():
        v, va = fs.load(vid), ann.videos[vid]
        ft, lab = instances_in_feature_time(va.segments, va.labels, v.num_steps, fs.stride, fs.fps)
        dense = dense_targets(ft, lab, 0, v.num_steps, v.num_steps, len(ann.classes))
        out.append(_Video(vid, np.asarray(v.features, np.float32), dense))
    return out


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of True in a (T,) bool mask: starts (k,) and exclusive ends (k,), in steps."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return edges[0::2], edges[1::2]


def argmax_runs(probs: np.ndarray, step_s: float) -> Detections:
    """(T, C+1) per-step probabilities, background last -> one segment per run of one argmax
    class, scored by that class's mean probability over the run."""
    lab = probs.argmax(1)
    C = probs.shape[1] - 1
    parts = []
    for c in np.unique(lab[lab != C]):
        s, e = runs(lab == c)
        csum = np.concatenate([[0.0], np.cumsum(probs[:, c], dtype=np.float64)])
        parts.append(Detections(s * step_s, e * step_s, np.full(s.size, c),
                                (csum[e] - csum[s]) / (e - s)))
    return Detections.concat(parts)


def level_runs(probs: np.ndarray, step_s: float, levels: tuple[float, ...] = DENSE_LEVELS
               ) -> Detections:
    """(T, C) per-class probabilities -> for each class and level, the runs above the level,
    scored by the class's mean probability over the run (unmerged; duplicates across levels)."""
    parts = []
    for c in range(probs.shape[1]):
        csum = np.concatenate([[0.0], np.cumsum(probs[:, c], dtype=np.float64)])
        for level in levels:
            s, e = runs(probs[:, c] >= level)
            if s.size:
                parts.append(Detections(s * step_s, e * step_s, np.full(s.size, c),
                                        (csum[e] - csum[s]) / (e - s)))
    return Detections.concat(parts)


class DenseOnly(nn.Module):
    """(B, T, in_dim) -> (B, T, C) logits: standardisation, Linear(in_dim -> D), DenseHead."""

    def __init__(self, in_dim: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        self.proj = nn.Linear(in_dim, dim)
        self.head = DenseHead(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.proj((x - self.mean) / self.std))


def _stats(train: list[_Video]) -> tuple[Tensor, Tensor]:
    return channel_stats([v.x for v in train])


def fit_probe(train: list[_Video], cfg: BaselineConfig, num_classes: int
              ) -> tuple[nn.Module, int]:
    """Multinomial logistic regression over C+1 classes (background last); model and params."""
    mean, std = _stats(train)
    x = (torch.from_numpy(np.concatenate([v.x for v in train])) - mean) / std
    dense = np.concatenate([v.dense for v in train])
    # A step covered by two instances (1% of SMG pairs overlap) counts as the first class.
    y = torch.from_numpy(np.where(dense.any(1), dense.argmax(1), num_classes))
    lin = nn.Linear(x.shape[1], num_classes + 1)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=cfg.iterations,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(x), y) + cfg.l2 * lin.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    model = nn.Sequential(_Standardise(mean, std), lin, nn.Softmax(-1))
    return model.eval(), sum(p.numel() for p in lin.parameters())


class _Standardise(nn.Module):
    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def fit_dense(train: list[_Video], cfg: BaselineConfig, num_classes: int, progress: bool
              ) -> tuple[nn.Module, int]:
    """The dense head alone, trained with BCE on whole training videos; model (-> probabilities)
    and params."""
    model = DenseOnly(train[0].x.shape[1], cfg.hidden_dim, num_classes)
    mean, std = _stats(train)
    model.mean.copy_(mean)
    model.std.copy_(std)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = torch.Generator().manual_seed(cfg.seed)
    model.train()
    for _ in progress_bar(range(cfg.epochs), desc="dense head", enabled=progress, leave=False):
        for i in torch.randperm(len(train), generator=order).tolist():
            v = train[i]
            logits = model(torch.from_numpy(v.x)[None])[0]
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(v.dense))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    params = sum(p.numel() for p in model.parameters())
    return nn.Sequential(model, nn.Sigmoid()).eval(), params


@torch.no_grad()
def predict_baseline(model: nn.Module, kind: str, videos: list[_Video], step_s: float,
                     cfg: EvalConfig) -> dict[str, Detections]:
    """Detections per video (merged by per-class NMS for `dense`, no threshold)."""
    out = {}
    for v in videos:
        probs = model(torch.from_numpy(v.x)[None])[0].double().numpy()
        if kind == "probe":
            d = argmax_runs(probs, step_s)
        else:
            d = level_runs(probs, step_s)
        out[v.vid] = merge_video(d, cfg.nms_iou, 0.0, cfg.max_per_video)
    return out


def run_baseline(
    cfg: BaselineConfig, features: Path | list[Path], annotations: Path, out: Path,
    progress: bool = True
) -> dict[str, Any]:
    """Fit on `train`, tune the threshold on `val`, score `test`; writes out/metrics.json (test
    metrics, val metrics, settings, versions) and out/predictions.json (test, thresholded)."""
    if cfg.kind not in KINDS:
        raise ValueError(f"baseline kind must be one of {', '.join(KINDS)}, got {cfg.kind!r}")
    torch.manual_seed(cfg.seed)
    out = Path(out)
    fs = open_features(features)
    ann = load_annotations(Path(annotations), feature_set=fs)
    step_s = fs.stride / fs.fps
    C = len(ann.classes)
    t0 = time.time()
    train = _videos(fs, ann, "train")
    if not train:
        raise ValueError(f"{annotations}: no `train` videos to fit the {cfg.kind} baseline on")
    if cfg.kind == "probe":
        model, params = fit_probe(train, cfg, C)
    else:
        model, params = fit_dense(train, cfg, C, progress)
    fit_s = time.time() - t0
    threshold = None
    val_metrics: dict[str, Any] = {}
    if ann.subset("val").videos:
        val_preds = predict_baseline(model, cfg.kind, _videos(fs, ann, "val"), step_s, cfg.eval)
        val_metrics = score_detections(val_preds, ann, "val", cfg.eval, None)
        threshold = val_metrics["threshold"]
    test_preds = predict_baseline(model, cfg.kind, _videos(fs, ann, "test"), step_s, cfg.eval)
    metrics = score_detections(test_preds, ann, "test", cfg.eval,
                               0.0 if threshold is None else threshold)
    out.mkdir(parents=True, exist_ok=True)
    save_predictions(out / "predictions.json", apply_threshold(test_preds, metrics["threshold"]),
                     ann.classes)
    metrics.update(
        subset="test",
        baseline=asdict(cfg),
        params=params,
        fit_seconds=round(fit_s, 3),
        val={k: val_metrics[k] for k in ("f1_miga", "f1_strict", "map")} if val_metrics else {},
        feature_set={"path": str(fs.path), "key": fs.key},
        annotations=str(annotations),
        versions=versions(),
    )
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
