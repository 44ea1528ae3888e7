"""The envelope generator (detect.synthetic.envelopes): a second synthetic set, built unlike
detect.synthetic.features, to judge detectors on data they were not tuned on."""

import numpy as np
import pytest
from typer.testing import CliRunner

from detect.__main__ import app
from detect.data.annotations import load_annotations
from detect.data.converters.smg import SMG_CLASSES
from detect.synthetic import envelopes
from detect.synthetic.envelopes import synth_envelope_set
from detect.synthetic.features import synth_feature_set
from extract.cache import FeatureSet

STEP_S = 0.4
TINY = dict(dim=16, min_duration_s=30, max_duration_s=45)


def test_deterministic_layout_and_metadata(tmp_path):
    kw = dict(videos=4, seed=3, **TINY)
    fs, ann_path = synth_envelope_set(tmp_path / "a", **kw)
    fs2, ann_path2 = synth_envelope_set(tmp_path / "b", **kw)
    fs3, ann_path3 = synth_envelope_set(tmp_path / "c", **{**kw, "seed": 4})
    assert ann_path == tmp_path / "a" / "annotations.json"
    assert fs.path.parent == tmp_path / "a" / "features" and fs.key == fs2.key != fs3.key
    assert ann_path.read_text() == ann_path2.read_text() != ann_path3.read_text()
    assert fs.settings["generator"] == "envelope"
    assert fs.settings["amplitude"] == envelopes.AMPLITUDE
    ann = load_annotations(ann_path, feature_set=fs)
    assert fs.video_ids() == ann.video_ids() and len(ann.videos) == 4
    assert {s: len(ann.subset(s).videos) for s in ("train", "val", "test")} == {
        "train": 2, "val": 1, "test": 1}
    for vid in ann.video_ids():
        v, v2, v3 = fs.load(vid), fs2.load(vid), fs3.load(vid)
        np.testing.assert_array_equal(v.features, v2.features)
        assert not np.array_equal(v.features, v3.features[: len(v.features)])
        assert v.features.shape == (v.num_steps, 16) and v.meta.model == "synthetic"
        assert (fs.fps, fs.stride, v.meta.fps, v.meta.stride) == (10.0, 4, 10.0, 4)
        assert v.meta.extra["generator"] == "envelope"
        assert 30 <= ann.videos[vid].duration <= 45 and ann.videos[vid].fps == 30.0
        assert v.num_steps == int(ann.videos[vid].duration * 10) // 4
        np.testing.assert_allclose(v.timestamps, (np.arange(v.num_steps) + 0.5) * STEP_S)
    # Per-video generators: a longer set starts with the same videos.
    fs4, _ = synth_envelope_set(tmp_path / "d", **{**kw, "videos": 5})
    np.testing.assert_array_equal(fs4.load("synth0001").features,
                                  fs.load("synth0001").features)


def test_settings_change_the_key(tmp_path):
    base = dict(videos=1, seed=0, dim=4, min_duration_s=8, max_duration_s=8)
    changes = [{}, {"amplitude": 2.0}, {"distractors": 0.0}, {"background_rho": 0.5},
               {"dim": 8}, {"seed": 1}, {"stride": 8}, {"split": (0.8, 0.1, 0.1)}]
    keys = [synth_envelope_set(tmp_path / str(i), **{**base, **c})[0].key
            for i, c in enumerate(changes)]
    assert len(set(keys)) == len(keys)
    # Nor does it share a key with the features generator's set of the same outline.
    other, _ = synth_feature_set(tmp_path / "f", videos=1, profile="smg", dim=4,
                                 min_duration_s=8, max_duration_s=8)
    assert other.key not in keys


def test_annotations_are_valid_smg_like_and_inside_the_video(tmp_path):
    fs, ann_path = synth_envelope_set(tmp_path, videos=6, seed=1, dim=4, min_duration_s=240,
                                      max_duration_s=300)
    ann = load_annotations(ann_path, feature_set=fs)
    assert ann.classes == list(SMG_CLASSES)
    lo, hi = envelopes.INSTANCE_RANGE_S
    durs, overlaps = [], 0
    for vid, v in ann.videos.items():
        seg = v.segments
        assert len(seg) > 10 and np.all(np.diff(seg[:, 0]) >= 0)  # sorted by start
        assert seg.min() >= 0 and seg[:, 1].max() <= fs.load(vid).num_steps * STEP_S + 1e-9
        np.testing.assert_allclose(seg * 30, np.round(seg * 30), atol=1e-6)  # source frames
        assert v.labels.min() >= 0 and v.labels.max() < 17
        durs.extend(seg[:, 1] - seg[:, 0])
        overlaps += int((seg[1:, 0] < seg[:-1, 1]).sum())
    durs = np.array(durs)
    assert lo - 1 / 30 - 1e-9 <= durs.min() and durs.max() <= hi + 1e-9
    assert 0.5 < np.median(durs) < 4.0
    assert overlaps < 0.1 * len(durs)


def test_classes_have_their_own_typical_durations(tmp_path):
    fs, ann_path = synth_envelope_set(tmp_path, videos=6, seed=0, dim=4, min_duration_s=280,
                                      max_duration_s=300)
    ann = load_annotations(ann_path, feature_set=fs)
    durs = np.concatenate([v.segments[:, 1] - v.segments[:, 0] for v in ann.videos.values()])
    labels = np.concatenate([v.labels for v in ann.videos.values()])
    medians = [np.median(durs[labels == c]) for c in range(17) if (labels == c).sum() >= 5]
    assert len(medians) >= 3
    assert max(medians) > 2 * min(medians), medians


