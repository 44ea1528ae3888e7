import json

import numpy as np
import pytest

from detect.data.annotations import load_annotations
from detect.data.converters.smg import SMG_CLASSES
from detect.data.windows import dense_targets, instances_in_feature_time
from detect.evaluation.metrics import score
from detect.inference.detections import Detections
from detect.synthetic import smg_profile
from detect.synthetic.features import synth_feature_set

STEP_S = 0.4


def test_deterministic_layout_and_metadata(tmp_path):
    kw = dict(videos=10, classes=3, seed=4, noise=1.0, dim=16, min_duration_s=30,
              max_duration_s=40)
    fs, ann_path = synth_feature_set(tmp_path / "a", **kw)
    fs2, ann_path2 = synth_feature_set(tmp_path / "b", **kw)
    fs3, ann_path3 = synth_feature_set(tmp_path / "c", **{**kw, "seed": 5})
    assert ann_path == tmp_path / "a" / "annotations.json"
    assert fs.path.parent == tmp_path / "a" / "features" and fs.key == fs2.key != fs3.key
    assert ann_path.read_text() == ann_path2.read_text() != ann_path3.read_text()
    ann = load_annotations(ann_path, feature_set=fs)
    assert len(ann.videos) == 10 and fs.video_ids() == ann.video_ids()
    counts = {s: len(ann.subset(s).videos) for s in ("train", "val", "test")}
    assert counts == {"train": 6, "val": 2, "test": 2}
    for vid in ann.video_ids():
        v, v2 = fs.load(vid), fs2.load(vid)
        np.testing.assert_array_equal(v.features, v2.features)
        assert v.features.shape[1] == 16 and v.meta.model == "synthetic"
        assert (fs.fps, fs.stride, v.meta.fps, v.meta.stride) == (10.0, 4, 10.0, 4)
        assert 30 <= ann.videos[vid].duration <= 40 and ann.videos[vid].fps == 30.0
        assert v.num_steps == int(ann.videos[vid].duration * 10) // 4
        np.testing.assert_allclose(v.timestamps, (np.arange(v.num_steps) + 0.5) * STEP_S)
    assert not np.array_equal(fs.load("synth0000").features, fs3.load("synth0000").features)


def test_timelines_look_like_smg(tmp_path):
    fs, ann_path = synth_feature_set(tmp_path, videos=16, classes=6, seed=1, dim=8,
                                     min_duration_s=150, max_duration_s=200)
    ann = load_annotations(ann_path, feature_set=fs)
    durs, gaps, labels, overlaps = [], [], [], 0
    for vid, v in ann.videos.items():
        seg = v.segments
        assert seg[:, 1].max() <= fs.load(vid).num_steps * STEP_S + 1e-9  # inside the features
        np.testing.assert_allclose(seg * 30, np.round(seg * 30), atol=1e-6)  # source frames
        durs.extend(seg[:, 1] - seg[:, 0])
        gaps.extend(seg[1:, 0] - seg[:-1, 1])
        overlaps += int((seg[1:, 0] < seg[:-1, 1]).sum())
        labels.extend(v.labels)
    durs, gaps = np.array(durs), np.array(gaps)
    assert len(durs) > 200
    assert 0.3 - 1e-9 <= durs.min() and durs.max() <= 10.0
    assert 1.0 < np.median(durs) < 2.5 and np.percentile(durs, 95) > 3.0
    assert overlaps >= 1  # co-occurring gestures exist
    assert (gaps[gaps >= 0] < 1.0).mean() > 0.3 and (gaps > 10.0).mean() > 0.2  # bursts
    counts = np.bincount(labels, minlength=6)
    assert counts[0] > 2 * counts[-1] > 0  # long-tailed classes


def _probe_f1(tmp_path, noise):
    """Fit a ridge per-step classifier on train, decode runs of one class on test."""
    classes = 4
    fs, ann_path = synth_feature_set(tmp_path, videos=12, classes=classes, seed=0, noise=noise,
                                     dim=32, min_duration_s=60, max_duration_s=90)
    ann = load_annotations(ann_path, feature_set=fs)

    def xy(vid):
        v, va = fs.load(vid), ann.videos[vid]
        ft, lab = instances_in_feature_time(va.segments, va.labels, v.num_steps, 4, 10.0)
        dense = dense_targets(ft, lab, 0, v.num_steps, v.num_steps, classes)
        x = np.hstack([v.features.astype(np.float64), np.ones((v.num_steps, 1))])
        return x, np.where(dense.any(1), dense.argmax(1), classes)

    x, y = (np.concatenate(a) for a in zip(*map(xy, ann.subset("train").video_ids()),
                                            strict=True))
    w = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ np.eye(classes + 1)[y])
    preds = {}
    for vid in ann.subset("test").video_ids():
        lab = (xy(vid)[0] @ w).argmax(1)
        cut = np.flatnonzero(np.diff(lab)) + 1
        starts, ends = np.r_[0, cut], np.r_[cut, lab.size]
        fg = lab[starts] != classes
        preds[vid] = Detections(starts[fg] * STEP_S, ends[fg] * STEP_S, lab[starts][fg],
                                np.ones(fg.sum()))
    return score(preds, ann, "test")


def test_clean_preset_is_easy_and_noise_makes_it_harder(tmp_path):
    clean = _probe_f1(tmp_path / "clean", 0.0)
    noisy = _probe_f1(tmp_path / "noisy", 3.0)
    assert clean["num_ground_truth"] >= 15
    assert clean["f1_strict"] >= 0.9
    assert noisy["f1_strict"] < clean["f1_strict"] - 0.3
    json.dumps(clean)  # metrics stay JSON-serialisable


