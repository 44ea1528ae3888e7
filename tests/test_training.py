"""extract.training: weight-decay groups, the warm-up cosine, and resuming only on the same data."""

import math

import pytest
import torch
from torch import nn

from extract.io import save_checkpoint
from extract.training import data_digest, parameter_groups, resume, warmup_cosine


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.B = nn.Parameter(torch.zeros(2, 2))
        self.emb = nn.Embedding(5, 3)
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)

    def no_weight_decay(self) -> set[str]:
        return {"B"}


def test_groups_follow_ndim_embeddings_and_no_weight_decay():
    model = nn.Sequential(Block(), nn.LayerNorm(4))
    decay, rest = parameter_groups(model, 0.1, lr=0.5)
    assert decay["names"] == ["0.lin.weight"] and decay["weight_decay"] == 0.1
    assert rest["names"] == ["0.B", "0.lin.bias", "0.emb.weight", "1.weight", "1.bias"]
    assert rest["weight_decay"] == 0.0 and decay["lr"] == rest["lr"] == 0.5
    assert [id(p) for p in decay["params"]] == [id(model[0].lin.weight)]


@pytest.mark.parametrize("epochs,warmup", [(10, 3), (5, 0), (4, 4)])
def test_warmup_cosine_is_the_agcn_schedule(epochs, warmup):
    """2s-AGCN's schedule as it was written in classify (per fractional epoch)."""
    for t in [i / 4 for i in range(4 * epochs)]:
        if t < warmup:
            want = 0.1 * (t + 1) / (warmup + 1)
        else:
            want = 0.5 * 0.1 * (1 + math.cos(math.pi * (t - warmup) / max(epochs - warmup, 1)))
        got = warmup_cosine(t, 0.1, ramp=warmup + 1, start=warmup, span=epochs - warmup)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_warmup_cosine_is_the_fusion_schedule():
    """The fusion heads' schedule as it was written (per step, one warm-up epoch)."""
    spe, epochs, lr = 7, 5, 5e-4
    for s in range(spe * epochs):
        if s < spe:
            want = lr * (s + 1) / spe
        else:
            want = 0.5 * lr * (1 + math.cos(math.pi * (s - spe) / max(epochs * spe - spe, 1)))
        got = warmup_cosine(s, lr, ramp=spe, start=spe, span=epochs * spe - spe)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_resume_only_on_the_same_data(tmp_path, capsys):
    model = nn.Linear(2, 2)
    optim = torch.optim.SGD(model.parameters(), lr=0.1)
    last = tmp_path / "last.pt"
    assert resume(last, model, optim, "x") == 0  # nothing to resume
    a, b = data_digest("clip/1", "clip/2"), data_digest("clip/1", "clip/2", "clip/3")
    assert a != b and a == data_digest("clip/1", "clip/2")
    save_checkpoint(last, {"model": model.state_dict(), "optim": optim.state_dict(),
                           "epoch": 3, "data": a})
    assert resume(last, model, optim, a) == 4
    assert capsys.readouterr().err == ""
    # A clip came back (its skeleton was fixed): the stream is trained afresh, and it says so.
    assert resume(last, model, optim, b) == 0
    assert "last.pt: trained on other data than now" in capsys.readouterr().err
