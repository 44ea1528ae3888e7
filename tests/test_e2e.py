"""End-to-end mode: stored frames, window-consistent augmentation, I3D + detector trained
together, and re-extraction with a finetuned backbone. Tiny: 32x32 crops, 4 s videos, W = 4."""

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detect.config import AugmentConfig, load_config
from detect.data.annotations import load_annotations
from detect.data.augment import JITTER_IDENTITY, WindowAugment, crop_flip, hue_matrix, photometric
from detect.data.augment import sample_augment as draw
from detect.data.windows import FrameOptions, WindowDataset, collate_windows, window_dataset
from detect.evaluation.evaluate import evaluate_run
from detect.model.e2e import build_e2e_model, e2e_parameter_groups, feature_mismatch, run_model
from detect.runs import BEST, LAST
from detect.synthetic.features import synth_feature_set
from detect.train.loop import train
from detect.train.losses import SetCriterion
from extract.__main__ import app
from extract.cache import CacheError, FeatureSet
from extract.decode import DecodeSettings, decode_all
from extract.i3d import build_backbone, read_checkpoint
from extract.io import load_checkpoint, read_metrics_rows
from extract.weights import WeightsError, state_digest
from tests.videos import write_noise_video

ARGS = ["--weights", "random", "--short-side", "32", "--crop", "32", "--device", "cpu",
        "--chunk-frames", "16", "--no-progress"]
TINY = [
    "mode=e2e", "backbone.weights=random", "data.window=4", "data.train_overlap=0.5",
    "model.hidden_dim=16", "model.num_queries=4", "model.num_points=4", "model.num_layers=1",
    "model.num_heads=2", "model.ffn_dim=32", "model.mix_dim=8", "model.dropout=0.0",
    "model.mamba.layers=1", "model.mamba.backend=torch", "train.batch_size=2", "train.lr=1e-3",
    "train.device=cpu",
]
CPU = torch.device("cpu")
# Seconds; at stride 4 and 10 fps one feature is 0.4 s, so v0's two gestures lie inside the
# training windows at steps [0, 4) and [4, 8).
GESTURES = {"v0": ("train", [(0, 0.4, 1.2), (1, 2.0, 2.8)]), "v1": ("val", [(0, 0.8, 1.6)]),
            "v2": ("test", [(1, 1.2, 2.0)])}


@dataclass
class Data:
    videos: Path
    ann: Path
    fs: FeatureSet
    before: dict[str, np.ndarray]  # features of the run without frames
    outputs: list[str]  # CLI outputs: without frames, with frames, with frames again


