"""Cross-Modal Token Fusion over cached clip tokens, and its single-modality ablations.

mode "token": each modality's tokens are projected to `dim` (plus a learned position and
modality embedding); every layer lets skeleton tokens attend to RGB tokens and RGB tokens to
skeleton tokens (both from the previous layer's states), then runs an MLP on each. The two pooled
token sets are concatenated and classified. Modes "rgb" and "skeleton" use self-attention layers
on one modality alone (the same depth), so the ablation changes only what is attended to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class FusionConfig:
    dim: int = 256
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4  # AdamW, cosine after one warmup epoch
    weight_decay: float = 0.05
    label_smoothing: float = 0.1


class AttentionBlock(nn.Module):
    """Pre-norm attention of queries x (B, Nx, D) over keys y (B, Ny, D), then an MLP."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), \
            nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        kv = self.norm_kv(y)
        x = x + self.attn(self.norm_q(x), kv, kv, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class Embed(nn.Module):
    """(B, N, C) tokens of one modality -> (B, N, D)."""

    def __init__(self, c: int, n: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)
        self.proj = nn.Linear(c, dim)
        self.pos = nn.Parameter(torch.zeros(1, n, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(x)) + self.pos


class FusionClassifier(nn.Module):
    """rgb (B, Nr, Cr) and skeleton (B, Ns, Cs) tokens -> logits (B, classes); see the module
    docstring for `mode` ("token", "rgb" or "skeleton")."""

    def __init__(self, cfg: FusionConfig, mode: str, num_classes: int,
                 rgb_shape: tuple[int, int], skeleton_shape: tuple[int, int]) -> None:
        super().__init__()
        if mode not in ("token", "rgb", "skeleton"):
            raise ValueError(f"fusion mode must be token, rgb or skeleton, got {mode!r}")
        self.mode = mode
        uses = {"token": ("rgb", "skeleton"), "rgb": ("rgb",), "skeleton": ("skeleton",)}[mode]
        shapes = {"rgb": rgb_shape, "skeleton": skeleton_shape}
        self.embed = nn.ModuleDict({m: Embed(shapes[m][1], shapes[m][0], cfg.dim) for m in uses})
        self.layers = nn.ModuleList(
            nn.ModuleDict({m: AttentionBlock(cfg.dim, cfg.heads, cfg.dropout) for m in uses})
            for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim * len(uses))
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.dim * len(uses), num_classes)

    def forward(self, rgb: Tensor, skeleton: Tensor) -> Tensor:
        x = {m: self.embed[m](rgb if m == "rgb" else skeleton) for m in self.embed}
        for layer in self.layers:
            if self.mode == "token":
                x = {"rgb": layer["rgb"](x["rgb"], x["skeleton"]),
                     "skeleton": layer["skeleton"](x["skeleton"], x["rgb"])}
            else:
                x = {m: layer[m](v, v) for m, v in x.items()}
        pooled = torch.cat([x[m].mean(1) for m in self.embed], -1)
        return self.fc(self.drop(self.norm(pooled)))