def _lag1(x: np.ndarray) -> float:
    """Mean over channels of the lag-1 autocorrelation of x (T, D)."""
    x = x - x.mean(0)
    return float(np.mean((x[1:] * x[:-1]).sum(0) / (x * x).sum(0)))


def _longest_quiet_stretch(fs: FeatureSet, ann_path) -> np.ndarray:
    """Features (T, D) of the longest run of steps no labelled instance touches, over the set."""
    ann = load_annotations(ann_path, feature_set=fs)
    best = np.zeros((0, 0))
    for vid, va in ann.videos.items():
        v = fs.load(vid)
        busy = np.zeros(v.num_steps + 1, bool)
        for s, e in va.segments / STEP_S:
            busy[int(np.floor(s)): int(np.ceil(e))] = True
        edges = np.flatnonzero(np.diff(np.r_[1, busy.astype(int)]))  # alternating quiet/busy
        for a, b in zip(edges[0::2], edges[1::2], strict=False):
            if b - a > len(best):
                best = np.asarray(v.features[a:b], np.float64)
    return best


def test_background_is_temporally_correlated(tmp_path):
    # dim 8 = the background's rank, so every channel carries the AR(1) part; no distractors, so
    # a stretch without labels is background only.
    kw = dict(videos=2, seed=0, dim=8, distractors=0.0, min_duration_s=120, max_duration_s=150)
    corr = {}
    for rho in (0.9, 0.0):
        fs, ann_path = synth_envelope_set(tmp_path / str(rho), background_rho=rho, **kw)
        quiet = _longest_quiet_stretch(fs, ann_path)
        assert len(quiet) >= 30
        corr[rho] = _lag1(quiet)
    assert corr[0.9] > 0.5 and abs(corr[0.0]) < 0.3, corr


def test_envelopes_peak_at_one_and_vanish_nowhere_inside():
    r = np.linspace(0, 1, 201)
    for k in range(len(envelopes.SHAPES)):
        env = envelopes.envelope(k, r)
        assert abs(env.max() - 1) < 0.02 and env.min() >= 0
        assert env[40:161].min() > 0.3  # the double bump dips, but not to zero


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="amplitude"):
        synth_envelope_set(tmp_path, videos=1, amplitude=0.0)
    with pytest.raises(ValueError, match="background_rho"):
        synth_envelope_set(tmp_path, videos=1, background_rho=1.0)
    assert not (tmp_path / "features").exists()


def test_probe_beats_chance(tmp_path):
    from detect.experiments.baselines import BaselineConfig, run_baseline

    # Six videos leave a single test video (15 instances): twice the calibrated amplitude keeps
    # the signal clear of that noise (about 0.2 at 1x, 0.56 at 2x).
    f1, strong = {}, 2 * envelopes.AMPLITUDE
    for a in (0.05, strong):
        fs, ann = synth_envelope_set(tmp_path / str(a), videos=6, seed=0, dim=32, amplitude=a,
                                     min_duration_s=120, max_duration_s=150)
        f1[a] = run_baseline(BaselineConfig(), fs.path, ann, tmp_path / f"p{a}",
                             progress=False)["f1_strict"]
    assert f1[strong] > 0.3 and f1[0.05] < 0.05, f1


def test_cli_envelope_generator(tmp_path):
    runner = CliRunner()
    base = ["synth", "--generator", "envelope", "--videos", "3", "--seed", "2",
            "--min-minutes", "0.2", "--max-minutes", "0.3"]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    fs = FeatureSet.find(tmp_path / "a" / "features")
    assert str(fs.path) in r.output and (tmp_path / "a" / "annotations.json").is_file()
    assert fs.settings["generator"] == "envelope" and fs.settings["seed"] == 2
    assert fs.settings["amplitude"] == envelopes.AMPLITUDE and len(fs.video_ids()) == 3
    assert fs.settings["min_duration_s"] == 12 and fs.settings["max_duration_s"] == 18
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--amplitude", "2"])
    assert r.exit_code == 0, r.output
    assert FeatureSet.find(tmp_path / "b" / "features").settings["amplitude"] == 2.0
    for extra in (["--profile", "smg"], ["--classes", "5"], ["--noise", "0"]):
        r = runner.invoke(app, [*base, "--out", str(tmp_path / "c"), *extra])
        assert r.exit_code == 2 and extra[0] in r.output and "does not apply" in r.output
    r = runner.invoke(app, [*base[:1], "--generator", "bogus", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "bogus" in r.output
    assert not (tmp_path / "c").exists()


def test_cli_default_generator_is_unchanged(tmp_path):
    r = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "a"), "--videos", "2",
                                 "--min-minutes", "0.2", "--max-minutes", "0.2"])
    assert r.exit_code == 0, r.output
    want, _ = synth_feature_set(tmp_path / "b", videos=2, min_duration_s=60 * 0.2,
                                max_duration_s=60 * 0.2)
    got = FeatureSet.find(tmp_path / "a" / "features")
    assert got.key == want.key and "amplitude" not in got.settings
