"""Cross-Modal Token Fusion over cached clip tokens, and its single-modality ablations.

With two modalities (RGB and skeleton for the clip classes; face and context for emotion, where
this is our InterFusion) each modality's tokens are projected to `dim` (plus a learned position
embedding); every layer lets the tokens of each attend to the other's (both from the previous
layer's states), then runs an MLP on each. The two pooled token sets are concatenated and
classified. A one-modality head uses self-attention layers of the same depth on it alone, so an
ablation changes only what is attended to.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from classify.config import FusionConfig


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
    """Tokens {modality: (B, N_m, C_m)} -> logits (B, classes).

    uses: one modality (self-attention layers on it alone) or two (cross-modal token fusion: each
    modality's tokens attend to the other's, from the previous layer's states)."""

    def __init__(self, cfg: FusionConfig, uses: tuple[str, ...], num_classes: int,
                 shapes: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        if len(uses) not in (1, 2) or len(set(uses)) != len(uses):
            raise ValueError(f"a fusion head uses one or two modalities, got {uses!r}")
        self.uses = tuple(uses)
        self.embed = nn.ModuleDict({m: Embed(shapes[m][1], shapes[m][0], cfg.dim) for m in uses})
        self.layers = nn.ModuleList(
            nn.ModuleDict({m: AttentionBlock(cfg.dim, cfg.heads, cfg.dropout) for m in uses})
            for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim * len(uses))
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.dim * len(uses), num_classes)

    def forward(self, tokens: dict[str, Tensor]) -> Tensor:
        x = {m: self.embed[m](tokens[m]) for m in self.uses}
        for layer in self.layers:
            if len(self.uses) == 2:
                a, b = self.uses
                x = {a: layer[a](x[a], x[b]), b: layer[b](x[b], x[a])}
            else:
                x = {m: layer[m](v, v) for m, v in x.items()}
        pooled = torch.cat([x[m].mean(1) for m in self.uses], -1)
        return self.fc(self.drop(self.norm(pooled)))
