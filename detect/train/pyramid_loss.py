"""Losses of the dense pyramid detector (ActionFormer's recipe).

Assignment, per window and point (centre c, level step s, both in feature steps), for the
instances [gs, ge] of the window:

- a point is a candidate for an instance when it lies inside it (gs <= c <= ge), within
  `centre_radius` * s of its centre (centre sampling), and its level's regression range holds
  the farther boundary: lo_l <= max(c - gs, ge - c) < hi_l (`regression_ranges`);
- among its candidates a point takes the shortest instance (ties: every instance of that length,
  so overlapping instances of one length give a multi-hot target);
- points past the window's valid steps (padding) take no loss at all, nor do points lying in an
  instance of the target's optional `ignore` (m, 2) (causal windows: instances reported by
  earlier decisions) unless they are positive for another one.

`loss_cls`: sigmoid focal loss over the valid points and all C classes, summed and divided by
the number of positive points. `loss_reg`: the `iou_loss` (DIoU by default) between each
positive point's segment (c - d_start, c + d_end) and its instance, summed and divided by the
same count. Under torch.distributed the count is averaged over processes
(`detect.train.losses.mean_instance_count`). Total = loss_cls + reg_weight * loss_reg.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from detect.config import PyramidLossConfig
from detect.model.pyramid import pyramid_points
from detect.model.segments import paired_iou_loss
from detect.train.losses import mean_instance_count
from detect.train.matching import check_targets


def regression_ranges(levels: int, base: float) -> list[tuple[float, float]]:
    """[lo, hi) of the farther boundary's distance (feature steps) each level regresses."""
    out = []
    for lv in range(levels):
        lo = 0.0 if lv == 0 else base * 2 ** (lv - 1)
        hi = math.inf if lv == levels - 1 else base * 2**lv
        out.append((lo, hi))
    return out


def assign_points(centres: Tensor, steps: Tensor, lo: Tensor, hi: Tensor, gt: Tensor,
                  labels: Tensor, num_classes: int, radius: float
                  ) -> tuple[Tensor, Tensor]:
    """Targets of one window.

    centres, steps, lo, hi: (N,) per point; gt (n, 2) instances in feature steps; labels (n,).
    Returns cls_target (N, C) in {0, 1} and the assigned instance (N, 2) (meaningful where
    cls_target has a 1).
    """
    N = centres.shape[0]
    if gt.shape[0] == 0:
        return centres.new_zeros(N, num_classes), centres.new_zeros(N, 2)
    c = centres[:, None]
    gs, ge = gt[None, :, 0], gt[None, :, 1]
    far = torch.maximum(c - gs, ge - c)  # (N, n)
    ok = ((c >= gs) & (c <= ge) & ((c - (gs + ge) / 2).abs() <= radius * steps[:, None])
          & (far >= lo[:, None]) & (far < hi[:, None]))
    length = torch.where(ok, (ge - gs).expand_as(ok), torch.full_like(far, math.inf))
    shortest, which = length.min(dim=1)  # ties: the lowest index
    chosen = ok & (length == shortest[:, None])
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).to(centres.dtype)
    cls_target = (chosen.to(centres.dtype) @ onehot).clamp(max=1.0)
    return cls_target, gt[which]


