"""SwinFace's Swin-T at 112: the numbers equal torchvision's Swin implementation built the same way
(patch 2, window 7), and a SwinFace checkpoint loads key by key; bad checkpoints are errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.swin_transformer import SwinTransformer

from classify.model.swin import SwinFaceBackbone, build_swinface, face_input
from extract.weights import WeightsError


def _from_torchvision(tv: SwinTransformer) -> dict[str, torch.Tensor]:
    """torchvision's names -> the original Swin code's (which SwinFace checkpoints use)."""
    out = {}
    for k, v in tv.state_dict().items():
        p = k.split(".")
        if "relative_position_index" in k or k.startswith("head."):
            continue
        if k.startswith("features.0.0"):
            out["patch_embed.proj." + p[-1]] = v
        elif k.startswith("features.0.2"):
            out["patch_embed.norm." + p[-1]] = v
        elif k.startswith("features.") and int(p[1]) % 2 == 1:
            rest = ".".join(p[3:]).replace("mlp.0", "mlp.fc1").replace("mlp.3", "mlp.fc2")
            out[f"layers.{(int(p[1]) - 1) // 2}.blocks.{p[2]}.{rest}"] = v
        elif k.startswith("features."):
            out[f"layers.{(int(p[1]) - 2) // 2}.downsample.{'.'.join(p[2:])}"] = v
        else:
            out[k] = v
    return out


def test_swin_equals_torchvisions_and_loads_a_swinface_checkpoint(tmp_path, capsys) -> None:
    torch.manual_seed(3)
    tv = SwinTransformer(patch_size=[2, 2], embed_dim=96, depths=[2, 2, 6, 2],
                         num_heads=[3, 6, 12, 24], window_size=[7, 7],
                         stochastic_depth_prob=0.0).eval()
    state = _from_torchvision(tv)
    assert set(state) == set(SwinFaceBackbone().state_dict())
    # A SwinFace training checkpoint: the backbone under state_dict_backbone, other heads beside.
    path = tmp_path / "checkpoint_step_79999_gpu_0.pt"
    torch.save({"state_dict_backbone": {**state, "feature.0.weight": torch.zeros(3)},
                "state_dict_fam": {"x": torch.zeros(1)}}, path)
    model, weights = build_swinface(str(path))
    assert weights.label == str(path) and len(weights.sha256) == 64
    assert "ignoring 1 keys" in capsys.readouterr().err
    crops = torch.randint(0, 256, (2, 112, 112, 3), dtype=torch.uint8)
    x = face_input(crops)
    assert x.shape == (2, 3, 112, 112) and -1 <= x.min() and x.max() <= 1
    with torch.no_grad():
        want = tv.norm(tv.features(x)).mean((1, 2))
        got = model(x)
    assert got.shape == (2, 768)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The shifted windows matter: a model without the shift mask would differ.
    assert model.layers[0].blocks[1].attn_mask is not None


def test_bad_checkpoints_are_errors_and_random_is_said(tmp_path, capsys) -> None:
    with pytest.raises(WeightsError, match="no such SwinFace checkpoint"):
        build_swinface(str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"patch_embed.proj.weight": torch.zeros(96, 3, 4, 4)}, bad)
    with pytest.raises(WeightsError, match=r"bad.pt: does not fit .*missing"):
        build_swinface(str(bad))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a readable torch checkpoint"):
        build_swinface(str(tmp_path / "junk.pt"))
    model, weights = build_swinface("random", seed=1)
    assert weights.label == "random" and "RANDOM weights" in capsys.readouterr().err
