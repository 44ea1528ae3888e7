"""Torch helpers on 1-D segments: (start, end) <-> (centre, length) and temporal IoU.

All functions are differentiable and work on any device / float dtype. Segments are the last
axis of size 2; a segment whose end is before its start is treated as empty (length 0), so it
overlaps nothing and its IoU with anything is 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from detect.config import IOU_LOSSES

TIOU_EPS = 1e-8  # in the union, as PointTAD's training tIoU: keeps 0/0 (two empty segments) at 0


def _check_pairs(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] != 2:
        raise ValueError(f"{name}: expected segments of shape (..., 2), got {tuple(x.shape)}")


def se_to_cl(se: Tensor) -> Tensor:
    """(start, end) -> (centre, length); `se` (..., 2) -> (..., 2). No clamping."""
    _check_pairs(se, "se_to_cl")
    s, e = se.unbind(-1)
    return torch.stack(((s + e) * 0.5, e - s), dim=-1)


def cl_to_se(cl: Tensor) -> Tensor:
    """(centre, length) -> (start, end); `cl` (..., 2) -> (..., 2). No clamping."""
    _check_pairs(cl, "cl_to_se")
    c, l = cl.unbind(-1)
    half = l * 0.5
    return torch.stack((c - half, c + half), dim=-1)


def segment_tiou(a: Tensor, b: Tensor, eps: float = TIOU_EPS) -> Tensor:
    """Pairwise temporal IoU of (start, end) segments: `a` (N, 2), `b` (M, 2) -> (N, M).

    IoU = overlap / (len_a + len_b - overlap + eps). Zero-length (or reversed) segments have
    overlap 0 with everything, so their IoU is 0 (not NaN), even against an identical segment.
    """
    _check_pairs(a, "segment_tiou: a")
    _check_pairs(b, "segment_tiou: b")
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(
            f"segment_tiou: expected a (N, 2) and b (M, 2), got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    len_a = (a[:, 1] - a[:, 0]).clamp(min=0)
    len_b = (b[:, 1] - b[:, 0]).clamp(min=0)
    left = torch.maximum(a[:, None, 0], b[None, :, 0])
    right = torch.minimum(a[:, None, 1], b[None, :, 1])
    inter = (right - left).clamp(min=0)
    union = len_a[:, None] + len_b[None, :] - inter
    return inter / (union + eps)


def _paired_inter_union(a: Tensor, b: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """Overlap and union of matched segments `a`, `b` (N, 2) -> ((N,), (N,))."""
    _check_pairs(a, f"{name}: a")
    _check_pairs(b, f"{name}: b")
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name}: expected a and b of the same shape (N, 2), got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    len_a = (a[:, 1] - a[:, 0]).clamp(min=0)
    len_b = (b[:, 1] - b[:, 0]).clamp(min=0)
    inter = (torch.minimum(a[:, 1], b[:, 1]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    return inter, len_a + len_b - inter


def paired_tiou(a: Tensor, b: Tensor, eps: float = TIOU_EPS) -> Tensor:
    """Element-wise temporal IoU of matched segments: `a` (N, 2), `b` (N, 2) -> (N,).

    The diagonal of `segment_tiou(a, b)` without building the (N, N) matrix.
    """
    inter, union = _paired_inter_union(a, b, "paired_tiou")
    return inter / (union + eps)


def paired_iou_loss(a: Tensor, b: Tensor, kind: str = "iou", eps: float = TIOU_EPS) -> Tensor:
    """Per-pair segment regression loss of matched segments `a`, `b` (N, 2) -> (N,).

    "iou": 1 - tIoU (PointTAD; no gradient while a pair does not overlap). "giou": 1 - tIoU +
    (C - U) / C, C the length of the smallest segment enclosing both, U their union. "diou":
    1 - tIoU + (centre distance / C)^2 (as ActionFormer's 1-D DIoU). Both extras pull
    non-overlapping pairs together, which matters for short instances whose first predictions
    rarely overlap them.
    """
    if kind not in IOU_LOSSES:
        raise ValueError(f"iou loss must be one of {', '.join(IOU_LOSSES)}, got {kind!r}")
    inter, union = _paired_inter_union(a, b, "paired_iou_loss")
    loss = 1 - inter / (union + eps)
    if kind == "iou":
        return loss
    enclose = (torch.maximum(a[:, 1], b[:, 1]) - torch.minimum(a[:, 0], b[:, 0])).clamp(min=0)
    if kind == "giou":
        return loss + (enclose - union) / (enclose + eps)
    centre = (a[:, 0] + a[:, 1] - b[:, 0] - b[:, 1]) / 2
    return loss + centre.square() / (enclose.square() + eps)
