"""The causal (strictly online) mode: its training windows and targets by hand, its emission
rule against a plain loop, causality (no decision reads or reports the future), streaming equal
to the batched replay, AEDT by hand, and a causal run trained, evaluated online, predicted and
streamed through the shared code."""

import json
import math

import numpy as np
import pytest
import torch

from detect.config import ConfigError, load_config
from detect.data.annotations import Annotations, VideoAnnotations
from detect.data.windows import CausalTargets, causal_windows, horizon_steps
from detect.evaluation.metrics import emission_delays
from detect.inference.causal import (
    CausalDetector,
    CausalSettings,
    Decider,
    Emitter,
    decision_ends,
    emit,
    replay,
)
from detect.inference.detections import Detections, tiou
from detect.inference.postprocess import DecodeOptions
from detect.model.build import build_model
from detect.model.pyramid import pyramid_points
from detect.train.loop import build_criterion

PYR = ['model.arch="pyramid"', "model.hidden_dim=16", "model.pyramid.levels=3",
       "model.pyramid.stem_blocks=1", "model.pyramid.head_layers=1", "model.dropout=0.0"]
SEC = 0.4  # stride 4 at 10 fps


def test_causal_training_windows_by_hand():
    # Instances in feature time: [2, 5], [6, 9.5], [9, 10], [1, 14].
    ft = np.array([[2, 5], [6, 9.5], [9, 10], [1, 14]], np.float64)
    ws = causal_windows(ft, 14, window=8, c=CausalTargets(horizon=2, hop=4))
    # Windows end after 4, 8, 12 steps and at the video's end (14).
    assert [(w.start, w.valid) for w in ws] == [(0, 4), (0, 8), (4, 8), (6, 8)]
    # e=4: nothing complete. e=8: [2, 5] complete but ended before 8 - 2: ignored.
    assert ws[0].inside.tolist() == [] and ws[0].ignore.tolist() == []
    assert ws[1].inside.tolist() == [] and ws[1].ignore.tolist() == [0]
    # e=12 (window [4, 12)): [6, 9.5] ended at 9.5 <= 10: ignored; [9, 10] ended at 10, not
    # after 12 - 2: ignored; [1, 14] still running (and started before the window).
    assert ws[2].inside.tolist() == [] and ws[2].ignore.tolist() == [1, 2]
    # e=14 (window [6, 14)): [1, 14] started before the window: neither.
    assert ws[3].inside.tolist() == [] and ws[3].ignore.tolist() == [1, 2]
    ws = causal_windows(ft, 14, window=8, c=CausalTargets(horizon=3, hop=1))
    by_end = {w.start + w.valid: w for w in ws}
    assert by_end[10].inside.tolist() == [1, 2]  # 9.5 and 10 in (7, 10]
    assert by_end[12].inside.tolist() == [1, 2]  # in (9, 12]
    # e=13: (10, 13] holds neither end any more (10 is not after 10).
    assert by_end[13].inside.tolist() == [] and by_end[13].ignore.tolist() == [1, 2]
    assert horizon_steps(2.0, 4, 10.0) == 5 and horizon_steps(0.1, 4, 10.0) == 1


def test_config_rules(tmp_path):
    cfg = load_config("configs/synthetic-small-online.toml")
    assert cfg.online.causal and cfg.model.arch == "pyramid" and cfg.online.horizon_s == 2.0
    assert load_config("configs/smg-online.toml").online.causal
    with pytest.raises(ConfigError, match="online.every"):
        load_config(None, ["online.every=0"])
    with pytest.raises(ConfigError, match="online.horizon"):
        load_config(None, ["online.horizon=2"])
    with pytest.raises(ConfigError, match="e2e"):
        load_config(None, ["online.causal=true", 'mode="e2e"'])


