import copy
import hashlib

import numpy as np
import pytest
import torch

import extract.i3d as i3d
from extract.i3d import ChunkedExtractor, RunOptions, build_backbone, required_halo, temporal_reach
from extract.weights import WeightsError
from tests.videos import moving_frames


def _nontrivial_bn(backbone: torch.nn.Module, seed: int = 1) -> None:
    """pytorchvideo zero-initialises each block's last BN, which hides temporal context; give
    every BN random affine parameters and running statistics instead."""
    g = torch.Generator().manual_seed(seed)
    for m in backbone.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
            m.running_mean.normal_(0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)


@pytest.fixture(scope="module")
def backbone():
    bb, _ = build_backbone("random", seed=0, res4=True)
    _nontrivial_bn(bb)
    return bb


@pytest.fixture(scope="module")
def frames():
    return moving_frames(78)


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-feature relative difference, max|a_i - b_i| / max|b_i| over rows i."""
    return float((np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)).max())


def reference_features(bb, frames: torch.Tensor, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """One pass in float64 over the whole clip, then a plain loop average per feature."""
    ref = copy.deepcopy(bb).double()
    x = (frames.double().permute(3, 0, 1, 2)[None] / 255 - 0.45) / 0.225
    with torch.no_grad():
        r5, r4 = ref(x)
    r5, r4 = r5[0].t().numpy(), r4[0].t().numpy()
    t = frames.shape[0] // stride
    g = stride // 2
    out5 = np.stack([r5[i * g:(i + 1) * g].mean(0) for i in range(t)])
    out4 = np.stack([r4[i * g:(i + 1) * g].mean(0) for i in range(t)])
    return out5, out4


def test_receptive_field_matches_perturbation(backbone, frames):
    lo, hi, step = temporal_reach(backbone)
    assert step == 2 and hi - lo + 1 >= 30  # i3d_r50: about 36 frames per res5 step
    assert required_halo(backbone) >= max(-lo, hi - 1) and required_halo(backbone) % 2 == 0
    x = (frames.float().permute(3, 0, 1, 2)[None] / 255 - 0.45) / 0.225
    y = x.clone()
    f = 40
    y[:, :, f] += 1.0
    with torch.no_grad():
        a, _ = backbone(x)
        b, _ = backbone(y)
    changed = (a - b).abs().amax(dim=1)[0] > 1e-6
    depends = torch.tensor([2 * o + lo <= f <= 2 * o + hi for o in range(a.shape[2])])
    assert torch.equal(changed, depends)


@pytest.mark.parametrize("stride,chunk", [(2, 6), (4, 12), (8, 16)])
def test_chunked_equals_one_pass_and_float64_reference(backbone, frames, stride, chunk):
    one = ChunkedExtractor(backbone, stride, "cpu", RunOptions(chunk_frames=1024))
    many = ChunkedExtractor(backbone, stride, "cpu", RunOptions(chunk_frames=chunk))
    f1 = one.run([frames[:50], frames[50:]])
    f2 = many.run([frames[i:i + 7] for i in range(0, frames.shape[0], 7)])
    t = frames.shape[0] // stride
    assert f1.res5.shape == f2.res5.shape == (t, 2048)
    assert f1.res4.shape == f2.res4.shape == (t, 1024)
    assert f2.num_frames == frames.shape[0]
    assert max_rel(f2.res5, f1.res5) <= 1e-4
    assert max_rel(f2.res4, f1.res4) <= 1e-4
    ref5, ref4 = reference_features(backbone, frames, stride)
    assert max_rel(f1.res5, ref5) <= 1e-4
    assert max_rel(f1.res4, ref4) <= 1e-4


def test_too_small_halo_is_refused_and_would_be_wrong(backbone, frames):
    need = required_halo(backbone)
    with pytest.raises(ValueError, match=f">= {need}"):
        ChunkedExtractor(backbone, 4, "cpu", RunOptions(chunk_frames=8, halo=need - 2))
    with pytest.raises(ValueError, match="multiple of the stride"):
        ChunkedExtractor(backbone, 4, "cpu", RunOptions(chunk_frames=10))
    with pytest.raises(ValueError, match="stride must be"):
        ChunkedExtractor(backbone, 3, "cpu")
    one = ChunkedExtractor(backbone, 4, "cpu", RunOptions(chunk_frames=1024)).run([frames])
    short = ChunkedExtractor(backbone, 4, "cpu", RunOptions(chunk_frames=8))
    short.halo = 10  # bypass the check: edge features then differ clearly
    assert max_rel(short.run([frames]).res5, one.res5) > 1e-3


def test_frames_past_last_full_group_are_context_only(backbone, frames):
    ex = ChunkedExtractor(backbone, 8, "cpu", RunOptions(chunk_frames=16))
    assert ex.run([frames[:7]]).res5.shape == (0, 2048)  # too short for one feature
    f = ex.run([frames[:21]])
    assert f.res5.shape == (2, 2048) and f.num_frames == 21


def test_random_weights_are_seeded_and_digest_is_stable():
    a, wa = build_backbone("random", seed=0)
    b, wb = build_backbone("random", seed=0)
    _, wc = build_backbone("random", seed=1)
    assert wa.sha256 == wb.sha256 != wc.sha256
    assert wa.label == "random" and wa.seed == 0
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def _full_state(seed: int) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        from pytorchvideo.models.hub import i3d_r50

        return i3d_r50(pretrained=False).state_dict()


def test_checkpoint_files_load(tmp_path, frames):
    state = _full_state(5)
    pyth = tmp_path / "I3D.pyth"
    torch.save({"model_state": state, "epoch": 3}, pyth)
    bb, w = build_backbone(str(pyth))
    assert w.sha256 == hashlib.sha256(pyth.read_bytes()).hexdigest()
    assert w.label == str(pyth.resolve())
    for k, v in bb.state_dict().items():
        assert torch.equal(v, state[k]), k
    # A plain state_dict with a DataParallel prefix and without the head gives the same model.
    plain = tmp_path / "plain.pt"
    torch.save({f"module.{k}": v for k, v in state.items() if not k.startswith("blocks.6.")},
               plain)
    bb2, w2 = build_backbone(str(plain))
    assert w2.sha256 != w.sha256
    x = (frames[:8].float().permute(3, 0, 1, 2)[None] / 255 - 0.45) / 0.225
    with torch.no_grad():
        torch.testing.assert_close(bb(x)[0], bb2(x)[0], rtol=0, atol=0)


def test_wrong_checkpoints_give_clear_errors(tmp_path):
    state = _full_state(0)
    missing = dict(state)
    del missing["blocks.3.res_blocks.0.branch2.conv_a.weight"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match=r"missing.pt: .*1 missing keys \(blocks.3.res_blocks.0"):
        build_backbone(str(tmp_path / "missing.pt"))
    shapes = dict(state)
    shapes["blocks.0.conv.weight"] = torch.zeros(64, 3, 3, 7, 7)
    torch.save({"model_state": shapes}, tmp_path / "shapes.pyth")
    with pytest.raises(WeightsError, match=r"shapes.pyth: .*conv.weight \(64, 3, 3, 7, 7\)"):
        build_backbone(str(tmp_path / "shapes.pyth"))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="notes.txt: not a readable torch checkpoint"):
        build_backbone(str(tmp_path / "notes.txt"))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="list.pt: not a state_dict"):
        build_backbone(str(tmp_path / "list.pt"))
    with pytest.raises(WeightsError, match="nope.pyth: checkpoint file does not exist"):
        build_backbone(str(tmp_path / "nope.pyth"))


def test_kinetics_weights_missing_offline_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(i3d, "KINETICS_URL", (tmp_path / "offline" / "I3D.pyth").as_uri())
    expected = tmp_path / "hub-home" / "hub" / "checkpoints" / "I3D_8x8_R50.pyth"
    with pytest.raises(WeightsError, match=f"copy it to {expected}"):
        build_backbone("kinetics")
    # Once the file is there it is used without any download.
    torch.save({"model_state": _full_state(2)}, expected)
    _, w = build_backbone("kinetics")
    assert w.label == "kinetics"
    assert w.sha256 == hashlib.sha256(expected.read_bytes()).hexdigest()