def _extract(args: list[str]) -> str:
    result = CliRunner().invoke(app, ["features", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    d = tmp_path_factory.mktemp("e2e")
    (d / "videos").mkdir()
    db = {}
    for i, (vid, (subset, gestures)) in enumerate(GESTURES.items()):
        write_noise_video(d / "videos" / f"{vid}.mp4", 4.0, fps=10, seed=i)
        db[vid] = {"subset": subset, "duration": 4.0, "fps": 10.0, "annotations": [
            {"label": "ab"[c], "label_id": c, "segment": [s, e]} for c, s, e in gestures]}
    ann = d / "annotations.json"
    ann.write_text(json.dumps({"classes": ["a", "b"], "database": db}))
    out = d / "cache"
    outputs = [_extract([str(d / "videos"), "--out", str(out), *ARGS])]
    fs = FeatureSet.find(out)
    before = {v: fs.load(v).features for v in fs.video_ids()}
    for _ in range(2):
        outputs.append(_extract([str(d / "videos"), "--out", str(out), *ARGS, "--save-frames"]))
    return Data(d / "videos", ann, FeatureSet.find(out), before, outputs)


def test_save_frames_keeps_the_key_and_the_numbers(data):
    plain, first, again = data.outputs
    assert plain.strip().splitlines()[-1] == first.strip().splitlines()[-1] == str(data.fs.path)
    # A finished set without frames is extracted again for them, then skipped.
    assert "done 3, skipped 0" in first and "done 0, skipped 3" in again
    assert data.fs.frames == {"short_side": 32}
    for vid, feats in data.before.items():
        np.testing.assert_array_equal(data.fs.load(vid).features, feats)
    # Stored frames are the decoded 10 fps frames at the short side, uncropped.
    frames, _ = decode_all(data.videos / "v0.mp4", DecodeSettings(10.0, 32, 0))
    with h5py.File(data.fs.video_path("v0")) as f:
        ds = f["frames"]
        assert ds.shape == (40, 32, 42, 3) and ds.attrs["short_side"] == 32
        assert ds.chunks[0] == 32 and ds.compression is None
        np.testing.assert_array_equal(ds[()], frames.numpy())
    info = CliRunner().invoke(app, ["info", str(data.fs.path)])
    assert info.exit_code == 0 and "frames: short side 32, stored for 3 of 3 videos" in info.stdout


def _photometric_reference(frames: np.ndarray, jitter) -> np.ndarray:
    """Float64 loop over frames and pixels, with the window's mean luma as contrast pivot."""
    b, c, s, h = jitter
    luma = np.array([0.299, 0.587, 0.114])
    x = frames.astype(np.float64) + b
    pivot = (x @ luma).mean()
    out = np.empty_like(x)
    m = hue_matrix(h)
    for t in range(x.shape[0]):
        for i in range(x.shape[1]):
            for j in range(x.shape[2]):
                p = (x[t, i, j] - pivot) * c + pivot
                g = p @ luma
                p = (p - g) * s + g
                out[t, i, j] = m @ p
    return np.clip(np.round(out), 0, 255)


def test_augmentation_is_the_same_for_every_frame_and_matches_a_loop():
    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (3, 6, 7, 3), dtype=np.uint8))
    jitter = (20.0, 1.3, 0.6, 15.0)
    got = photometric(frames, torch.tensor(jitter, dtype=torch.float64)).numpy()
    ref = _photometric_reference(frames.numpy(), jitter)
    assert np.abs(got.astype(np.int64) - ref).max() <= 1  # float32 vs float64 rounding
    assert (got == ref).mean() > 0.95
    assert photometric(frames, JITTER_IDENTITY) is frames
    # The same frame repeated stays the same frame after augmentation: one draw per window.
    still = frames[:1].repeat(5, 1, 1, 1)
    out = crop_flip(photometric(still, jitter), WindowAugment(1, 2, 4, flip=True))
    assert out.shape == (5, 4, 4, 3) and all(torch.equal(out[0], o) for o in out)
    np.testing.assert_array_equal(out[0].numpy(), photometric(still, jitter)[0, 1:5, 2:6]
                                  .numpy()[:, ::-1])
    # Draws depend on the generator's seed only and stay inside the configured ranges.
    cfg = AugmentConfig(photometric_p=1.0)
    augs = [draw(torch.Generator().manual_seed(k), 32, 42, 32, cfg) for k in range(200)]
    again = [draw(torch.Generator().manual_seed(k), 32, 42, 32, cfg) for k in range(200)]
    assert augs == again
    assert {a.y0 for a in augs} == {0} and {a.x0 for a in augs} == set(range(11))
    assert 60 < sum(a.flip for a in augs) < 140
    jit = np.array([a.jitter for a in augs])
    assert np.all(np.abs(jit[:, 0]) <= 32) and np.all(np.abs(jit[:, 3]) <= 18)
    assert np.all((jit[:, 1:3] >= 0.5) & (jit[:, 1:3] <= 1.5))
    assert 0 < np.mean(jit[:, 0] == 0) < 1  # each part fires about half the time
    off = draw(torch.Generator().manual_seed(0), 32, 42, 32, AugmentConfig(enabled=False))
    assert off == WindowAugment(0, 5, 32)  # the extractor's centre crop


