"""An exponential moving average of a model's weights, evaluated and checkpointed instead of the
raw weights when `train.ema` > 0 (as ActionFormer does; small training sets peak early and
the raw weights of one epoch are a noisy pick).

After optimiser step t the average moves towards the weights with decay min(ema, (1+t)/(10+t)),
the usual warm-up, so the first steps' random weights fade quickly. Buffers (the input
standardisation statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightEMA:
    """`model` (B any) -> `self.module`, a copy in eval mode whose parameters average it."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.steps = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used for the update after optimiser step `step` (1-based)."""
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One update after an optimiser step of `model`."""
        self.steps += 1
        d = self.decay_at(self.steps)
        for avg, p in zip(self.module.parameters(), model.parameters(), strict=True):
            avg.lerp_(p.detach().to(avg.dtype), 1.0 - d)
        for avg, b in zip(self.module.buffers(), model.buffers(), strict=True):
            avg.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "steps": self.steps, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])