def test_pyramid_loss_ignores_instances_reported_earlier():
    torch.manual_seed(0)
    cfg = load_config(None, PYR)
    model = build_model(cfg, 12, 3, 0).eval()
    crit = build_criterion(cfg, 3)
    out = model(torch.randn(1, 16, 12))
    tg = [{"labels": torch.tensor([1]), "segments": torch.tensor([[11 / 16, 14 / 16]]),
           "ignore": torch.tensor([[2 / 16, 6 / 16]])}]
    a, _ = crit(out, tg, torch.zeros(1, 16, 3))
    centres = pyramid_points(16, 3)[0]
    bumped = dict(out, cls_logits=out["cls_logits"].clone())
    bumped["cls_logits"][0, (centres >= 2) & (centres <= 6)] += 5.0
    b, _ = crit(bumped, tg, torch.zeros(1, 16, 3))
    torch.testing.assert_close(a, b)
    # Without the ignore entry the same logits are negatives and cost more.
    c, _ = crit(bumped, [{k: tg[0][k] for k in ("labels", "segments")}], torch.zeros(1, 16, 3))
    assert c > a


def emit_loop(steps, threshold, nms_iou):
    """The emission rule written plainly: one candidate at a time."""
    emitted = []  # (start, end, label, score, time)
    for now, cands in steps:
        order = sorted(range(len(cands)), key=lambda i: -cands.score[i])
        accepted = []
        for i in order:
            seg = (cands.start[i], cands.end[i])
            if cands.score[i] < threshold:
                continue
            old = [e for e in emitted if e[2] == cands.label[i]]
            if any(tiou(np.array([seg]), np.array([e[:2]]))[0, 0] > nms_iou for e in old):
                continue
            same = [a for a in accepted if a[2] == cands.label[i]]
            if any(tiou(np.array([seg]), np.array([a[:2]]))[0, 0] > nms_iou for a in same):
                continue
            accepted.append((*seg, int(cands.label[i]), float(cands.score[i]), now))
        emitted += accepted
    return sorted(emitted)


@pytest.mark.parametrize("seed", range(4))
def test_emission_rule_equals_a_loop(seed):
    rng = np.random.default_rng(seed)
    s = CausalSettings(window=20, horizon=5, every=1, stride=4, fps=10.0)
    steps = []
    for e in range(1, 60):
        n = int(rng.integers(0, 6))
        end = (e - rng.uniform(0, 5, n)) * SEC
        start = end - rng.uniform(0.2, 3, n)
        steps.append((e, Detections(start, end, rng.integers(0, 3, n), rng.uniform(0, 1, n))))
    for thr, nms in [(0.3, 0.3), (0.0, 0.5), (0.7, 0.1)]:
        em = emit(steps, thr, nms, s)
        got = sorted(zip(em.detections.start, em.detections.end, em.detections.label,
                         em.detections.score, em.emitted_at, strict=True))
        want = emit_loop([(e * SEC, c) for e, c in steps], thr, nms)
        assert len(got) == len(want)
        np.testing.assert_allclose(np.array(got, float), np.array(want, float))


def decider(every=1, window=12, horizon=4, classes=3):
    torch.manual_seed(1)
    cfg = load_config(None, [*PYR, f"data.window={window}"])
    model = build_model(cfg, 8, classes, 0).eval()
    s = CausalSettings(window, horizon, every, 4, 10.0)
    return Decider(model, s, DecodeOptions.of(cfg, 4, 10.0, window)), s


def test_no_decision_reads_or_reports_the_future():
    dec, s = decider()
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    before = replay(dec, x, batch=7)
    assert [e for e, _ in before] == list(range(1, 41)) == decision_ends(40, 1)
    y = x.copy()
    y[25:] = 100.0  # change the future of step 25
    after = replay(dec, y, batch=64)
    for (e, a), (_, b) in zip(before, after, strict=True):
        if e <= 25:  # decisions made before the change cannot see it
            np.testing.assert_array_equal(a.start, b.start)
            np.testing.assert_array_equal(a.score, b.score)
        # A candidate ends within the last D steps and never after the decision.
        assert np.all(a.end <= e * SEC + 1e-9) and np.all(a.end > (e - s.horizon) * SEC)
        assert np.all(a.start >= max(0, e - s.window) * SEC - 1e-9)
    em = emit(before, 0.0, 0.3, s)
    assert len(em.detections) and np.all(em.detections.end <= em.emitted_at + 1e-9)
    assert decision_ends(7, 3) == [3, 6, 7] and decision_ends(0, 2) == []


