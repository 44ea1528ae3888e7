"""The matched-filter oracle (detect.synthetic.oracle): its scores against a loop over the
generator's own planting code, and what it finds on a set it knows."""

import numpy as np
import pytest

from detect.config import EvalConfig
from detect.data.annotations import load_annotations
from detect.evaluation.evaluate import score_detections
from detect.synthetic import smg_profile
from detect.synthetic.features import _events, smg_signatures, synth_feature_set
from detect.synthetic.oracle import (
    Planted,
    length_log_prior,
    lengths_grid,
    oracle_detections,
    oracle_scores,
    run_oracle,
)


def planted_signal(planted: Planted, h: int, a: float, b: float, T: int) -> np.ndarray:
    """(T, dim) the signal the generator plants for one instance at the mean gains, by its own
    code: a gesture of class h, or for h >= C a distractor of group h - C (its known part)."""
    C = planted.body.shape[0]
    sig = np.zeros((T, planted.body.shape[1]))
    if h < C:
        _events(sig, np.array([[a, b]]), np.array([planted.gain]), planted.body[[h]],
                planted.onset[[h]], planted.offset[[h]], planted.edge_gain)
    else:
        _events(sig, np.array([[a, b]]), np.array([planted.gain]),
                planted.groups[[h - C]] / np.sqrt(2), None, None)
    pad = len(planted.blur) // 2
    padded = np.pad(sig, ((pad, pad), (0, 0)))  # zeros: the oracle ignores the video's ends
    return sum(w * padded[k : k + T] for k, w in enumerate(planted.blur))


@pytest.mark.parametrize("phase,length", [(0.0, 0.25), (0.5, 0.5), (0.75, 1.0), (0.25, 2.75),
                                          (0.0, 7.5)])
def test_scores_are_the_log_likelihood_ratio(phase, length):
    planted = Planted.of_set(seed=3, amplitude=0.75, dim=64)
    rng = np.random.default_rng(0)
    T = 30
    x = rng.standard_normal((T, 64))
    got = oracle_scores(x, planted, phase, length)
    assert got.shape == (T, 17 + len(planted.groups))
    for k in (0, 1, 9, 17, 26, T - 2):
        for h in (0, 5, 16, 17, 17 + len(planted.groups) - 1):
            if k + phase + length > T:
                assert got[k, h] == -np.inf
                continue
            m = planted_signal(planted, h, k + phase, k + phase + length, T)
            want = float((x * m).sum() - 0.5 * (m * m).sum())
            assert got[k, h] == pytest.approx(want, rel=1e-9, abs=1e-9), (k, h)


def test_signatures_are_the_sets():
    body, onset, offset, groups = smg_signatures(seed=2, dim=256)
    assert body.shape == onset.shape == offset.shape == (17, 256)
    np.testing.assert_allclose(np.linalg.norm(body, axis=1), 1.0)
    # onset, offset and groups are orthonormal, and edges orthogonal to every body
    dirs = np.concatenate([onset, offset, groups])
    np.testing.assert_allclose(dirs @ dirs.T, np.eye(len(dirs)), atol=1e-12)
    np.testing.assert_allclose(dirs[:34] @ body.T, 0.0, atol=1e-12)
    # a body is half its group's energy
    member = smg_profile.class_groups()
    np.testing.assert_allclose((body * groups[member]).sum(1), np.sqrt(0.5))


def test_length_prior_is_smgs_duration_distribution():
    g = lengths_grid()
    logp = length_log_prior(g, 0.4)
    assert np.exp(logp).sum() == pytest.approx(1.0)
    # the median SMG duration (44 frames at 28 fps = 1.57 s = 3.9 steps) splits the mass in half
    assert np.exp(logp[g < 3.9]).sum() == pytest.approx(0.5, abs=0.05)


def test_decodes_a_clean_timeline_exactly():
    """Noise-free features of known instances decode to those instances."""
    planted = Planted.of_set(seed=0, amplitude=3.0, dim=256)
    T = 60
    inst = [(3.0, 8.0, 2), (8.25, 9.0, 11), (20.5, 30.0, 5), (41.0, 42.5, 16)]
    x = sum(planted_signal(planted, c, a, b, T) for a, b, c in inst)
    d = oracle_detections(x, planted)
    got = sorted(zip(d.start / 0.4, d.end / 0.4, d.label, strict=True))
    assert [c for *_, c in got] == [c for *_, c in inst]
    np.testing.assert_allclose([(a, b) for a, b, _ in got], [(a, b) for a, b, _ in inst],
                               atol=0.3)


def test_finds_a_loud_sets_instances_and_loses_them_when_quiet(tmp_path):
    """At a loud amplitude the oracle finds almost everything, at a quiet one much less: it reads
    the planted signal, not the annotations."""
    f1 = {}
    for amp in (3.0, 0.3):
        fs, ann_path = synth_feature_set(tmp_path / f"a{amp}", videos=4, seed=1, profile="smg",
                                         amplitude=amp, min_duration_s=40, max_duration_s=50)
        ann = load_annotations(ann_path, feature_set=fs)
        planted = Planted.of_set(seed=1, amplitude=amp)
        preds = {v: oracle_detections(np.asarray(fs.load(v).features, np.float64), planted)
                 for v in ann.video_ids()}
        for va in ann.videos.values():
            va.subset = "test"  # score every video
        f1[amp] = score_detections(preds, ann, "test", EvalConfig(), None)["f1_strict"]
    assert f1[3.0] > 0.9
    assert f1[0.3] < f1[3.0] - 0.3


def test_lengths_grid_covers_smg():
    g = lengths_grid()
    assert g[0] == 0.25 and g[-1] >= 49.5 and np.all(np.diff(g) > 0)
    assert np.all(np.diff(g[g <= 2]) == 0.25)
    coarse = g[g >= 2]
    assert np.all(coarse[1:] / coarse[:-1] <= 1.125)


def test_scores_scale_with_the_noise_variance():
    """The log-likelihood ratio under noise of standard deviation s is the unit-noise one / s^2."""
    x = np.random.default_rng(1).standard_normal((20, 256))
    unit = oracle_scores(x, Planted.of_set(seed=0, amplitude=1.0), 0.5, 1.5)
    loud = oracle_scores(x, Planted.of_set(seed=0, amplitude=1.0, noise=2.0), 0.5, 1.5)
    np.testing.assert_allclose(loud, unit / 4.0)
    with pytest.raises(ValueError, match="noise > 0"):
        Planted.of_set(seed=0, amplitude=1.0, noise=0.0)


def test_run_oracle_refuses_sets_it_does_not_know(tmp_path):
    fs, ann = synth_feature_set(tmp_path / "basic", videos=3, classes=3, seed=0, dim=16,
                                min_duration_s=20, max_duration_s=20)
    with pytest.raises(ValueError, match="SMG-profile"):
        run_oracle(fs.path, ann, tmp_path / "out", progress=False)
