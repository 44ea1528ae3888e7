"""detect.train.ema.WeightEMA against a float64 loop, and what training with train.ema saves."""

import pytest
import torch
from torch import nn

from detect.train.ema import WeightEMA


def test_ema_matches_a_float64_loop_and_copies_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = WeightEMA(model, decay=0.9)
    ref = [p.detach().double().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 30):
        opt.zero_grad()
        (model(torch.randn(8, 4)) - torch.randn(8, 3)).square().sum().backward()
        opt.step()
        ema.update(model)
        d = min(0.9, (1 + step) / (10 + step))
        ref = [d * r + (1 - d) * p.detach().double() for r, p in zip(ref, model.parameters(),
                                                                      strict=True)]
    for r, a in zip(ref, ema.module.parameters(), strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-6)
    # Averaged, not just copied: the EMA differs from the last weights.
    assert not torch.allclose(ema.module[0].weight, model[0].weight)
    # Buffers (running statistics) follow the model exactly.
    torch.testing.assert_close(ema.module[1].running_mean, model[1].running_mean, rtol=0, atol=0)
    # A saved state restores the same average and step count.
    other = WeightEMA(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.steps == 29
    for a, b in zip(other.module.parameters(), ema.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_early_updates_warm_up_and_bad_decays_are_refused():
    ema = WeightEMA(nn.Linear(2, 2), decay=0.999)
    assert ema.decay_at(1) == pytest.approx(2 / 11)
    assert ema.decay_at(10**6) == 0.999
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="EMA decay"):
            WeightEMA(nn.Linear(2, 2), decay=bad)