def _cached_windows(data: Data, cfg, subset: str, train: bool) -> list[dict]:
    ann = load_annotations(data.ann, feature_set=data.fs)
    ds = WindowDataset(data.fs, ann, subset, cfg.data, train=train)
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("window", [4, 16])
def test_window_features_equal_the_cached_features(data, window):
    """Augmentation off, backbone untouched: the model's features for every window, edges and a
    padded window (16 > 10 steps) included, are the cached ones."""
    cfg = load_config(None, [*TINY, f"data.window={window}", "backbone.augment.enabled=false"])
    model = build_e2e_model(cfg, 2).eval()  # random seed 0, as the extraction's
    ann = load_annotations(data.ann, feature_set=data.fs)
    for subset in ("train", "test"):
        ds = window_dataset(cfg, data.fs, ann, subset, train=subset == "train", halo=model.halo)
        assert ds.frames is not None and ds.frames.augment is None and model.halo == 18
        cached = _cached_windows(data, cfg, subset, train=subset == "train")
        assert [ds[i]["meta"] for i in range(len(ds))] == [c["meta"] for c in cached]
        batch = collate_windows([ds[i] for i in range(len(ds))])
        with torch.no_grad():
            feats, _ = model.features(batch["frames"], batch["offsets"],
                                      [m[2] for m in batch["meta"]], window)
        want = torch.stack([c["features"] for c in cached])
        assert feats.shape == want.shape == (len(ds), window, 2048)
        scale = float(want.abs().max())
        torch.testing.assert_close(feats, want, rtol=2e-3, atol=2e-3 * scale)
        assert feature_mismatch(model, ds, data.fs, len(ds) - 1) < 2e-3
    other = build_e2e_model(load_config(None, [*TINY, "backbone.seed=1"]), 2)
    assert feature_mismatch(other, ds, data.fs) > 0.1  # other weights: flagged


def test_frames_are_required_with_a_clear_error(tmp_path):
    fs, ann_path = synth_feature_set(tmp_path, videos=3, classes=2, seed=0, dim=8,
                                     min_duration_s=20, max_duration_s=20)
    ann = load_annotations(ann_path, feature_set=fs)
    with pytest.raises(CacheError, match=r"\.h5: no stored frames.*--save-frames"):
        WindowDataset(fs, ann, "train", load_config(None, TINY).data, train=True,
                      frames=FrameOptions(crop=32, halo=18))


def _grads(model) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in model.backbone.named_parameters()}


def test_gradients_frozen_parts_and_the_loss_falls(data):
    cfg = load_config(None, [*TINY, "train.lr=1e-2", "backbone.lr_mult=0.1"])
    torch.manual_seed(0)
    model = build_e2e_model(cfg, 2)
    ann = load_annotations(data.ann, feature_set=data.fs)
    ds = window_dataset(cfg, data.fs, ann, "train", train=True, halo=model.halo)
    batch = collate_windows([ds[0]])
    assert batch["frames"][0].shape[1:] == (32, 32, 3)
    crit = SetCriterion(cfg.loss, 2)
    opt = torch.optim.AdamW(e2e_parameter_groups(model, 1e-4, cfg.train.lr, 0.1))
    state0 = {k: v.clone() for k, v in model.backbone.state_dict().items()}

    def loss_of() -> torch.Tensor:
        out = run_model(model, batch, CPU, cfg.data.window)
        return crit(out, batch["targets"], batch["dense"])[0]

    losses = []
    for step in range(5):
        opt.zero_grad(set_to_none=True)
        rng = torch.get_rng_state()  # the dense head's dropout draws from it
        loss = loss_of()
        loss.backward()
        if step == 0:
            grads = _grads(model)
            # Stem (blocks.0) and res2 (blocks.1) are frozen, and every BatchNorm is.
            for name, g in grads.items():
                frozen = name.startswith(("blocks.0.", "blocks.1.")) or ".norm" in name \
                    or "_norm" in name
                assert (g is None) == frozen, name
                if g is not None:
                    assert torch.isfinite(g).all()
            for stage in ("blocks.3.", "blocks.4.", "blocks.5."):
                assert any(g.abs().sum() > 0 for n, g in grads.items()
                           if n.startswith(stage) and g is not None), stage
            # Activation checkpointing recomputes the same graph: same gradients without it.
            model.backbone.checkpointing = False
            opt.zero_grad(set_to_none=True)
            torch.set_rng_state(rng)
            loss_of().backward()
            for n, g in _grads(model).items():
                if g is not None:
                    torch.testing.assert_close(g, grads[n], rtol=1e-4, atol=1e-7)
            model.backbone.checkpointing = True
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
    after = model.backbone.state_dict()
    for k, v in state0.items():
        if k.startswith(("blocks.0.", "blocks.1.")) or "running_" in k or "norm" in k:
            assert torch.equal(after[k], v), k  # frozen weights and BatchNorm statistics
    assert not torch.equal(after["blocks.5.res_blocks.0.branch2.conv_a.weight"],
                           state0["blocks.5.res_blocks.0.branch2.conv_a.weight"])
    # Without freeze_bn, training-mode BatchNorm updates its statistics (frozen stages still not).
    cfg_bn = load_config(None, [*TINY, "backbone.freeze_bn=false"])
    free = build_e2e_model(cfg_bn, 2)
    bn = "blocks.{}.res_blocks.0.branch2.norm_a.running_mean"
    before = {i: free.backbone.state_dict()[bn.format(i)].clone() for i in (1, 3)}
    with torch.no_grad():
        run_model(free, batch, CPU, cfg.data.window)
    assert torch.equal(free.backbone.state_dict()[bn.format(1)], before[1])
    assert not torch.equal(free.backbone.state_dict()[bn.format(3)], before[3])