def test_quantile_sampler_hits_the_knots_and_is_monotone():
    knots = smg_profile.DURATION_KNOTS
    q = np.array([k[0] for k in knots])
    np.testing.assert_allclose(smg_profile.quantile_sample(q, knots), [k[1] for k in knots])
    u = np.linspace(0, 1, 1001)
    assert np.all(np.diff(smg_profile.quantile_sample(u, knots)) >= 0)
    # Empirical quantiles of many draws land on the knots.
    draws = smg_profile.quantile_sample(np.random.default_rng(0).random(200_000), knots)
    for qq, v in knots[1:-1]:
        assert abs(np.quantile(draws, qq) / v - 1) < 0.03


def test_correlated_uniforms_are_uniform_and_bursty():
    u = smg_profile.correlated_uniforms(np.random.default_rng(1), 50_000, 0.5)
    assert abs(u.mean() - 0.5) < 0.01 and abs(np.quantile(u, 0.9) - 0.9) < 0.01
    ranks = np.argsort(np.argsort(u)) / len(u)
    r = np.corrcoef(ranks[1:], ranks[:-1])[0, 1]
    assert 0.4 < r < 0.6  # Spearman's rho of an AR(1) 0.5 copula: (6/pi) asin(0.25) = 0.48


def test_smg_profile_follows_smg_statistics(tmp_path):
    fs, ann_path = synth_feature_set(tmp_path, videos=20, profile="smg", seed=3, dim=8,
                                     min_duration_s=600, max_duration_s=900)
    ann = load_annotations(ann_path, feature_set=fs)
    assert ann.classes == list(SMG_CLASSES)
    fps = smg_profile.SOURCE_FPS
    durs, gaps, labels, overlaps, pairs = [], [], [], 0, 0
    for v in ann.videos.values():
        seg = v.segments
        durs.extend((seg[:, 1] - seg[:, 0]) * fps)
        gaps.extend((seg[1:, 0] - seg[:-1, 1]) * fps)
        overlaps += int((seg[1:, 0] < seg[:-1, 1]).sum())
        pairs += len(seg) - 1
        labels.extend(v.labels)
    durs, gaps = np.array(durs), np.array(gaps)
    assert len(durs) > 1000
    # Durations in SMG frames: p5 15, median 44, p95 127 (smg-timeline-stats.md).
    for q, want in ((5, 15), (50, 44), (95, 127)):
        assert abs(np.percentile(durs, q) / want - 1) < 0.12, (q, np.percentile(durs, q))
    assert 15 < np.median(gaps[gaps >= 0]) < 45  # median gap 31 frames
    assert 0.002 < overlaps / pairs < 0.04  # 40 of 3054 pairs overlap
    counts = np.bincount(labels, minlength=17)
    assert np.sort(counts)[-2:].sum() / counts.sum() > 0.55  # two classes hold 64%
    assert SMG_CLASSES[counts.argmax()] == "moving legs" and counts.min() < counts.max() / 40
    # Bursts: short gaps follow short gaps.
    lg = np.log1p(np.clip(gaps, 0, None))
    assert np.corrcoef(lg[1:], lg[:-1])[0, 1] > 0.2
    assert fs.settings["profile"] == "smg" and "overlap_prob" not in fs.settings


def test_smg_profile_amplitude_sets_difficulty(tmp_path):
    from detect.experiments.baselines import BaselineConfig, run_baseline

    f1 = {}
    for a in (0.3, 1.5):
        fs, ann = synth_feature_set(tmp_path / str(a), videos=16, profile="smg", seed=0, dim=64,
                                    amplitude=a, min_duration_s=120, max_duration_s=180)
        assert fs.settings["amplitude"] == a
        f1[a] = run_baseline(BaselineConfig(), fs.path, ann, tmp_path / f"p{a}",
                             progress=False)["f1_strict"]
    assert f1[0.3] < 0.3 < f1[1.5] - 0.2, f1


def test_smg_profile_rejects_other_class_counts(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="17 classes"):
        synth_feature_set(tmp_path, videos=2, classes=5, profile="smg")
    with pytest.raises(ValueError, match="profile must be one of"):
        synth_feature_set(tmp_path, videos=2, profile="smgg")


def test_smg_blur_and_noise_keep_their_seconds_at_a_finer_stride(tmp_path):
    from detect.synthetic.features import SMG_BLUR, smg_time_scale

    kernel, k = smg_time_scale(0.4)
    assert kernel.tolist() == list(SMG_BLUR) and k == 1  # stride 4: the sets as they were
    for step_s in (0.2, 0.1):
        kernel, k = smg_time_scale(step_s)
        lags = np.arange(len(kernel)) - len(kernel) // 2
        assert kernel.sum() == pytest.approx(1.0)
        # The blur's variance in seconds^2 is the stride-4 kernel's (0.5 steps^2 of 0.4 s).
        assert (kernel * lags**2).sum() * step_s**2 == pytest.approx(0.5 * 0.4**2)
        assert k == round(0.4 / step_s)
    # At stride 2 the noise of neighbouring steps is shared (lag-1 correlation 1/2), so a pair
    # of steps holds no more independent noise than one stride-4 step.
    fs, _ = synth_feature_set(tmp_path / "s2", videos=1, profile="smg", seed=0, stride=2,
                              amplitude=1e-3, min_duration_s=200, max_duration_s=200)
    x = fs.load(fs.video_ids()[0]).features.astype(np.float64)
    x -= x.mean(0)
    lag1 = (x[1:] * x[:-1]).sum() / (x * x).sum()
    assert 0.4 < lag1 < 0.6
    assert fs.settings["noise_steps"] == 2 and len(fs.settings["blur"]) == 9
