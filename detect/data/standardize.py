"""Per-channel statistics for standardising cached features, the one definition every model of
stage two uses (the detector stores them; the baselines apply them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

MIN_STD = 1e-6  # a channel constant over the training set is centred, not blown up


def channel_stats(arrays: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sample standard deviation (n - 1) of every channel over all rows of `arrays`
    (each (T_i, C)), with float64 sums; (C,), (C,) float32, the std at least MIN_STD."""
    n = sum(a.shape[0] for a in arrays)
    mean = sum(a.sum(0, dtype=np.float64) for a in arrays) / n
    var = sum(((a - mean) ** 2).sum(0, dtype=np.float64) for a in arrays) / max(n - 1, 1)
    return (torch.from_numpy(mean).float(),
            torch.from_numpy(np.sqrt(var)).float().clamp_min(MIN_STD))
