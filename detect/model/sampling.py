"""Deformable 1-D sampling: read features at fractional window positions by linear interpolation.

Window time: u in [0, 1] spans the whole window of W feature steps, and feature j covers
[j/W, (j+1)/W), so it sits at its centre (j + 0.5)/W (the cache's timestamp convention). A position
u reads the continuous feature index x = u*W - 0.5, interpolated linearly between the two nearest
features.

Out-of-range positions are clamped: x is clamped to [0, W-1], so anything before the first
feature centre reads feature 0 and anything after the last reads feature W-1 (border replication,
what PointTAD's clamp to [0, 1] does). Clamped positions get no gradient through the sampling;
points still move through the offset heads. We clamp rather than zero because a point just past the
window edge still describes the edge, and zeros would look like a feature vector of its own.

Two equivalent ways to read the taps, neither of which makes a per-query copy of the window:
- "gather": only the two neighbours of each sub-point are gathered; a custom autograd function
  keeps nothing but the indices and coefficients for backward. Cost O(N * 2K * D).
- "matmul": the taps' coefficients are scattered into a sparse-in-content (B, N, W) interpolation
  matrix, then one bmm with the (B, W, D) features. Cost O(N * W * D), but bmm runs at full
  speed while row gathers and index_add are memory-bound: on 2 CPU cores at B=8, N=1440
  (Nq=48 x Ns=30), K=4, W=128, D=512, forward+backward took ~80 ms vs ~490 ms gathering.
"auto" (default) uses matmul while W <= 64 * 2K (the measured crossover is about 110 * 2K) and
gathers for longer windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def interpolation_taps(positions: Tensor, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Neighbour indices and weight of the right neighbour for window positions.

    positions: (...) window time; returns (i0, i1, frac), each (...): x = clamp(u*W - 0.5, 0, W-1),
    value = (1 - frac) * f[i0] + frac * f[i1]. frac carries the gradient w.r.t. positions.
    """
    if width < 1:
        raise ValueError(f"cannot sample a window of {width} feature steps")
    x = (positions * width - 0.5).clamp(0.0, width - 1)
    # A NaN position (a diverged model) must give NaN features, not an out-of-range index.
    i0 = torch.nan_to_num(x.detach(), nan=0.0).floor().clamp(max=max(width - 2, 0)).long()
    i1 = (i0 + 1).clamp(max=width - 1)
    frac = x - i0.to(x.dtype)
    return i0, i1, frac


