"""Hungarian matching between the detector's query predictions and the ground-truth instances.

The cost of assigning prediction q to ground truth g is

    cost_class * class_cost(q, g) + cost_l1 * |(c, l)_q - (c, l)_g|_1 + cost_iou * (1 - tIoU(q, g))

- class_cost, softmax (default, PointTAD/DETR): -p[q, label_g] with p the softmax over all C+1
  logits, background included.
- class_cost, focal (Deformable-DETR style): with p = sigmoid of the first C logits (the
  background logit is ignored, a focal model has none to speak of),
  alpha * (1-p)^gamma * -log(p) - (1-alpha) * p^gamma * -log(1-p), taken at label_g: the focal
  loss of calling q a positive of label_g minus that of calling it a negative.
- The L1 term uses the unclamped predictions in (centre, length) form; the tIoU term clamps the
  predicted (start, end) to [0, 1] first (a segment hanging out of the window is judged by its
  visible part), as PointTAD does.

All costs of a batch (and of all decoder layers, see `match_layers`) are computed in one batched
tensor expression and moved to the CPU once; each sample's block is then solved with
`scipy.optimize.linear_sum_assignment`. With more ground truths than queries in a sample only
Nq of them get a query (the cheapest assignment of all queries); the rest are simply unmatched.
Nothing here is differentiated: matching is a discrete choice made on detached values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from detect.config import LossConfig
from detect.model.segments import se_to_cl, segment_tiou

Match = tuple[Tensor, Tensor]  # (pred_idx (k,), gt_idx (k,)) int64, k = min(Nq, n)

_FOCAL_EPS = 1e-8  # inside the logs of the focal cost, as Deformable DETR


def check_targets(
    targets: list[dict[str, Tensor]], batch_size: int, num_classes: int
) -> tuple[Tensor, Tensor, list[int]]:
    """Validate the loader's targets and concatenate them over the batch.

    Returns labels (T,) int64, segments (T, 2) float and the per-sample counts, T = sum of counts.
    Errors name the offending sample (`targets[i]`), key and entry.
    """
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets: expected a list of dicts, got {type(targets).__name__}")
    if len(targets) != batch_size:
        raise ValueError(f"targets: {len(targets)} entries for a batch of {batch_size} samples")
    labels, segments, sizes = [], [], []
    for i, t in enumerate(targets):
        if not isinstance(t, dict) or "labels" not in t or "segments" not in t:
            raise ValueError(f"targets[{i}]: expected a dict with 'labels' and 'segments'")
        lab, seg = torch.as_tensor(t["labels"]), torch.as_tensor(t["segments"])
        if lab.dim() != 1:
            raise ValueError(f"targets[{i}]['labels']: expected shape (n,), got {tuple(lab.shape)}")
        if lab.is_floating_point() or lab.dtype == torch.bool:
            raise ValueError(f"targets[{i}]['labels']: expected integer labels, got {lab.dtype}")
        if seg.numel() == 0 and lab.numel() == 0:
            seg = seg.reshape(0, 2)
        if seg.dim() != 2 or seg.shape[1] != 2 or seg.shape[0] != lab.shape[0]:
            raise ValueError(
                f"targets[{i}]['segments']: expected shape ({lab.shape[0]}, 2) to match "
                f"{lab.shape[0]} labels, got {tuple(seg.shape)}"
            )
        labels.append(lab.long())
        segments.append(seg)
        sizes.append(int(lab.shape[0]))
    all_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    all_segments = torch.cat([s.float() for s in segments]) if segments else torch.zeros(0, 2)
    # Checked on the concatenation so a valid batch costs one device sync, not one per sample.
    bad_label = (all_labels < 0) | (all_labels >= num_classes)
    bad_seg = ~torch.isfinite(all_segments).all(dim=1)
    if bool(bad_label.any()) or bool(bad_seg.any()):
        k = int(torch.nonzero(bad_label | bad_seg)[0, 0])
        i = int(np.searchsorted(np.cumsum(sizes), k, side="right"))
        j = k - (sum(sizes[:i]))
        if bool(bad_label[k]):
            raise ValueError(
                f"targets[{i}]['labels'][{j}]: label {int(all_labels[k])} is outside "
                f"[0, {num_classes})"
            )
        raise ValueError(
            f"targets[{i}]['segments'][{j}]: non-finite segment {all_segments[k].tolist()}"
        )
    return all_labels, all_segments, sizes


@dataclass
class HungarianMatcher:
    """One-to-one assignment of queries to ground truths; see the module docstring for the cost.

    Weights default to PointTAD's (10 / 5 / 5). `focal_alpha`/`focal_gamma` only matter with
    `focal=True`.
    """

    cost_class: float = 10.0
    cost_l1: float = 5.0
    cost_iou: float = 5.0
    focal: bool = False
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    @classmethod
    def from_config(cls, cfg: LossConfig) -> HungarianMatcher:
        return cls(
            cost_class=cfg.cost_class,
            cost_l1=cfg.cost_l1,
            cost_iou=cfg.cost_iou,
            focal=cfg.focal,
            focal_alpha=cfg.focal_alpha,
            focal_gamma=cfg.focal_gamma,
        )

    @torch.no_grad()
    def cost_matrix(
        self, logits: Tensor, segments: Tensor, gt_labels: Tensor, gt_segments: Tensor
    ) -> Tensor:
        """Cost of every prediction against every ground truth of the batch.

        logits (..., Nq, C+1), segments (..., Nq, 2) start/end, gt_labels (T,), gt_segments (T, 2)
        -> (..., Nq, T) float32. The leading axes are flattened and restored, so (B, Nq) and
        (L, B, Nq) both work; the caller picks out each sample's own columns.
        """
        lead = logits.shape[:-1]
        logits = logits.reshape(-1, logits.shape[-1]).float()
        pred = segments.reshape(-1, 2).float()
        gt_labels = gt_labels.to(logits.device)
        gt = gt_segments.to(device=logits.device, dtype=torch.float32)

        if self.focal:
            p = logits[:, :-1].sigmoid()[:, gt_labels]  # (P, T)
            a, g = self.focal_alpha, self.focal_gamma
            pos = a * (1 - p).pow(g) * -(p + _FOCAL_EPS).log()
            neg = (1 - a) * p.pow(g) * -(1 - p + _FOCAL_EPS).log()
            class_cost = pos - neg
        else:
            class_cost = -logits.softmax(-1)[:, gt_labels]
        l1 = torch.cdist(se_to_cl(pred), se_to_cl(gt), p=1)
        iou = segment_tiou(pred.clamp(0, 1), gt)
        cost = self.cost_class * class_cost + self.cost_l1 * l1 + self.cost_iou * (1 - iou)
        return cost.reshape(*lead, gt.shape[0])

    def _solve(self, cost: np.ndarray, sizes: list[int], where: str) -> list[Match]:
        """cost (B, Nq, T) on the CPU -> per-sample matches."""
        out: list[Match] = []
        blocks = np.split(cost, np.cumsum(sizes)[:-1], axis=2)
        for b, (n, block) in enumerate(zip(sizes, blocks, strict=True)):
            block = block[b]
            if n == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                out.append((empty, empty.clone()))
                continue
            if not np.isfinite(block).all():
                q = int(np.nonzero(~np.isfinite(block).all(axis=1))[0][0])
                raise ValueError(
                    f"{where}sample {b}, query {q}: non-finite matching cost "
                    "(NaN or inf in the predicted logits or segments)"
                )
            rows, cols = linear_sum_assignment(block)
            out.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return out

    @torch.no_grad()
    def __call__(
        self, logits: Tensor, segments: Tensor, targets: list[dict[str, Tensor]]
    ) -> list[Match]:
        """Match one decoder layer: logits (B, Nq, C+1), segments (B, Nq, 2) start/end.

        Returns, per sample, (pred_idx, gt_idx) int64 CPU tensors of length min(Nq, n), sorted
        by pred_idx; empty for a sample without ground truth.
        """
        if logits.dim() != 3 or segments.shape != (*logits.shape[:2], 2):
            raise ValueError(
                f"HungarianMatcher: expected logits (B, Nq, C+1) and segments (B, Nq, 2), got "
                f"{tuple(logits.shape)} and {tuple(segments.shape)}"
            )
        return self.match_layers(logits[None], segments[None], targets)[0]

    @torch.no_grad()
    def match_layers(
        self, logits: Tensor, segments: Tensor, targets: list[dict[str, Tensor]]
    ) -> list[list[Match]]:
        """Match every decoder layer independently, with a single device-to-CPU transfer.

        logits (L, B, Nq, C+1), segments (L, B, Nq, 2) -> [layer][sample] (pred_idx, gt_idx).
        """
        if logits.dim() != 4 or segments.shape != (*logits.shape[:3], 2):
            raise ValueError(
                f"HungarianMatcher: expected logits (L, B, Nq, C+1) and segments (L, B, Nq, 2), "
                f"got {tuple(logits.shape)} and {tuple(segments.shape)}"
            )
        gt_labels, gt_segments, sizes = check_targets(
            targets, logits.shape[1], logits.shape[-1] - 1
        )
        return self.match_checked(logits, segments, gt_labels, gt_segments, sizes)

    @torch.no_grad()
    def match_checked(
        self,
        logits: Tensor,
        segments: Tensor,
        gt_labels: Tensor,
        gt_segments: Tensor,
        sizes: list[int],
    ) -> list[list[Match]]:
        """`match_layers` on targets already validated and concatenated by `check_targets`."""
        n_layers = logits.shape[0]
        if sum(sizes) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return [[(empty, empty.clone()) for _ in sizes] for _ in range(n_layers)]
        cost = self.cost_matrix(logits, segments, gt_labels, gt_segments).cpu().numpy()
        return [
            self._solve(cost[layer], sizes, f"layer {layer}, " if n_layers > 1 else "")
            for layer in range(n_layers)
        ]
