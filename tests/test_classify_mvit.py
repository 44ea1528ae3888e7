"""MViTv2-S token extractor: torchvision's architecture, checkpoint loading, no silent random."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.video import mvit_v2_s

from classify.model.mvit import _build, build_mvit, mvit_path
from extract.weights import WeightsError


def test_architecture_is_torchvisions_mvit_v2_s() -> None:
    ref, ours = mvit_v2_s().state_dict(), _build(16, 224, 0).state_dict()
    assert set(ref) == set(ours)
    assert all(ref[k].shape == ours[k].shape for k in ref)


def test_tokens_hold_the_class_token_the_head_reads(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="not found"):
        build_mvit("kinetics", 16, 224)
    net = _build(16, 224, 3)
    path = mvit_path()
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    with pytest.raises(WeightsError, match="fit 16 frames at 224"):
        build_mvit("kinetics", 8, 64)
    model, info = build_mvit("kinetics", 16, 224)
    assert info.label == "kinetics"
    x = torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        tokens = model(x)
        assert tokens.shape == (1, 9, 768)
        torch.testing.assert_close(net.eval().head(tokens[:, 0]), net(x), rtol=1e-4, atol=1e-4)
    bad = {k: v for k, v in net.state_dict().items() if not k.startswith("blocks.15.")}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="missing keys"):
        build_mvit(str(tmp_path / "bad.pth"), 16, 224)


def test_random_weights_are_said_out_loud(capsys) -> None:
    model, info = build_mvit("random", 8, 64, seed=1)
    assert info.label == "random" and "RANDOM" in capsys.readouterr().err
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 64, 64)).shape == (2, 5, 768)
