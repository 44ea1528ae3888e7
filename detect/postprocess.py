"""Detector outputs -> per-video detections in seconds: decoding, NMS, thresholds, JSON I/O.

Predictions JSON::

    {"results": {video_id: [{"segment": [start_s, end_s], "label": name, "label_id": int,
                             "score": float}, ...]}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detect.annotations import Annotations
from extract.cache import atomic_write_json


class PredictionError(ValueError):
    """A predictions file is malformed."""


@dataclass
class Detections:
    """A set of detections as columns: start, end (n,) float64 seconds; label (n,) int64
    (0-based class); score (n,) float64."""

    start: np.ndarray
    end: np.ndarray
    label: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        self.start = np.asarray(self.start, np.float64).reshape(-1)
        self.end = np.asarray(self.end, np.float64).reshape(-1)
        self.label = np.asarray(self.label, np.int64).reshape(-1)
        self.score = np.asarray(self.score, np.float64).reshape(-1)
        n = self.start.shape[0]
        if not all(a.shape == (n,) for a in (self.end, self.label, self.score)):
            raise ValueError(
                f"detection columns differ in length: start {n}, end {self.end.shape[0]}, "
                f"label {self.label.shape[0]}, score {self.score.shape[0]}"
            )

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.zeros(0))

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.start for p in parts]),
            np.concatenate([p.end for p in parts]),
            np.concatenate([p.label for p in parts]),
            np.concatenate([p.score for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def take(self, index: np.ndarray) -> Detections:
        """The detections at `index` (integer indices or a boolean mask), in that order."""
        return Detections(self.start[index], self.end[index], self.label[index], self.score[index])

    @property
    def segments(self) -> np.ndarray:
        """(n, 2) float64 (start, end) seconds."""
        return np.stack([self.start, self.end], axis=1)


# The brief names the type `Detection`; one object holds a whole set, vectorised.
Detection = Detections


def tiou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Temporal IoU of every interval in `a` (n, 2) with every one in `b` (m, 2): (n, m) float64.

    Interval length is end - start (no +1). Where the union is zero (two zero-length intervals)
    the IoU is 0, so a zero-length interval never overlaps anything.
    """
    a = np.asarray(a, np.float64).reshape(-1, 2)
    b = np.asarray(b, np.float64).reshape(-1, 2)
    inter = np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0])
    inter = np.maximum(inter, 0.0)
    union = (a[:, None, 1] - a[:, None, 0]) + (b[None, :, 1] - b[None, :, 0]) - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, np.float64)


def decode_windows(
    logits: torch.Tensor | np.ndarray,
    segments: torch.Tensor | np.ndarray,
    meta: Sequence[tuple[str, int, int]],
    stride: int,
    fps: float,
    window: int,
    focal: bool = False,
    top_k: int = 1,
    dense_logits: torch.Tensor | np.ndarray | None = None,
    dense_fusion: float = 0.0,
) -> dict[str, list[Detections]]:
    """Window outputs -> detections in seconds, one `Detections` per window, keyed by video.

    logits: (B, Nq, C+1), the last logit being "no gesture"; scores are the softmax over all C+1
    (or, with `focal`, the sigmoid of the first C). segments: (B, Nq, 2) normalised (start, end)
    window time. meta: B tuples (video_id, start, valid). Each query gives its `top_k` best
    foreground classes. A segment is ordered, clamped to [0, valid/W] (padding holds no video)
    and mapped to seconds as (start + u*W) * stride / fps.

    dense_logits (B, W, C), with dense_fusion = a in (0, 1]: a query's score p for class c becomes
    p^(1 - a) * d^a, d the mean dense-head probability sigmoid(dense_logits[..., c]) over the
    steps the segment covers (at least the one holding its start).
    """
    lg = _numpy(logits)
    seg = _numpy(segments)
    if lg.ndim != 3 or seg.shape != (*lg.shape[:2], 2):
        raise ValueError(
            f"logits must be (B, Nq, C+1) and segments (B, Nq, 2), got {lg.shape} and {seg.shape}"
        )
    B, Nq, C1 = lg.shape
    if len(meta) != B:
        raise ValueError(f"{len(meta)} meta entries for a batch of {B} windows")
    if C1 < 2:
        raise ValueError(f"logits need C+1 >= 2 entries per query, got {C1}")
    if focal:
        probs = 1.0 / (1.0 + np.exp(-lg[..., :-1]))
    else:
        z = np.exp(lg - lg.max(axis=-1, keepdims=True))
        probs = (z / z.sum(axis=-1, keepdims=True))[..., :-1]
    k = max(1, min(top_k, C1 - 1))
    # Stable sort on -prob: ties go to the lower class index.
    labels = np.argsort(-probs, axis=-1, kind="stable")[..., :k]  # (B, Nq, k)
    scores = np.take_along_axis(probs, labels, axis=-1)
    lo = np.minimum(seg[..., 0], seg[..., 1])
    hi = np.maximum(seg[..., 0], seg[..., 1])
    valid = np.array([m[2] for m in meta], np.float64)[:, None] / window
    lo = np.clip(lo, 0.0, valid)
    hi = np.clip(hi, 0.0, valid)
    if dense_fusion > 0:
        if dense_logits is None:
            raise ValueError("dense_fusion needs the dense head's logits")
        d = _dense_means(_numpy(dense_logits), lo * window, hi * window, labels)
        scores = scores ** (1.0 - dense_fusion) * d**dense_fusion
    base = np.array([m[1] for m in meta], np.float64)[:, None]
    sec = stride / fps
    start_s = (base + lo * window) * sec  # (B, Nq)
    end_s = (base + hi * window) * sec
    out: dict[str, list[Detections]] = {}
    for b, (vid, _, _) in enumerate(meta):
        out.setdefault(vid, []).append(
            Detections(
                np.repeat(start_s[b], k),
                np.repeat(end_s[b], k),
                labels[b].reshape(-1),
                scores[b].reshape(-1),
            )
        )
    return out