class _GatherCombine(torch.autograd.Function):
    """out[b, n] = sum_j coef[b, n, j] * features[b, index[b, n, j]] without storing the gathers."""

    @staticmethod
    def forward(ctx, features: Tensor, index: Tensor, coef: Tensor) -> Tensor:
        B, W, D = features.shape
        N, J = index.shape[1], index.shape[2]
        flat = features.reshape(B * W, D)
        offset = (torch.arange(B, device=index.device) * W).view(B, 1, 1)
        flat_index = (index + offset).reshape(B * N, J)
        coef = coef.to(features.dtype).reshape(B * N, J)
        out = features.new_zeros(B * N, D)
        for j in range(J):
            out.addcmul_(flat.index_select(0, flat_index[:, j]), coef[:, j : j + 1])
        ctx.save_for_backward(features, flat_index, coef)
        ctx.shape = (B, N, W, D)
        return out.view(B, N, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        features, flat_index, coef = ctx.saved_tensors
        B, N, W, D = ctx.shape
        g = grad_out.reshape(B * N, D).to(features.dtype)
        flat = features.reshape(B * W, D)
        grad_features = grad_coef = None
        if ctx.needs_input_grad[0]:
            grad_features = torch.zeros_like(flat)
            for j in range(flat_index.shape[1]):
                grad_features.index_add_(0, flat_index[:, j], g * coef[:, j : j + 1])
            grad_features = grad_features.view(B, W, D)
        if ctx.needs_input_grad[2]:
            cols = [
                (g * flat.index_select(0, flat_index[:, j])).sum(-1)
                for j in range(flat_index.shape[1])
            ]
            grad_coef = torch.stack(cols, dim=-1).view(B, N, -1)
        return grad_features, None, grad_coef


SAMPLING_METHODS = ("auto", "gather", "matmul")


def sample_features(
    features: Tensor, positions: Tensor, weights: Tensor | None = None, method: str = "auto"
) -> Tensor:
    """Weighted sum of linearly interpolated features at window positions.

    features: (B, W, D); positions: (B, N, K) window time; weights: (B, N, K) or None (all 1).
    Returns (B, N, D): out[b, n] = sum_k weights[b, n, k] * interp(features[b], positions[b, n, k]).
    Differentiable w.r.t. features, positions (inside the window) and weights. `method`: "auto",
    "gather" or "matmul" (same result; see the module docstring).
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"sampling method must be one of {SAMPLING_METHODS}, got {method!r}")
    if features.ndim != 3:
        raise ValueError(f"features must be (B, W, D), got {tuple(features.shape)}")
    if positions.ndim != 3 or positions.shape[0] != features.shape[0]:
        raise ValueError(
            f"positions must be (B, N, K) with B = {features.shape[0]}, "
            f"got {tuple(positions.shape)}"
        )
    if weights is None:
        weights = torch.ones_like(positions)
    elif weights.shape != positions.shape:
        raise ValueError(
            f"weights {tuple(weights.shape)} must match positions {tuple(positions.shape)}"
        )
    i0, i1, frac = interpolation_taps(positions, features.shape[1])
    index = torch.cat([i0, i1], dim=-1)  # (B, N, 2K)
    coef = torch.cat([weights * (1 - frac), weights * frac], dim=-1)
    W = features.shape[1]
    if method == "gather" or (method == "auto" and W > 64 * index.shape[-1]):
        return _GatherCombine.apply(features, index, coef)
    B, N = index.shape[:2]
    matrix = features.new_zeros(B, N, W).scatter_add(2, index, coef.to(features.dtype))
    return torch.bmm(matrix, features)


class PointSampler(nn.Module):
    """Point-level deformable extraction: `num_subpoints` sub-points around every query point.

    For each point, offsets (in feature steps, so a sub-point's reach in time does not depend on W)
    and softmax weights over its sub-points are predicted from the query vector; the point feature
    is the weighted sum of the interpolated sub-point features. Unlike PointTAD (one offset set per
    point group), each point gets its own offsets. The heads start at zero weight so every query
    starts with the same symmetric sub-point pattern (offsets -(K-1)/2 .. (K-1)/2 around the point,
    covering the point itself; PointTAD's 1..K is one-sided) and uniform weights.
    """

    def __init__(self, dim: int, num_points: int, num_subpoints: int) -> None:
        super().__init__()
        if num_subpoints < 1:
            raise ValueError(f"num_subpoints must be >= 1, got {num_subpoints}")
        self.num_points = num_points
        self.num_subpoints = num_subpoints
        self.offsets = nn.Linear(dim, num_points * num_subpoints)
        self.logits = nn.Linear(dim, num_points * num_subpoints)
        with torch.no_grad():
            self.offsets.weight.zero_()
            half = (num_subpoints - 1) / 2
            pattern = torch.linspace(-half, half, num_subpoints)
            self.offsets.bias.copy_(pattern.repeat(num_points))
            self.logits.weight.zero_()
            self.logits.bias.zero_()

    def forward(self, features: Tensor, points: Tensor, queries: Tensor) -> Tensor:
        """features (B, W, D), points (B, Nq, Ns), queries (B, Nq, D) -> (B, Nq, Ns, D)."""
        B, Nq, Ns = points.shape
        K = self.num_subpoints
        W = features.shape[1]
        offsets = self.offsets(queries).view(B, Nq, Ns, K) / W
        weights = F.softmax(self.logits(queries).view(B, Nq, Ns, K).float(), dim=-1)
        positions = points.unsqueeze(-1) + offsets
        out = sample_features(
            features, positions.reshape(B, Nq * Ns, K), weights.reshape(B, Nq * Ns, K)
        )
        return out.view(B, Nq, Ns, -1)
