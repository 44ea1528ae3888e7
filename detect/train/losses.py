"""Set losses of the query-point detector (PointTAD's `SetCriterion`, with an optional focal head).

Per decoder layer (every layer with `cfg.aux`, else only the last), after its own Hungarian
matching:

- `loss_ce`: softmax cross-entropy over C+1 classes for all B*Nq queries, unmatched queries
  targeting background (index C); class weights 1, background `cfg.background_weight`; PyTorch's
  weighted mean (divided by the sum of the per-query weights).
  With `cfg.focal`: sigmoid focal loss on the first C logits (background = all-zero target), summed
  over queries and classes and divided by num_gt (Deformable DETR's normalisation); the background
  logit (index C) is then unused and gets no gradient.
- `loss_l1`: L1 between matched (centre, length) pairs, unclamped, summed / num_gt.
- `loss_iou`: 1 - tIoU of matched pairs (prediction clamped to [0, 1]), summed / num_gt; with
  `loss.iou_loss` "giou" or "diou" the generalised or distance IoU loss (`ops.paired_iou_loss`).

Once: `loss_dense`, BCE-with-logits (mean over B, W, C) of the dense head.

num_gt is the batch's ground-truth count; under torch.distributed it is summed over processes and
divided by the world size, because DDP averages gradients: each process then contributes
sum_local / mean_count, and the average over processes is the global per-instance mean. It is
clamped to >= 1 so a batch without any instance gives finite losses (classification towards
background + dense only; the segment losses are exactly 0).

Logged names: `loss_ce`, `loss_l1`, `loss_iou` for the last layer, `loss_ce_0`, `loss_l1_0`, ...
for aux layer 0 .. L-2, `loss_dense`; the values are the unweighted, detached losses. The
returned total is the weighted sum that is back-propagated.
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from detect.config import LossConfig
from detect.model.segments import paired_iou_loss, se_to_cl
from detect.train.matching import HungarianMatcher, Match, check_targets


def mean_instance_count(count: int, device: torch.device) -> Tensor:
    """The normaliser of the per-instance losses: mean count per process, at least 1."""
    n = torch.tensor(float(count), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp(min=1.0)


class SetCriterion:
    """Matching + weighted set losses over decoder layers + dense loss.

    `num_classes` is C, the number of foreground classes (the logits carry C+1).
    """

    def __init__(self, cfg: LossConfig, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"SetCriterion: num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.matcher = HungarianMatcher.from_config(cfg)

    def _check(self, outputs: dict[str, Tensor], dense: Tensor) -> None:
        for key in ("logits", "segments", "dense_logits"):
            if key not in outputs:
                raise KeyError(f"SetCriterion: model outputs lack '{key}' (have {sorted(outputs)})")
        logits, segments, dense_logits = (
            outputs["logits"],
            outputs["segments"],
            outputs["dense_logits"],
        )
        c1 = self.num_classes + 1
        if logits.dim() != 4 or logits.shape[-1] != c1:
            raise ValueError(
                f"SetCriterion: outputs['logits'] must be (L, B, Nq, {c1}) for "
                f"{self.num_classes} classes, got {tuple(logits.shape)}"
            )
        if segments.shape != (*logits.shape[:3], 2):
            raise ValueError(
                f"SetCriterion: outputs['segments'] must be {(*logits.shape[:3], 2)} to match "
                f"the logits, got {tuple(segments.shape)}"
            )
        if (
            dense_logits.dim() != 3
            or dense_logits.shape[0] != logits.shape[1]
            or dense_logits.shape[2] != self.num_classes
        ):
            raise ValueError(
                f"SetCriterion: outputs['dense_logits'] must be (B, W, {self.num_classes}) with "
                f"B = {logits.shape[1]}, got {tuple(dense_logits.shape)}"
            )
        if dense.shape != dense_logits.shape:
            raise ValueError(
                f"SetCriterion: dense targets {tuple(dense.shape)} do not match "
                f"outputs['dense_logits'] {tuple(dense_logits.shape)}"
            )

    @staticmethod
    def _flat_index(matches: list[Match], sizes: list[int], device: torch.device) -> Tensor:
        """Matches of one layer as a (3, K) index: batch row, query, row in the concatenated GT.

        Built on the CPU and moved in one transfer instead of one per sample.
        """
        offsets = [0, *itertools.accumulate(sizes[:-1])]
        rows = [
            torch.stack((torch.full_like(p, b), p, g + off))
            for b, ((p, g), off) in enumerate(zip(matches, offsets, strict=True))
        ]
        return torch.cat(rows, dim=1).to(device)

    def _class_loss(self, logits: Tensor, index: Tensor, labels: Tensor, num_gt: Tensor) -> Tensor:
        """logits (B, Nq, C+1), index (3, K), labels (T,) -> scalar."""
        batch, nq, c1 = logits.shape
        target = torch.full((batch, nq), c1 - 1, dtype=torch.long, device=logits.device)
        target[index[0], index[1]] = labels[index[2]]
        logits = logits.float()
        if self.cfg.focal:
            onehot = F.one_hot(target, c1)[..., :-1].to(logits.dtype)
            loss = sigmoid_focal_loss(
                logits[..., :-1], onehot, self.cfg.focal_alpha, self.cfg.focal_gamma
            )
            return loss.sum() / num_gt
        weight = torch.ones(c1, device=logits.device)
        weight[-1] = self.cfg.background_weight
        return F.cross_entropy(logits.reshape(-1, c1), target.reshape(-1), weight=weight)

    def _segment_losses(
        self, segments: Tensor, index: Tensor, gt_segments: Tensor, num_gt: Tensor
    ) -> tuple[Tensor, Tensor]:
        """segments (B, Nq, 2) start/end, index (3, K), gt_segments (T, 2) -> (L1, IoU loss)."""
        pred = segments[index[0], index[1]].float()
        gt = gt_segments[index[2]]
        l1 = (se_to_cl(pred) - se_to_cl(gt)).abs().sum() / num_gt
        iou = paired_iou_loss(pred.clamp(0, 1), gt, self.cfg.iou_loss).sum() / num_gt
        return l1, iou

    def __call__(
        self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], dense: Tensor,
        valid: list[int] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """outputs: `logits` (L, B, Nq, C+1), `segments` (L, B, Nq, 2), `dense_logits` (B, W, C);
        targets: per sample {`labels` (n,), `segments` (n, 2)}; dense (B, W, C) multi-hot.
        valid (steps of video per window) is accepted for a common signature with
        `PyramidCriterion`; PointTAD's losses train the padding as background, and so do these.

        Returns (total loss, {name: detached unweighted scalar}).
        """
        self._check(outputs, dense)
        logits, segments = outputs["logits"], outputs["segments"]
        n_layers, batch = logits.shape[:2]
        device = logits.device
        labels, segs, sizes = check_targets(targets, batch, self.num_classes)
        labels, segs = labels.to(device), segs.to(device)
        num_gt = mean_instance_count(sum(sizes), device)

        layers = list(range(n_layers)) if self.cfg.aux else [n_layers - 1]
        # Matching never needs the graph; with aux all layers go through without a copy.
        sel = slice(None) if self.cfg.aux else slice(n_layers - 1, None)
        matches = self.matcher.match_checked(
            logits.detach()[sel], segments.detach()[sel], labels, segs, sizes
        )

        cfg = self.cfg
        total = logits.new_zeros((), dtype=torch.float32)
        logged: dict[str, Tensor] = {}
        for layer, layer_matches in zip(layers, matches, strict=True):
            index = self._flat_index(layer_matches, sizes, device)
            ce = self._class_loss(logits[layer], index, labels, num_gt)
            l1, iou = self._segment_losses(segments[layer], index, segs, num_gt)
            total = total + cfg.class_weight * ce + cfg.l1_weight * l1 + cfg.iou_weight * iou
            suffix = "" if layer == n_layers - 1 else f"_{layer}"
            logged[f"loss_ce{suffix}"] = ce.detach()
            logged[f"loss_l1{suffix}"] = l1.detach()
            logged[f"loss_iou{suffix}"] = iou.detach()

        dense_loss = F.binary_cross_entropy_with_logits(
            outputs["dense_logits"].float(), dense.to(device=device, dtype=torch.float32)
        )
        total = total + cfg.dense_weight * dense_loss
        logged["loss_dense"] = dense_loss.detach()
        return total, logged
