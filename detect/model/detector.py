"""The query-point detector on cached features (PointTAD with a Mamba-MHSA query mixer).

Shapes: B batch, W feature steps (may differ between calls), D = hidden_dim, Nq queries,
Ns points per query, L decoder layers, C classes (index C of the class logits = background).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detect.config import ModelConfig
from detect.model.decoder import DecoderLayer, num_boundary_points, points_to_segments
from detect.model.inputs import FeatureInput

# Initial segment lengths in window units (about 2, 4, 8, 16 feature steps at W = 128): SMG
# micro-gestures last 1 to 11 feature steps (p5 to p95), so the prior covers that range and more.
DEFAULT_INIT_LENGTHS = (1 / 64, 1 / 32, 1 / 16, 1 / 8)
DENSE_DROPOUT = 0.5  # PointTAD's dense head uses nn.Dropout's default


def init_query_points(
    num_queries: int, num_points: int, lengths: Sequence[float] = DEFAULT_INIT_LENGTHS
) -> Tensor:
    """Spread initial query points, (Nq, Ns) in window time.

    Query i is centred at (i + 0.5)/Nq with length lengths[i % len(lengths)] (shrunk
    symmetrically to fit in [0, 1]);
    its boundary points and its semantic points are each spread evenly over that segment.

    Why not PointTAD's all-0.5 init: every query then has a zero-length segment at the same place,
    so the first layer's length-scaled updates are exactly zero, all queries sample identical
    features, and only gradients on the initial points can break the symmetry. A spread init gives
    every query a distinct centre (so the "centre" scan order is well defined from step 0) and
    non-zero lengths at several scales at every location.
    """
    nb = num_boundary_points(num_points)
    ns = num_points - nb
    out = torch.empty(num_queries, num_points)
    for i in range(num_queries):
        c = (i + 0.5) / num_queries
        # Shrink rather than clip at the window edges, so the centre stays exactly c.
        half = min(lengths[i % len(lengths)] / 2, c, 1 - c)
        s, e = c - half, c + half
        out[i, :nb] = torch.linspace(s, e, nb) if nb > 1 else torch.tensor([c])
        if ns:
            # Interior points only: semantic points need not sit on the edges.
            out[i, nb:] = torch.linspace(s, e, ns + 2)[1:-1]
    return out


class DenseHead(nn.Module):
    """Per-step multi-label scores: Conv1d(D -> D/2, k3) -> Dropout -> Conv1d(D/2 -> C, k1).

    (B, W, D) -> (B, W, C) logits.
    """

    def __init__(self, dim: int, num_classes: int, dropout: float = DENSE_DROPOUT) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dim, dim // 2, kernel_size=3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(dim // 2, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.drop(self.conv1(x.transpose(1, 2)))).transpose(1, 2)


class TemporalEncoder(nn.Module):
    """`layers` residual blocks x + GELU(LayerNorm(Conv1d_k(x))), (B, W, D) -> (B, W, D).

    The zero padding of the convolutions sees a window's edges as silence; evaluation windows
    overlap (data.eval_overlap) so every step is also seen away from an edge.
    """

    def __init__(self, dim: int, layers: int, kernel: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(dim, dim, kernel_size=kernel, padding=kernel // 2) for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = x + nn.functional.gelu(norm(conv(x.transpose(1, 2)).transpose(1, 2)))
        return x


class Detector(FeatureInput):
    """Query-point detector.

    forward(features (B, W, in_dim), res4 (B, W, res4_dim) | None) -> dict with
      logits (L, B, Nq, C+1), segments (L, B, Nq, 2) start/end in window time (unclamped),
      points (L, B, Nq, Ns), dense_logits (B, W, C).

    The decoder and the dense head read the projected features, after `model.encoder_layers`
    temporal conv blocks when there are any.

    Point update per layer l: P_l = P + offsets_l * 0.5 * len(P), len = segment length of the
    layer's input points P. P = the learned initial points for the first layer (so they learn);
    for later layers P = P_{l-1}.detach(), as DETR-style iterative refinement does, so each layer's
    loss trains that layer's offsets without pushing gradients back through all earlier offsets.
    """

    def __init__(self, cfg: ModelConfig, in_dim: int, num_classes: int, res4_dim: int = 0,
                 streams: tuple[int, ...] = ()) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if cfg.hidden_dim % cfg.num_heads:
            raise ValueError(
                f"model.hidden_dim {cfg.hidden_dim} is not divisible by model.num_heads "
                f"{cfg.num_heads}"
            )
        if cfg.num_points < 2:
            raise ValueError(f"model.num_points must be >= 2, got {cfg.num_points}")
        self.cfg = cfg
        self.num_classes = num_classes
        D = cfg.hidden_dim
        self.init_inputs(in_dim, res4_dim, D, cfg.input_dropout, streams, cfg.fusion,
                         cfg.stream_dropout, cfg.gate_init)
        self.query_embed = nn.Embedding(cfg.num_queries, D)  # N(0, 1) init
        self.query_points = nn.Parameter(init_query_points(cfg.num_queries, cfg.num_points))
        total_mamba = cfg.num_layers * cfg.mamba.layers if cfg.query_mixer == "mamba_mhsa" else 0
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, num_classes, total_mamba) for _ in range(cfg.num_layers)
        )
        self.encoder = (TemporalEncoder(D, cfg.encoder_layers, cfg.encoder_kernel)
                        if cfg.encoder_layers else None)
        self.dense_head = DenseHead(D, num_classes)

    def no_weight_decay(self) -> set[str]:
        """The initial query points are positions in the window, not weights to shrink."""
        return {"query_points"}

    def forward(self, features: Tensor, res4: Tensor | None = None) -> dict[str, Tensor]:
        x = self.project(features, res4)
        if self.encoder is not None:
            x = self.encoder(x)
        B = x.shape[0]
        q = self.query_embed.weight.unsqueeze(0).expand(B, -1, -1)
        points = self.query_points.unsqueeze(0).expand(B, -1, -1)
        all_logits, all_points, all_segments = [], [], []
        for layer in self.layers:
            q, logits, offsets = layer(x, points, q)
            seg = points_to_segments(points)
            length = (seg[..., 1] - seg[..., 0]).unsqueeze(-1)
            new_points = points + offsets.to(points.dtype) * 0.5 * length
            all_logits.append(logits)
            all_points.append(new_points)
            all_segments.append(points_to_segments(new_points))
            points = new_points.detach()
        return {
            "logits": torch.stack(all_logits),
            "segments": torch.stack(all_segments),
            "points": torch.stack(all_points),
            "dense_logits": self.dense_head(x),
        }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
