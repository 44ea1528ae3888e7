"""The baselines the detector is compared with: run decoding, the probe's fit, scoring."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detect.data.annotations import load_annotations
from detect.evaluation.metrics import score_files
from detect.experiments.baselines import (
    BaselineConfig,
    _videos,
    argmax_runs,
    fit_probe,
    level_runs,
    run_baseline,
    runs,
)
from detect.synthetic.features import synth_feature_set
from extract.cache import FeatureSet


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    return synth_feature_set(out, videos=12, classes=3, seed=2, noise=0.0, dim=16,
                             min_duration_s=60, max_duration_s=80)


def _runs_loop(mask):
    starts, ends, prev = [], [], False
    for i, m in enumerate(mask):
        if m and not prev:
            starts.append(i)
        if prev and not m:
            ends.append(i)
        prev = m
    if prev:
        ends.append(len(mask))
    return starts, ends


def test_runs_equal_a_loop():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 7, 50):
        for _ in range(20):
            mask = rng.random(n) < rng.random()
            s, e = runs(mask)
            assert (s.tolist(), e.tolist()) == _runs_loop(mask.tolist())


def test_argmax_and_level_runs_by_hand():
    # 2 classes + background; steps of 0.5 s.
    probs = np.array([
        [0.1, 0.1, 0.8],
        [0.7, 0.1, 0.2],
        [0.5, 0.2, 0.3],
        [0.1, 0.1, 0.8],
        [0.2, 0.6, 0.2],
    ])
    d = argmax_runs(probs, 0.5)
    got = sorted(zip(d.start.tolist(), d.end.tolist(), d.label.tolist(),
                     np.round(d.score, 9).tolist(), strict=True))
    assert got == [(0.5, 1.5, 0, 0.6), (2.0, 2.5, 1, 0.6)]
    d = level_runs(probs[:, :2], 1.0, levels=(0.4, 0.6))
    got = sorted(zip(d.start.tolist(), d.end.tolist(), d.label.tolist(),
                     np.round(d.score, 9).tolist(), strict=True))
    # class 0: >= 0.4 over steps 1-2 (mean 0.6), >= 0.6 at step 1 (0.7); class 1: step 4 (0.6).
    assert got == [(1.0, 2.0, 0, 0.7), (1.0, 3.0, 0, 0.6), (4.0, 5.0, 1, 0.6), (4.0, 5.0, 1, 0.6)]


def test_probe_reaches_the_regularised_optimum(clean_set):
    """At the L-BFGS solution the gradient of the penalised loss vanishes (float64 check)."""
    fs_, ann_path = clean_set
    fs = FeatureSet.find(fs_.path)
    ann = load_annotations(ann_path, feature_set=fs)
    train = _videos(fs, ann, "train")
    cfg = BaselineConfig(l2=1e-2, iterations=500)
    model, params = fit_probe(train, cfg, 3)
    lin = model[1]
    assert params == (16 + 1) * 4
    x = torch.from_numpy(np.concatenate([v.x for v in train])).double()
    x = (x - model[0].mean.double()) / model[0].std.double()
    dense = np.concatenate([v.dense for v in train])
    y = torch.from_numpy(np.where(dense.any(1), dense.argmax(1), 3))
    w = lin.weight.detach().double().requires_grad_()
    b = lin.bias.detach().double().requires_grad_()
    loss = F.cross_entropy(x @ w.T + b, y) + cfg.l2 * w.square().sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert float(gw.abs().max()) < 1e-3 and float(gb.abs().max()) < 1e-3
    # Moving off the solution raises the loss: it is a minimum, not a saddle or a stale start.
    bumped = F.cross_entropy(x @ (w + 0.05).T + b, y) + cfg.l2 * (w + 0.05).square().sum()
    assert float(bumped.detach()) > float(loss.detach())


@pytest.mark.parametrize("kind", ["probe", "dense"])
def test_baselines_detect_a_clean_set_and_score_like_eval(clean_set, tmp_path, kind):
    fs, ann_path = clean_set
    out = tmp_path / kind
    m = run_baseline(BaselineConfig(kind=kind, epochs=30), fs.path, ann_path, out,
                     progress=False)
    assert m["subset"] == "test" and m["num_ground_truth"] >= 10
    assert m["f1_strict"] >= 0.85, m["f1_strict"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["baseline"]["kind"] == kind and saved["params"] == m["params"] > 0
    assert "packages" in saved["versions"] and saved["val"]["f1_strict"] > 0
    # The saved predictions, scored by `detect score`, give the reported F1s.
    rescored = score_files(out / "predictions.json", ann_path, "test")
    assert rescored["f1_strict"] == pytest.approx(m["f1_strict"])
    assert rescored["f1_miga"] == pytest.approx(m["f1_miga"])


def test_unknown_baseline_is_a_clear_error(clean_set, tmp_path):
    fs, ann_path = clean_set
    with pytest.raises(ValueError, match="probe, dense"):
        run_baseline(BaselineConfig(kind="svm"), fs.path, ann_path, tmp_path / "x")
