"""The dense pyramid detector: ActionFormer's family on cached features, written here.

Every feature step of every pyramid level is a candidate: it scores each class (sigmoid) and
regresses its distances to the start and the end of the instance it lies in. Level l has one
point per 2^l feature steps, so short micro-gestures are found at level 0 and long ones higher up.

Shapes: B batch, W feature steps (may differ between calls), D = hidden_dim, C classes,
N = sum over levels of ceil(W / 2^l) points.

    features (B, W, in_dim) -> input projection -> `embed_layers` x [conv, LayerNorm, ReLU]
      -> `stem_blocks` encoder blocks                                          = level 0
      -> per further level: max pool (k3, s2) -> one encoder block           = level 1 .. L-1
    every level -> shared classification head (C logits) and regression head (2 distances,
    ReLU, times a learned scale per level, in units of the level's step)

Encoder blocks: "conv", a residual conv block (x + GELU(LayerNorm(conv(x)))); "mamba", the
project's Mamba block (detect/model/mamba.py) in both directions as pre-norm residual blocks,
the seed's idea of Mamba over a sequence applied to time steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detect.config import ModelConfig, PyramidConfig
from detect.model.decoder import ResidualMamba
from detect.model.inputs import FeatureInput
from detect.model.mamba import Mamba

PRIOR_PROB = 0.01  # initial foreground probability of every class (RetinaNet / ActionFormer)


def level_lengths(window: int, levels: int) -> list[int]:
    """Points per level for a window of `window` steps: ceil(W / 2^l), as stride-2 pooling with
    padding 1 gives."""
    out = [window]
    for _ in range(levels - 1):
        out.append((out[-1] + 1) // 2)
    return out


def pyramid_points(window: int, levels: int, device: torch.device | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """The points of a window, level by level: centre (N,) in feature steps ((j + 0.5) * 2^l),
    step (N,) 2^l, and level (N,) index."""
    centres, steps, level = [], [], []
    for lv, n in enumerate(level_lengths(window, levels)):
        s = float(2**lv)
        centres.append((torch.arange(n, device=device, dtype=torch.float32) + 0.5) * s)
        steps.append(torch.full((n,), s, device=device))
        level.append(torch.full((n,), lv, device=device, dtype=torch.long))
    return torch.cat(centres), torch.cat(steps), torch.cat(level)


class ConvNormAct(nn.Module):
    """Conv1d (same length) -> LayerNorm over channels -> ReLU, (B, D, T) -> (B, D, T)."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x).transpose(1, 2)).transpose(1, 2))


class ConvBlock(nn.Module):
    """x + Dropout(GELU(LayerNorm(Conv1d_k(x)))), (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(F.gelu(self.norm(self.conv(x.transpose(1, 2)).transpose(1, 2))))


def encoder_block(cfg: ModelConfig, total_blocks: int) -> nn.Module:
    """One block of the temporal encoder, (B, T, D) -> (B, T, D)."""
    p, D = cfg.pyramid, cfg.hidden_dim
    if p.encoder == "conv":
        return ConvBlock(D, p.kernel, p.dropout)
    m = cfg.mamba
    mamba = Mamba(D, d_state=m.d_state, d_conv=m.d_conv, expand=m.expand, backend=m.backend,
                  bidirectional=True)
    with torch.no_grad():  # the residual stream sums every block: shrink each one's init
        mamba.out_proj.weight.div_(math.sqrt(max(total_blocks, 1)))
    return ResidualMamba(D, mamba)


class Head(nn.Module):
    """`layers` ConvNormAct then a conv to `out` channels, shared by every level.

    (B, D, T) -> (B, out, T).
    """

    def __init__(self, dim: int, out: int, layers: int, kernel: int, bias: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(*(ConvNormAct(dim, kernel) for _ in range(layers)))
        self.out = nn.Conv1d(dim, out, kernel, padding=kernel // 2)
        nn.init.constant_(self.out.bias, bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x))


class PyramidDetector(FeatureInput):
    """Dense pyramid detector.

    forward(features (B, W, in_dim), res4 (B, W, res4_dim) | None) -> dict with
      cls_logits (B, N, C), offsets (B, N, 2) distances to start and end in feature steps (>= 0),
      segments (B, N, 2) start/end in window time ((centre -+ offset) / W),
      dense_logits (B, W, C) (level 0's class logits: the per-step scores `eval.dense_fusion`
      and the dense baseline read).
    The points are `pyramid_points(W, levels)`, in that order.
    """

    def __init__(self, cfg: ModelConfig, in_dim: int, num_classes: int, res4_dim: int = 0,
                 streams: tuple[int, ...] = ()) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        p: PyramidConfig = cfg.pyramid
        self.cfg = cfg
        self.num_classes = num_classes
        D = cfg.hidden_dim
        self.init_inputs(in_dim, res4_dim, D, cfg.input_dropout, streams, cfg.fusion,
                         cfg.stream_dropout, cfg.gate_init)
        self.embed = nn.Sequential(*(ConvNormAct(D, p.kernel) for _ in range(p.embed_layers)))
        total = p.stem_blocks + p.levels - 1
        self.stem = nn.ModuleList(encoder_block(cfg, total) for _ in range(p.stem_blocks))
        self.branch = nn.ModuleList(encoder_block(cfg, total) for _ in range(p.levels - 1))
        self.norm = nn.LayerNorm(D)
        prior = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        self.cls_head = Head(D, num_classes, p.head_layers, p.kernel, bias=prior)
        self.reg_head = Head(D, 2, p.head_layers, p.kernel)
        self.scales = nn.Parameter(torch.ones(p.levels))

    def no_weight_decay(self) -> set[str]:
        """The per-level regression scales are not weights to shrink."""
        return {"scales"}

    def levels(self, x: Tensor) -> list[Tensor]:
        """Projected features (B, W, D) -> the pyramid, [(B, ceil(W / 2^l), D)] per level."""
        x = self.embed(x.transpose(1, 2)).transpose(1, 2)
        for block in self.stem:
            x = block(x)
        out = [x]
        for block in self.branch:
            x = F.max_pool1d(x.transpose(1, 2), 3, stride=2, padding=1).transpose(1, 2)
            x = block(x)
            out.append(x)
        return out

    def forward(self, features: Tensor, res4: Tensor | None = None) -> dict[str, Tensor]:
        pyramid = self.levels(self.project(features, res4))
        W = features.shape[1]
        cls, off = [], []
        for lv, x in enumerate(pyramid):
            x = self.norm(x).transpose(1, 2)  # (B, D, T_l)
            cls.append(self.cls_head(x).transpose(1, 2))
            # Distances in units of the level's step, so every level regresses similar numbers.
            off.append(F.relu(self.scales[lv] * self.reg_head(x)).transpose(1, 2) * 2**lv)
        cls_logits, offsets = torch.cat(cls, 1), torch.cat(off, 1)
        centres, _, _ = pyramid_points(W, len(pyramid), features.device)
        c = centres[None, :].to(offsets.dtype)
        segments = torch.stack([c - offsets[..., 0], c + offsets[..., 1]], -1) / W
        return {"cls_logits": cls_logits, "offsets": offsets, "segments": segments,
                "dense_logits": cls[0]}