def test_resume_eval_and_reextraction_with_the_finetuned_backbone(data, tmp_path):
    cfg = load_config(None, [*TINY, "train.epochs=2", "backbone.lr_mult=1.0"])
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(cfg, data.fs.path, data.ann, full, progress=False)
    train(cfg, data.fs.path, data.ann, cut, progress=False, max_epochs=1)
    assert load_checkpoint(cut / LAST)["epoch"] == 0
    train(cfg, data.fs.path, data.ann, cut, resume=True, progress=False)
    drop = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in read_metrics_rows(full)] == [
        {k: v for k, v in r.items() if k not in drop} for r in read_metrics_rows(cut)]
    a, b = load_checkpoint(full / BEST), load_checkpoint(cut / BEST)
    assert any(k.startswith("backbone.blocks.5.") for k in a["model"])
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    metrics = evaluate_run(full, "test", progress=False)
    assert {"f1_miga", "map"} <= set(metrics)

    # Re-extract the test video with the finetuned backbone: a new key, loadable, and the
    # features of the end-to-end model itself.
    out = _extract([str(data.videos / "v2.mp4"), "--out", str(tmp_path / "re"), *ARGS[2:],
                    "--weights", str(full / BEST)])
    new = FeatureSet.open(Path(out.strip().splitlines()[-1]))
    assert new.key != data.fs.key and new.key.startswith("i3d_r50-full-best-s4-c32-")
    state, mgdet = read_checkpoint(full / BEST)
    assert mgdet and new.settings["weights_sha256"] == state_digest(state)
    model = build_e2e_model(cfg, 2, pretrained=False)
    model.load_state_dict(a["model"])
    model.eval()
    ann = load_annotations(data.ann, feature_set=data.fs)
    ds = window_dataset(cfg, data.fs, ann, "test", train=False, halo=model.halo)
    batch = collate_windows([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        feats, _ = model.features(batch["frames"], batch["offsets"],
                                  [m[2] for m in batch["meta"]], 4)
    re = torch.from_numpy(new.load("v2").features)
    want = torch.stack([re[s:s + 4] for _, s, _ in batch["meta"]])
    scale = float(want.abs().max())
    torch.testing.assert_close(feats, want, rtol=2e-3, atol=2e-3 * scale)
    old = torch.from_numpy(data.before["v2"])
    assert (re - old).abs().max() > 0.05 * scale  # finetuning did change the backbone
    # A feature-mode checkpoint holds no backbone: a clear error, not random weights.
    torch.save({"model": {"input_proj.weight": torch.zeros(2, 2)}, "config": {"mode": "features"}},
               tmp_path / "feat.pt")
    with pytest.raises(WeightsError, match="feat.pt: .*holds no I3D backbone"):
        build_backbone(str(tmp_path / "feat.pt"))
