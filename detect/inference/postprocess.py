"""Detector outputs -> per-video detections in seconds: decoding, NMS, thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from detect.config import Config
from detect.inference.detections import Detections, tiou
from detect.model.pyramid import pyramid_points


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
    foreground classes. A segment is ordered, clipped to the window's valid part [0, valid/W]
    (padding holds no video) and mapped to seconds as (start + u*W) * stride / fps. A segment with
    no length left after clipping (wholly in the padding or before the window, or zero-length to
    begin with) is dropped: it cannot match any ground truth and would only add false positives.

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
    kept = np.repeat(hi > lo, k, axis=-1)  # (B, Nq*k), in the order of labels[b].reshape(-1)
    out: dict[str, list[Detections]] = {}
    for b, (vid, _, _) in enumerate(meta):
        out.setdefault(vid, []).append(
            Detections(
                np.repeat(start_s[b], k),
                np.repeat(end_s[b], k),
                labels[b].reshape(-1),
                scores[b].reshape(-1),
            ).take(kept[b])
        )
    return out


def decode_pyramid(
    cls_logits: torch.Tensor | np.ndarray,
    segments: torch.Tensor | np.ndarray,
    meta: Sequence[tuple[str, int, int]],
    stride: int,
    fps: float,
    window: int,
    levels: int,
    topk: int = 200,
    threshold: float = 0.001,
) -> dict[str, list[Detections]]:
    """The pyramid detector's window outputs -> detections in seconds, one `Detections` per
    window, keyed by video.

    cls_logits: (B, N, C) over the points of `detect.model.pyramid.pyramid_points(W, levels)`;
    segments: (B, N, 2) (start, end) in window time. Every (point, class) pair is a candidate
    scored sigmoid(logit); a window keeps the `topk` best with score > `threshold` among points
    whose centre lies in the window's valid steps (ActionFormer's pre-NMS selection). Segments are
    clipped to the valid part and mapped to seconds as in `decode_windows`; a segment with no
    length left is dropped.
    """
    lg, seg = _numpy(cls_logits), _numpy(segments)
    if lg.ndim != 3 or seg.shape != (*lg.shape[:2], 2):
        raise ValueError(
            f"cls_logits must be (B, N, C) and segments (B, N, 2), got {lg.shape} and {seg.shape}"
        )
    B, N, C = lg.shape
    if len(meta) != B:
        raise ValueError(f"{len(meta)} meta entries for a batch of {B} windows")
    centres = pyramid_points(window, levels)[0].numpy()
    if centres.shape[0] != N:
        raise ValueError(f"{N} points in the outputs, {centres.shape[0]} for a window of "
                         f"{window} steps and {levels} levels")
    probs = 1.0 / (1.0 + np.exp(-lg))
    sec = stride / fps
    out: dict[str, list[Detections]] = {}
    for b, (vid, start, valid) in enumerate(meta):
        p = np.where((centres < valid)[:, None], probs[b], 0.0).reshape(-1)
        cand = np.flatnonzero(p > threshold)
        cand = cand[np.argsort(-p[cand], kind="stable")[:topk]]
        point, label = cand // C, cand % C
        lo = np.clip(np.minimum(seg[b, point, 0], seg[b, point, 1]), 0.0, valid / window)
        hi = np.clip(np.maximum(seg[b, point, 0], seg[b, point, 1]), 0.0, valid / window)
        dets = Detections((start + lo * window) * sec, (start + hi * window) * sec, label,
                          p[cand])
        out.setdefault(vid, []).append(dets.take(hi > lo))
    return out


@dataclass(frozen=True)
class DecodeOptions:
    """How window outputs become detections (`decode_windows`'s and `decode_pyramid`'s settings
    past the outputs)."""

    window: int
    stride: int
    fps: float
    focal: bool = False
    top_k: int = 1
    dense_fusion: float = 0.0
    levels: int = 1  # the pyramid detector's levels, topk and threshold
    pre_nms_topk: int = 200
    pre_nms_threshold: float = 0.001

    @classmethod
    def of(cls, cfg: Config, stride: int, fps: float, window: int | None = None
           ) -> DecodeOptions:
        """A run's settings: loss.focal, eval.top_k, eval.dense_fusion, data.window and
        [model.pyramid]'s levels and pre-NMS selection."""
        p = cfg.model.pyramid
        return cls(window or cfg.data.window, stride, fps, cfg.loss.focal, cfg.eval.top_k,
                   cfg.eval.dense_fusion, p.levels, p.pre_nms_topk, p.pre_nms_threshold)


def decode_outputs(out: dict[str, torch.Tensor], meta: Sequence[tuple[str, int, int]],
                   opts: DecodeOptions) -> dict[str, list[Detections]]:
    """The model's outputs for a batch of windows -> `decode_pyramid` for the pyramid detector
    (its outputs carry `cls_logits`), else `decode_windows` on the last decoder layer."""
    if "cls_logits" in out:
        return decode_pyramid(out["cls_logits"].float().cpu(), out["segments"].float().cpu(),
                              meta, opts.stride, opts.fps, opts.window, opts.levels,
                              opts.pre_nms_topk, opts.pre_nms_threshold)
    return decode_windows(
        out["logits"][-1].float().cpu(),
        out["segments"][-1].float().cpu(),
        meta,
        stride=opts.stride,
        fps=opts.fps,
        window=opts.window,
        focal=opts.focal,
        top_k=opts.top_k,
        dense_logits=out["dense_logits"].float().cpu() if opts.dense_fusion else None,
        dense_fusion=opts.dense_fusion,
    )


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