class PyramidCriterion:
    """Assignment + focal and IoU-family losses of `PyramidDetector`'s outputs."""

    def __init__(self, cfg: PyramidLossConfig, num_classes: int, levels: int, range_base: float
                 ) -> None:
        if num_classes < 1:
            raise ValueError(f"PyramidCriterion: num_classes must be >= 1, got {num_classes}")
        self.cfg, self.num_classes, self.levels = cfg, num_classes, levels
        self.ranges = regression_ranges(levels, range_base)

    def _check(self, outputs: dict[str, Tensor]) -> None:
        for key in ("cls_logits", "offsets"):
            if key not in outputs:
                raise KeyError(f"PyramidCriterion: model outputs lack '{key}' (have "
                               f"{sorted(outputs)})")
        cls = outputs["cls_logits"]
        if cls.dim() != 3 or cls.shape[-1] != self.num_classes:
            raise ValueError(f"PyramidCriterion: outputs['cls_logits'] must be (B, N, "
                             f"{self.num_classes}), got {tuple(cls.shape)}")
        if outputs["offsets"].shape != (*cls.shape[:2], 2):
            raise ValueError(f"PyramidCriterion: outputs['offsets'] must be "
                             f"{(*cls.shape[:2], 2)}, got {tuple(outputs['offsets'].shape)}")

    def targets(self, window: int, targets: list[dict[str, Tensor]], valid: list[int],
                device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """cls_target (B, N, C), assigned instance (B, N, 2) in feature steps, the mask of
        points that take a loss (inside each window's valid steps and not ignored) (B, N), and
        the point centres (N,)."""
        centres, steps, level = pyramid_points(window, self.levels, device)
        lo = torch.tensor([r[0] for r in self.ranges], device=device)[level]
        hi = torch.tensor([r[1] for r in self.ranges], device=device)[level]
        cls_t, gt_t, ignored = [], [], []
        for t in targets:
            gt = t["segments"].to(device=device, dtype=torch.float32).reshape(-1, 2) * window
            c, g = assign_points(centres, steps, lo, hi, gt, t["labels"].to(device),
                                 self.num_classes, self.cfg.centre_radius)
            cls_t.append(c)
            gt_t.append(g)
            ign = t.get("ignore")
            if ign is None or not len(ign):
                ignored.append(torch.zeros_like(centres, dtype=torch.bool))
                continue
            ig = ign.to(device=device, dtype=torch.float32).reshape(-1, 2) * window
            within = (centres[:, None] >= ig[None, :, 0]) & (centres[:, None] <= ig[None, :, 1])
            ignored.append(within.any(dim=1) & (c.sum(-1) == 0))
        inside = centres[None, :] < torch.tensor(valid, device=device, dtype=torch.float32)[:, None]
        return torch.stack(cls_t), torch.stack(gt_t), inside & ~torch.stack(ignored), centres

    def __call__(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]],
                 dense: Tensor, valid: list[int] | None = None
                 ) -> tuple[Tensor, dict[str, Tensor]]:
        """outputs of `PyramidDetector`; targets: per window {`labels` (n,), `segments` (n, 2)
        in window time}; dense (B, W, C) gives the window length W (its values are not used: the
        focal loss at level 0 is the per-step loss); valid: steps of video in each window
        (default: all W)."""
        self._check(outputs)
        cls_logits, offsets = outputs["cls_logits"].float(), outputs["offsets"].float()
        B, N, C = cls_logits.shape
        W = dense.shape[1]
        check_targets(targets, B, self.num_classes)
        device = cls_logits.device
        cls_t, gt_t, inside, centres = self.targets(W, targets, valid or [W] * B, device)
        if cls_t.shape[1] != N:
            raise ValueError(f"PyramidCriterion: {N} points in the outputs, {cls_t.shape[1]} for "
                             f"a window of {W} steps and {self.levels} levels")
        pos = (cls_t.sum(-1) > 0) & inside  # (B, N)
        num_pos = mean_instance_count(int(pos.sum()), device)
        cfg = self.cfg
        focal = sigmoid_focal_loss(cls_logits, cls_t, cfg.focal_alpha, cfg.focal_gamma)
        loss_cls = (focal * inside[..., None]).sum() / num_pos
        c = centres[None].expand(B, -1)[pos]
        pred = torch.stack([c - offsets[pos][:, 0], c + offsets[pos][:, 1]], -1)
        loss_reg = paired_iou_loss(pred, gt_t[pos], cfg.iou_loss).sum() / num_pos
        total = loss_cls + cfg.reg_weight * loss_reg
        return total, {"loss_cls": loss_cls.detach(), "loss_reg": loss_reg.detach()}
