"""What every training loop of the project shares: which parameters decay, the warm-up cosine
learning rate, and resuming a model and its optimiser from the last finished epoch.

A module names the parameters of its own that must not decay in a `no_weight_decay()` method
(Mamba's A_log and D, the detector's query points, the AGCN's learned adjacency), so the rule
travels with the module instead of a list of names kept somewhere else.
"""

from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from typing import Any

from torch import nn

from extract.io import load_checkpoint


def no_decay_names(model: nn.Module) -> set[str]:
    """Names (as in `model.named_parameters()`) that no weight decay applies to: every
    parameter with ndim <= 1 (biases, norms), nn.Embedding weights (decay would only pull the
    query vectors towards one zero vector), and those a module lists in `no_weight_decay()`."""
    names = {n for n, p in model.named_parameters() if p.ndim <= 1}
    for prefix, m in model.named_modules():
        own = [f"{prefix}.{n}" if prefix else n for n in getattr(m, "no_weight_decay", set)()]
        if isinstance(m, nn.Embedding):
            own.append(f"{prefix}.weight" if prefix else "weight")
        names.update(own)
    return names


def parameter_groups(model: nn.Module, weight_decay: float, **extra: Any) -> list[dict]:
    """Optimiser groups [{"params": decayed, "weight_decay": wd, "names": [...]},
    {"params": the rest, "weight_decay": 0, "names": [...]}] over the trainable parameters, in
    `named_parameters()` order; `extra` (e.g. lr) goes into both."""
    skip = no_decay_names(model)
    groups = [{"params": [], "weight_decay": weight_decay, "names": [], **extra},
              {"params": [], "weight_decay": 0.0, "names": [], **extra}]
    for name, p in model.named_parameters():
        if p.requires_grad:
            g = groups[name in skip]
            g["params"].append(p)
            g["names"].append(name)
    return groups


def warmup_cosine(t: float, peak: float, ramp: float, start: float, span: float) -> float:
    """Learning rate at time t (steps or fractional epochs): a linear ramp peak * (t + 1) / ramp
    before `start`, then a cosine from peak to 0 over `span`."""
    if t < start:
        return peak * (t + 1) / ramp
    return 0.5 * peak * (1 + math.cos(math.pi * (t - start) / max(span, 1)))


def data_digest(*parts: bytes | str) -> str:
    """A short digest of what a model trains on (clip ids, token arrays, labels)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"|")
    return h.hexdigest()[:16]


def resume(last: Path, model: nn.Module, optim: Any, data: str | None = None) -> int:
    """Load model and optimiser from `last` (written as {"model", "optim", "epoch", "data"})
    when it exists; the first epoch still to train (0 without it). A last.pt trained on other
    data than `data` (a `data_digest`) is not resumed: training starts afresh, said on stderr."""
    if not Path(last).is_file():
        return 0
    ck = load_checkpoint(last)
    if data is not None and ck.get("data", data) != data:
        print(f"{last}: trained on other data than now (the clips or their inputs changed); "
              "training it afresh", file=sys.stderr)
        return 0
    model.load_state_dict(ck["model"])
    optim.load_state_dict(ck["optim"])
    return int(ck["epoch"]) + 1
