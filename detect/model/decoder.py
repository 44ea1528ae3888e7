"""Decoder layer of the query-point detector: deformable point sampling, query mixer (Mamba-MHSA or
MHSA), instance-level dynamic mixing, FFN and per-layer heads.

Shapes: B batch, W feature steps, D width, Nq queries, Ns points per query, C classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from detect.config import ModelConfig
from detect.model.mamba import Mamba
from detect.model.sampling import PointSampler

QUERY_MIXERS = ("mamba_mhsa", "mhsa")
MAMBA_ORDERS = ("index", "centre")


def num_boundary_points(num_points: int) -> int:
    """Points that set a query's extent: the first Ns - ceil(Ns/3) (PointTAD's `[:-Ns//3]`)."""
    return num_points - math.ceil(num_points / 3)


def points_to_segments(points: Tensor) -> Tensor:
    """(..., Ns) points -> (..., 2) start/end = min/max of the boundary points, unclamped."""
    nb = num_boundary_points(points.shape[-1])
    boundary = points[..., :nb]
    return torch.stack([boundary.amin(-1), boundary.amax(-1)], dim=-1)


class ResidualMamba(nn.Module):
    """Pre-norm residual block: x + Mamba(LayerNorm(x)). (B, L, D) -> (B, L, D)."""

    def __init__(self, dim: int, mamba: Mamba) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = mamba

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mixer(self.norm(x))


class QueryMixer(nn.Module):
    """Mixes information across the Nq query vectors of a window.

    "mamba_mhsa": M pre-norm residual Mamba blocks, then MHSA + residual + LayerNorm.
    "mhsa": the MHSA part only (PointTAD's baseline). With order "centre" the Mamba scan runs over
    the queries sorted by their current segment centre (sorted with detached centres, ties in index
    order; gather/scatter keep the gradient w.r.t. the query vectors exact), and the result is put
    back in slot order.
    """

    def __init__(self, cfg: ModelConfig, total_mamba_blocks: int) -> None:
        super().__init__()
        if cfg.query_mixer not in QUERY_MIXERS:
            raise ValueError(
                f"model.query_mixer must be one of {QUERY_MIXERS}, got {cfg.query_mixer!r}"
            )
        if cfg.mamba.order not in MAMBA_ORDERS:
            raise ValueError(
                f"model.mamba.order must be one of {MAMBA_ORDERS}, got {cfg.mamba.order!r}"
            )
        D = cfg.hidden_dim
        self.order = cfg.mamba.order
        blocks = []
        if cfg.query_mixer == "mamba_mhsa":
            for _ in range(cfg.mamba.layers):
                mamba = Mamba(
                    D,
                    d_state=cfg.mamba.d_state,
                    d_conv=cfg.mamba.d_conv,
                    expand=cfg.mamba.expand,
                    backend=cfg.mamba.backend,
                    bidirectional=cfg.mamba.bidirectional,
                )
                # GPT-2 style depth scaling as mamba-ssm's MixerModel does: the residual stream
                # sums every Mamba block of the decoder, so shrink each block's output init.
                with torch.no_grad():
                    mamba.out_proj.weight.div_(math.sqrt(max(total_mamba_blocks, 1)))
                blocks.append(ResidualMamba(D, mamba))
        self.mamba = nn.ModuleList(blocks)
        self.attn = nn.MultiheadAttention(D, cfg.num_heads, dropout=cfg.dropout, batch_first=True)
        self.attn_drop = nn.Dropout(cfg.dropout)
        self.attn_norm = nn.LayerNorm(D)

    def forward(self, q: Tensor, centres: Tensor | None = None) -> Tensor:
        """q: (B, Nq, D); centres: (B, Nq) current segment centres (needed for order "centre")."""
        if len(self.mamba):
            if self.order == "centre":
                if centres is None:
                    raise ValueError("mamba order 'centre' needs the current segment centres")
                perm = torch.argsort(centres.detach(), dim=1, stable=True)  # (B, Nq)
                idx = perm.unsqueeze(-1).expand_as(q)
                x = torch.gather(q, 1, idx)
                for block in self.mamba:
                    x = block(x)
                q = torch.empty_like(x).scatter(1, idx, x)
            else:
                for block in self.mamba:
                    q = block(q)
        attn, _ = self.attn(q, q, q, need_weights=False)
        return self.attn_norm(q + self.attn_drop(attn))


class DynamicMixing(nn.Module):
    """Instance-level semantic mixing with per-query generated parameters (PointTAD's
    ParallelMixing, after Sparse R-CNN's dynamic conv).

    From each query vector: a channel mix W1 (D x m), W2 (m x D) and a frame mix Wt (Ns x Ns), both
    applied to that query's point features X (Ns, D) in parallel:
    Xc = ReLU(LN_D(ReLU(LN_m(X W1)) W2)), Xf = ReLU(LN_Ns(X^T Wt))^T; concat -> (Ns, 2D), flatten,
    Linear -> D, LN, ReLU.

    "full" is PointTAD's: a Linear D -> 2Dm generates W1, W2 (33.6 M parameters at D=512, m=64)
    and a Linear Ns*2D -> D mixes the flattened points (15.7 M), per layer. "lean" generates W1, W2
    through a rank-r bottleneck (D -> r -> 2Dm: 4.2 M at r=64) and first reduces each point's 2D
    channels to p (shared across points) before the flattened Linear Ns*p -> D (1.0 M at p=64):
    the same operator family, 8-16x fewer parameters and multiply-adds in the two largest layers.
    """

    def __init__(self, dim: int, num_points: int, mix_dim: int, mixing: str = "full",
                 rank: int = 64, point_dim: int = 64) -> None:
        super().__init__()
        if mixing not in ("full", "lean"):
            raise ValueError(f"mixing must be 'full' or 'lean', got {mixing!r}")
        self.dim, self.num_points, self.mix_dim, self.mixing = dim, num_points, mix_dim, mixing
        if mixing == "full":
            self.channel_params: nn.Module = nn.Linear(dim, 2 * dim * mix_dim)
            self.point_proj: nn.Module = nn.Identity()
            self.out = nn.Linear(num_points * 2 * dim, dim)
        else:
            low = nn.Linear(dim, rank, bias=False)
            # Unit gain through the bottleneck, so the generated weights start at the scale of
            # the full generator's (default init of one Linear D -> 2Dm).
            nn.init.normal_(low.weight, std=dim**-0.5)
            self.channel_params = nn.Sequential(low, nn.Linear(rank, 2 * dim * mix_dim))
            self.point_proj = nn.Linear(2 * dim, point_dim)
            self.out = nn.Linear(num_points * point_dim, dim)
        self.frame_params = nn.Linear(dim, num_points * num_points)
        self.norm_mid = nn.LayerNorm(mix_dim)
        self.norm_channel = nn.LayerNorm(dim)
        self.norm_frame = nn.LayerNorm(num_points)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, point_features: Tensor, q: Tensor) -> Tensor:
        """point_features (B, Nq, Ns, D), q (B, Nq, D) -> (B, Nq, D)."""
        B, Nq, Ns, D = point_features.shape
        m = self.mix_dim
        x = point_features.reshape(B * Nq, Ns, D)
        params = self.channel_params(q).reshape(B * Nq, 2 * D * m)
        # split, not slicing: a slice's backward zero-fills and copies the whole (B*Nq, 2Dm)
        # gradient once per slice (measured: a fifth of the lean step on CPU).
        p1, p2 = torch.split(params, D * m, dim=1)
        w1, w2 = p1.view(B * Nq, D, m), p2.view(B * Nq, m, D)
        xc = F.relu(self.norm_mid(torch.bmm(x, w1)))
        xc = F.relu(self.norm_channel(torch.bmm(xc, w2)))  # (B*Nq, Ns, D)
        wt = self.frame_params(q).reshape(B * Nq, Ns, Ns)
        xf = F.relu(self.norm_frame(torch.bmm(x.transpose(1, 2), wt))).transpose(1, 2)
        mixed = self.point_proj(torch.cat([xc, xf], dim=-1))  # (B*Nq, Ns, 2D or p)
        return F.relu(self.norm_out(self.out(mixed.reshape(B, Nq, -1))))


def _mlp_head(dim: int, out_dim: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


class DecoderLayer(nn.Module):
    """One decoder layer; returns the new query vectors, class logits and per-point offsets.

    Order as PointTAD: sample points with the incoming query vectors, mix queries, dynamic mixing
    with parameters from the mixed queries, FFN, then the heads (own weights per layer).
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, total_mamba_blocks: int) -> None:
        super().__init__()
        D = cfg.hidden_dim
        self.sampler = PointSampler(D, cfg.num_points, cfg.num_subpoints)
        self.mixer = QueryMixer(cfg, total_mamba_blocks)
        self.mixing = DynamicMixing(D, cfg.num_points, cfg.mix_dim, cfg.mixing, cfg.mix_rank,
                                    cfg.mix_point_dim)
        self.checkpoint_mixing = cfg.checkpoint_mixing
        self.mix_drop = nn.Dropout(cfg.dropout)
        self.mix_norm = nn.LayerNorm(D)
        self.ffn = nn.Sequential(
            nn.Linear(D, cfg.ffn_dim),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.ffn_dim, D),
        )
        self.ffn_drop = nn.Dropout(cfg.dropout)
        self.ffn_norm = nn.LayerNorm(D)
        self.class_head = _mlp_head(D, num_classes + 1, depth=1)
        self.offset_head = _mlp_head(D, cfg.num_points, depth=3)
        # Zero offsets at init: every layer starts by keeping the points where they are, so the
        # initial point layout is what the first updates refine.
        with torch.no_grad():
            self.offset_head[-1].weight.zero_()
            self.offset_head[-1].bias.zero_()

    def forward(self, features: Tensor, points: Tensor, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """features (B, W, D), points (B, Nq, Ns), q (B, Nq, D) ->
        (q (B, Nq, D), logits (B, Nq, C+1), offsets (B, Nq, Ns))."""
        point_features = self.sampler(features, points, q)
        centres = points_to_segments(points).mean(-1)
        q = self.mixer(q, centres)
        if self.checkpoint_mixing and self.training and torch.is_grad_enabled():
            mixed = checkpoint(self.mixing, point_features, q, use_reentrant=False)
        else:
            mixed = self.mixing(point_features, q)
        q = self.mix_norm(q + self.mix_drop(mixed))
        q = self.ffn_norm(q + self.ffn_drop(self.ffn(q)))
        return q, self.class_head(q), self.offset_head(q)
