"""The input end every detector shares: per-channel standardisation, input dropout and the
projection of cached features (res5, optionally res4) to the model width."""

from __future__ import annotations

import torch
from torch import Tensor, nn

CLOSED_GATE_BIAS = -4.0  # sigmoid(-4) = 0.018


class FeatureInput(nn.Module):
    """Holds the standardisation buffers and input projections; detectors subclass it.

    The statistics are buffers so every checkpoint carries its own (set from the training set by
    the trainer, identity by default).
    """

    def init_inputs(self, in_dim: int, res4_dim: int, dim: int, input_dropout: float,
                    streams: tuple[int, ...] = (), fusion: str = "concat",
                    stream_dropout: float = 0.0, gate_init: str = "default") -> None:
        """Create the input layers (call from the subclass's __init__ before its own layers, so
        seeded runs draw their initial weights in one order).

        streams: channels of each feature set in the input, in order (summing to in_dim), when
        it joins several (extract/streams.py); with fusion "gated" the first is projected
        alone and the others are added to it through a gate (gate_init "closed": nearly shut at
        the start)."""
        self.in_dim, self.res4_dim = in_dim, res4_dim
        self.streams = tuple(int(c) for c in streams)
        if self.streams and sum(self.streams) != in_dim:
            raise ValueError(f"stream channels {self.streams} do not sum to in_dim {in_dim}")
        self.gated = fusion == "gated" and len(self.streams) > 1
        self.stream_dropout = stream_dropout if len(self.streams) > 1 else 0.0
        self.input_drop = nn.Dropout(input_dropout)
        first = self.streams[0] if self.gated else in_dim
        self.input_proj = nn.Linear(first, dim)
        if self.gated:
            self.stream_proj = nn.Linear(in_dim - first, dim)
            self.stream_gate = nn.Linear(2 * dim, dim)
            if gate_init == "closed":  # no RNG draw: seeded runs keep their other weights
                nn.init.constant_(self.stream_gate.bias, CLOSED_GATE_BIAS)
        self.res4_proj = nn.Linear(res4_dim, dim) if res4_dim > 0 else None
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.register_buffer("res4_mean", torch.zeros(max(res4_dim, 0)))
        self.register_buffer("res4_std", torch.ones(max(res4_dim, 0)))

    def project(self, features: Tensor, res4: Tensor | None = None) -> Tensor:
        """Input projection(s), summed: (B, W, in_dim) [+ (B, W, res4_dim)] -> (B, W, D)."""
        if features.ndim != 3 or features.shape[-1] != self.in_dim:
            raise ValueError(f"features must be (B, W, {self.in_dim}), got {tuple(features.shape)}")
        if features.shape[1] < 1:
            raise ValueError("features have an empty window (W = 0)")
        x = self.input_drop((features - self.input_mean) / self.input_std)
        keep0, keep1 = self._stream_keep(x)
        if self.gated:
            c0 = self.streams[0]
            rgb, other = self.input_proj(x[..., :c0]), self.stream_proj(x[..., c0:])
            if keep0 is not None:
                rgb, other = rgb * keep0, other * keep1
            x = rgb + torch.sigmoid(self.stream_gate(torch.cat([rgb, other], -1))) * other
        else:
            if keep0 is not None:  # standardised: zero is the stream's mean
                c0 = self.streams[0]
                x = torch.cat([x[..., :c0] * keep0, x[..., c0:] * keep1], -1)
            x = self.input_proj(x)
        if self.res4_proj is None:
            if res4 is not None:
                raise ValueError("res4 features given but the detector was built with res4_dim=0")
            return x
        if res4 is None:
            raise ValueError(f"the detector was built with res4_dim={self.res4_dim}; pass res4")
        if res4.shape != (*features.shape[:2], self.res4_dim):
            raise ValueError(
                f"res4 must be (B, W, {self.res4_dim}) = {(*features.shape[:2], self.res4_dim)}, "
                f"got {tuple(res4.shape)}"
            )
        return x + self.res4_proj(self.input_drop((res4 - self.res4_mean) / self.res4_std))

    def _stream_keep(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """ModDrop masks (B, 1, 1) of the first and of the other streams while training."""
        if not (self.training and self.stream_dropout > 0):
            return None, None
        u = torch.rand(x.shape[0], 1, 1, device=x.device)
        p = self.stream_dropout
        return (u >= p / 2).to(x.dtype), ((u < p / 2) | (u >= p)).to(x.dtype)

    @torch.no_grad()
    def set_input_stats(self, mean: Tensor, std: Tensor, res4_mean: Tensor | None = None,
                        res4_std: Tensor | None = None, eps: float = 1e-6) -> None:
        """Standardise inputs per channel with these statistics ((in_dim,) and (res4_dim,))."""
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp_min(eps))
        if self.res4_proj is not None and res4_mean is not None and res4_std is not None:
            self.res4_mean.copy_(res4_mean)
            self.res4_std.copy_(res4_std.clamp_min(eps))