@pytest.mark.parametrize("every", [1, 3])
def test_streaming_equals_the_batched_replay(every):
    dec, s = decider(every=every)
    x = np.random.default_rng(2).normal(size=(47, 8)).astype(np.float32)
    want = emit(replay(dec, x), 0.0, 0.3, s)
    det = CausalDetector(dec, 0.0, 0.3)
    parts, times = [], []
    rng = np.random.default_rng(3)
    t = 0
    while t < len(x):
        n = int(rng.integers(1, 6))
        parts.append(det.push(x[t : t + n]))
        times.append(det.last_emitted_at)
        t += n
        assert det.buffered_steps <= s.window + 5  # memory stays bounded
    parts.append(det.finish())
    times.append(det.last_emitted_at)
    got = Detections.concat(parts)
    assert len(want.detections) > 0
    # Equal up to float rounding: batches of other sizes sum in another order.
    np.testing.assert_allclose(got.start, want.detections.start, atol=1e-5)
    np.testing.assert_allclose(got.score, want.detections.score, atol=1e-5)
    np.testing.assert_array_equal(got.label, want.detections.label)
    np.testing.assert_allclose(np.concatenate(times), want.emitted_at)


def test_emission_delays_by_hand():
    ann = Annotations(classes=["a", "b"], videos={
        "v": VideoAnnotations("test", 30.0, 25.0, np.array([[1.0, 3.0], [5.0, 8.0], [10, 12]]),
                              np.array([0, 1, 0]))})
    # Prediction 0 matches GT 0 (emitted at 3.6: 0.6 s late), prediction 1 is of the wrong
    # class, prediction 2 matches GT 2 early (emitted at 11.6, the GT ends at 12).
    preds = {"v": Detections([1.2, 5.0, 10.0], [3.0, 8.0, 11.4], [0, 0, 0], [0.9, 0.8, 0.7])}
    d = emission_delays(preds, {"v": np.array([3.6, 8.4, 11.6])}, ann, "test")
    np.testing.assert_allclose(np.sort(d), [-0.4, 0.6])
    with pytest.raises(ValueError, match="emission times"):
        emission_delays(preds, {"v": np.zeros(2)}, ann, "test")


def test_emitter_forgets_only_what_cannot_overlap_again():
    em = Emitter(0.0, 0.3, memory_s=4.0)
    em.step(2.0, Detections([1.0], [2.0], [0], [0.9]))
    assert len(em.emitted) == 1
    # A duplicate at the next decision is suppressed.
    assert len(em.step(2.4, Detections([1.1], [2.0], [0], [0.95]))) == 0
    em.step(6.5, Detections.empty())
    assert len(em.emitted) == 0 and math.isclose(em.memory_s, 4.0)