def _dense_means(dense_logits: np.ndarray, lo: np.ndarray, hi: np.ndarray, labels: np.ndarray
                 ) -> np.ndarray:
    """Mean sigmoid(dense_logits) (B, W, C) over steps [floor(lo), max(ceil(hi), floor(lo) + 1))
    of each query ((B, Nq) in window steps) for its classes labels (B, Nq, k) -> (B, Nq, k)."""
    B, W, C = dense_logits.shape
    p = 1.0 / (1.0 + np.exp(-dense_logits.astype(np.float64)))
    csum = np.concatenate([np.zeros((B, 1, C)), np.cumsum(p, axis=1)], axis=1)  # (B, W+1, C)
    a = np.clip(np.floor(lo), 0, W - 1).astype(np.int64)
    e = np.clip(np.maximum(np.ceil(hi), a + 1), 1, W).astype(np.int64)
    k = labels.shape[-1]
    rows = np.arange(B)[:, None, None]
    at = lambda t: csum[rows, np.repeat(t[..., None], k, -1), labels]  # noqa: E731
    return (at(e) - at(a)) / (e - a)[..., None]


def nms_1d(start: np.ndarray, end: np.ndarray, score: np.ndarray, iou: float) -> np.ndarray:
    """Greedy 1-D NMS: indices kept, by descending score (ties: earlier index first).

    A detection is suppressed when its tIoU with a kept, higher-ranked one is > `iou`. Each round
    is one vectorised IoU of the best remaining detection against all the others.
    """
    order = np.argsort(-np.asarray(score), kind="stable")
    if iou >= 1.0:
        return order
    segs = np.stack([start, end], axis=1)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        order = rest[tiou(segs[i : i + 1], segs[rest])[0] <= iou]
    return np.asarray(keep, np.int64)


def merge_video(
    dets: Detections | Sequence[Detections],
    nms_iou: float,
    score_threshold: float,
    max_per_video: int,
) -> Detections:
    """One video's window detections -> final detections, by descending score.

    Keeps score >= `score_threshold`, then per-class NMS at tIoU `nms_iou` (>= 1 disables), then
    the `max_per_video` best.
    """
    d = dets if isinstance(dets, Detections) else Detections.concat(list(dets))
    d = d.take(np.nonzero(d.score >= score_threshold)[0])
    kept = []
    for c in np.unique(d.label):
        idx = np.nonzero(d.label == c)[0]
        kept.append(idx[nms_1d(d.start[idx], d.end[idx], d.score[idx], nms_iou)])
    idx = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    # Sort the survivors by score; stable on the original order for ties.
    idx = np.sort(idx)
    idx = idx[np.argsort(-d.score[idx], kind="stable")][: max(0, max_per_video)]
    return d.take(idx)


def apply_threshold(predictions: dict[str, Detections], threshold: float) -> dict[str, Detections]:
    """Keep the detections with score >= threshold, per video."""
    return {v: d.take(np.flatnonzero(d.score >= threshold)) for v, d in predictions.items()}