@pytest.mark.slow
def test_a_causal_run_trains_evaluates_online_and_predicts(tmp_path):
    from typer.testing import CliRunner

    from detect.__main__ import app
    from detect.apps.report import write_report
    from detect.evaluation.evaluate import evaluate_run
    from detect.runs import BEST
    from detect.synthetic.features import synth_feature_set
    from detect.train.loop import train
    from extract.io import load_checkpoint

    fs, ann = synth_feature_set(tmp_path / "d", videos=12, classes=3, seed=0, noise=0.0, dim=16,
                                min_duration_s=40, max_duration_s=60)
    cfg = load_config(None, [*PYR, "data.window=32", "train.epochs=6", "train.lr=3e-3",
                             "train.batch_size=8", "train.device=cpu", "online.causal=true",
                             "online.train_hop=2"])
    train(cfg, fs.path, ann, tmp_path / "run", progress=False)
    ck = load_checkpoint(tmp_path / "run" / BEST)
    assert 0 < ck["threshold"] < 1
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "run"), "--online"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "run" / "metrics_online.json").read_text())
    assert m["settings"]["mode"] == "causal" and m["settings"]["horizon_steps"] == 5
    assert m["settings"]["threshold"] == pytest.approx(ck["threshold"])
    # The clean set is easy: emitted within about D of the end, most gestures found.
    assert m["f1_strict"] >= 0.6, m["f1_strict"]
    assert 0 <= m["aedt_median_s"] <= 2.0 and m["aedt_p95_s"] <= 3.0
    assert m["emitted"] == m["num_predictions"] and m["curve"]
    preds = json.loads((tmp_path / "run" / "predictions_online.json").read_text())["results"]
    assert sum(len(v) for v in preds.values()) == m["emitted"]
    assert all(d["segment"][1] <= d["emitted_at"] + 1e-9 for v in preds.values() for d in v)
    # `eval` of a causal run scores what it emits (the same numbers).
    off = evaluate_run(tmp_path / "run", "test", progress=False)
    assert off["f1_strict"] == pytest.approx(m["f1_strict"])
    assert "median" in r.output and "emitted" in r.output
    # The report shows the online figures and the latency curve.
    page = write_report(tmp_path / "run", "test", progress=False).read_text()
    assert "<h2>Online</h2>" in page and "AEDT median" in page
    assert (tmp_path / "run" / "report" / "online.png").is_file()


@pytest.mark.slow
def test_the_query_point_detector_trains_causally(tmp_path):
    from detect.evaluation.online_eval import evaluate_online_run
    from detect.synthetic.features import synth_feature_set
    from detect.train.loop import train

    fs, ann = synth_feature_set(tmp_path / "d", videos=8, classes=3, seed=1, noise=0.0, dim=16,
                                min_duration_s=30, max_duration_s=40)
    cfg = load_config(None, [
        "data.window=32", "model.hidden_dim=16", "model.num_queries=8", "model.num_points=4",
        "model.num_layers=1", "model.num_heads=2", "model.ffn_dim=32", "model.mix_dim=8",
        "model.mamba.layers=1", 'model.mamba.backend="torch"', "train.epochs=2",
        "train.batch_size=8", "train.lr=1e-3", "train.device=cpu", "online.causal=true",
        "online.horizon_s=1.2", "online.every=2"])
    train(cfg, fs.path, ann, tmp_path / "run", progress=False)
    m = evaluate_online_run(tmp_path / "run", "test", progress=False)
    st = m["settings"]
    assert (st["mode"], st["horizon_steps"], st["every"]) == ("causal", 3, 2)
    preds = json.loads((tmp_path / "run" / "predictions_online.json").read_text())["results"]
    assert sum(len(v) for v in preds.values()) == m["emitted"] > 0
    ends = {vid: len(fs.load(vid).features) * 0.4 for vid in preds}
    for vid, dets in preds.items():
        for d in dets:
            # Decisions every 2 steps: emitted at a multiple of 0.8 s (or at the video's end),
            # never before the detection's end.
            t = d["emitted_at"]
            assert d["segment"][1] <= t + 1e-9
            assert math.isclose(t / 0.8, round(t / 0.8), abs_tol=1e-6) or math.isclose(
                t, ends[vid])


def test_a_causal_runs_own_threshold_wins_when_set():
    from detect.runs import score_threshold

    ck = {"threshold": 0.3}
    assert score_threshold(load_config(None, ["online.causal=true"]), ck) == 0.3
    assert score_threshold(load_config(None, ["online.causal=true", "online.threshold=0.6"]),
                           ck) == 0.6
    # A run trained for windows keeps its own (online.threshold is for causal decisions).
    assert score_threshold(load_config(None, ["online.threshold=0.6"]), ck) == 0.3