def best_threshold(
    predictions: dict[str, Detections],
    annotations: Annotations,
    subset: str,
    match_iou: float = 0.3,
) -> tuple[float, float]:
    """The score threshold t (keep score >= t) maximising the MiGA F1 (`metrics.f1_miga`) on a
    subset, and that F1. Without predictions the threshold is 0.0 and the F1 0.0.

    F1 is constant for t in (c[i-1], c[i]] between consecutive distinct scores. When several
    thresholds tie (common on a small `val`), t is the middle of the widest run of optimal
    intervals: the largest margin on both sides, so it transfers better to unseen videos than
    either end of the plateau.

    The sweep is exact and needs one pass: under the MiGA rule a ground truth is matched at t iff
    some hitting prediction scores >= t, and F1 = 2M / (N + G) (M matched GT, N predictions,
    G ground truths), so all thresholds are evaluated with two sorted searches.
    """
    # Imported here because metrics imports this module's Detections and file reader.
    from detect.metrics import miga_hit_scores

    gt_best, pred_scores, num_gt = miga_hit_scores(predictions, annotations, subset, match_iou)
    if pred_scores.size == 0:
        return 0.0, 0.0
    cand = np.unique(pred_scores)  # ascending
    n_pred = pred_scores.size - np.searchsorted(np.sort(pred_scores), cand, side="left")
    hits = np.sort(gt_best[np.isfinite(gt_best)])
    matched = hits.size - np.searchsorted(hits, cand, side="left")
    f1 = 2.0 * matched / (n_pred + num_gt)
    best = np.flatnonzero(f1 == f1.max())
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    lows = [cand[r[0] - 1] if r[0] > 0 else 0.0 for r in runs]
    widths = [cand[r[-1]] - lo for r, lo in zip(runs, lows, strict=True)]
    k = int(np.argmax(widths))
    return float((lows[k] + cand[runs[k][-1]]) / 2), float(f1[best[0]])


def save_predictions(path: Path | str, preds: dict[str, Detections], classes: list[str]) -> None:
    """Write predictions JSON atomically (videos sorted, detections by descending score)."""
    results: dict[str, list[dict[str, Any]]] = {}
    for vid in sorted(preds):
        d = preds[vid]
        if len(d) and (d.label.min() < 0 or d.label.max() >= len(classes)):
            raise PredictionError(f"{path}: video {vid!r} has labels outside [0, {len(classes)})")
        order = np.argsort(-d.score, kind="stable")
        results[vid] = [
            {
                "segment": [float(d.start[i]), float(d.end[i])],
                "label": classes[int(d.label[i])],
                "label_id": int(d.label[i]),
                "score": float(d.score[i]),
            }
            for i in order
        ]
    atomic_write_json(Path(path), {"results": results})


def _finite(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise PredictionError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def load_predictions(path: Path | str, classes: list[str] | None = None) -> dict[str, Detections]:
    """Read and check a predictions JSON. With `classes`, label_id must be in range and agree
    with the label name."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise PredictionError(f"{path}: predictions file not found") from e
    except json.JSONDecodeError as e:
        raise PredictionError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise PredictionError(f"{path}: expected an object with a 'results' object")
    out: dict[str, Detections] = {}
    for vid, items in data["results"].items():
        where = f"{path}: video {vid!r}"
        if not isinstance(items, list):
            raise PredictionError(f"{where}: expected a list of detections")
        cols = np.zeros((len(items), 4), np.float64)
        labels = np.zeros(len(items), np.int64)
        for i, it in enumerate(items):
            at = f"{where}, detection {i}"
            if not isinstance(it, dict):
                raise PredictionError(f"{at}: expected an object, got {it!r}")
            for key in ("segment", "label_id", "score"):
                if key not in it:
                    raise PredictionError(f"{at}: key {key!r} is missing")
            seg, lid = it["segment"], it["label_id"]
            if not isinstance(seg, (list, tuple)) or len(seg) != 2:
                raise PredictionError(f"{at}: segment must be [start, end], got {seg!r}")
            s, e = _finite(seg[0], f"{at}, segment start"), _finite(seg[1], f"{at}, segment end")
            if e < s:
                raise PredictionError(f"{at}: end {e} is before start {s}")
            if isinstance(lid, bool) or not isinstance(lid, int) or lid < 0:
                raise PredictionError(f"{at}: label_id must be a non-negative integer, got {lid!r}")
            if classes is not None:
                if lid >= len(classes):
                    raise PredictionError(f"{at}: label_id {lid} out of range [0, {len(classes)})")
                if "label" in it and it["label"] != classes[lid]:
                    raise PredictionError(
                        f"{at}: label {it['label']!r} and label_id {lid} ({classes[lid]!r}) "
                        "disagree"
                    )
            cols[i] = (s, e, 0.0, _finite(it["score"], f"{at}, score"))
            labels[i] = lid
        out[str(vid)] = Detections(cols[:, 0], cols[:, 1], labels, cols[:, 3])
    return out
