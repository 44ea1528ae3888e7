"""The dense pyramid detector (detect/model/pyramid.py), its losses (detect/train/pyramid_loss.py)
and its decoding (`decode_pyramid`): shapes and points against hand-computed cases, assignment and
decoding against plain loops, and training, prediction and streaming through the shared code."""

import math

import numpy as np
import pytest
import torch

from detect.config import ConfigError, load_config
from detect.data.windows import plan_windows, slice_padded
from detect.inference.detections import Detections
from detect.inference.online import OnlineDetector, WindowSettings
from detect.inference.postprocess import (
    DecodeOptions,
    apply_threshold,
    decode_outputs,
    decode_pyramid,
    merge_video,
)
from detect.model.build import build_model
from detect.model.e2e import build_e2e_model
from detect.model.pyramid import PyramidDetector, level_lengths, pyramid_points
from detect.train.loop import build_criterion
from detect.train.pyramid_loss import PyramidCriterion, assign_points, regression_ranges

PYR = ['model.arch="pyramid"', "model.hidden_dim=16", "model.pyramid.levels=3",
       "model.pyramid.stem_blocks=1", "model.pyramid.head_layers=1", "model.dropout=0.0"]


def pyramid(encoder: str = "conv", classes: int = 3, in_dim: int = 12) -> PyramidDetector:
    torch.manual_seed(0)
    cfg = load_config(None, [*PYR, f'model.pyramid.encoder="{encoder}"',
                             'model.mamba.backend="torch"'])
    return build_model(cfg, in_dim, classes, 0).eval()


def test_levels_and_points_by_hand():
    assert level_lengths(5, 3) == [5, 3, 2]
    assert level_lengths(64, 5) == [64, 32, 16, 8, 4]
    centres, steps, level = pyramid_points(5, 3)
    assert centres.tolist() == [0.5, 1.5, 2.5, 3.5, 4.5, 1.0, 3.0, 5.0, 2.0, 6.0]
    assert steps.tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 4, 4]
    assert level.tolist() == [0] * 5 + [1] * 3 + [2] * 2
    assert regression_ranges(3, 4.0) == [(0.0, 4.0), (4.0, 8.0), (8.0, math.inf)]
    assert regression_ranges(1, 4.0) == [(0.0, math.inf)]


@pytest.mark.parametrize("encoder", ["conv", "mamba"])
@pytest.mark.parametrize("W", [16, 13, 1])
def test_outputs_follow_the_points(encoder, W):
    model = pyramid(encoder)
    out = model(torch.randn(2, W, 12))
    N = sum(level_lengths(W, 3))
    assert out["cls_logits"].shape == (2, N, 3) and out["offsets"].shape == (2, N, 2)
    assert out["dense_logits"].shape == (2, W, 3)
    assert (out["offsets"] >= 0).all()
    c = pyramid_points(W, 3)[0]
    torch.testing.assert_close(out["segments"] * W, torch.stack(
        [c - out["offsets"][..., 0], c + out["offsets"][..., 1]], -1))
    torch.testing.assert_close(out["dense_logits"], out["cls_logits"][:, :W])
    # Windows are independent: the second one's outputs do not depend on the first.
    x = torch.randn(2, W, 12)
    y = x.clone()
    y[0] += 1
    torch.testing.assert_close(model(x)["cls_logits"][1], model(y)["cls_logits"][1])


def assign_loop(centres, steps, lo, hi, gt, labels, C, radius):
    """The assignment rule, one point and one instance at a time."""
    cls = np.zeros((len(centres), C))
    inst = np.zeros((len(centres), 2))
    for i, c in enumerate(centres):
        best = math.inf
        for (gs, ge), lab in zip(gt, labels, strict=True):
            far = max(c - gs, ge - c)
            if not (gs <= c <= ge and abs(c - (gs + ge) / 2) <= radius * steps[i]
                    and lo[i] <= far < hi[i]):
                continue
            if ge - gs < best:
                best, cls[i], inst[i] = ge - gs, 0, (gs, ge)
            if ge - gs == best:
                cls[i, lab] = 1
    return cls, inst


@pytest.mark.parametrize("seed", range(8))
def test_assignment_equals_a_loop(seed):
    rng = np.random.default_rng(seed)
    W, levels, C = 40, 4, 4
    centres, steps, level = (t.numpy() for t in pyramid_points(W, levels))
    ranges = regression_ranges(levels, 3.0)
    lo = np.array([ranges[v][0] for v in level])
    hi = np.array([ranges[v][1] for v in level])
    n = int(rng.integers(0, 9))
    s = rng.uniform(0, W, n)  # no two spans of one length but the duplicate below
    length = rng.choice([0.5, 1, 2, 5, 12, 30], n) * rng.uniform(0.8, 1.2, n)
    gt = np.stack([s, np.minimum(s + length, W)], 1)
    if n > 2:
        gt[1] = gt[0]  # one span twice: a multi-hot target where the labels differ
    labels = rng.integers(0, C, n)
    got_cls, got_inst = assign_points(*(torch.tensor(a, dtype=torch.float32) for a in
                                        (centres, steps, lo, hi, gt.reshape(-1, 2))),
                                      torch.tensor(labels), C, 1.5)
    want_cls, want_inst = assign_loop(centres, steps, lo, hi, gt, labels, C, 1.5)
    np.testing.assert_array_equal(got_cls.numpy(), want_cls)
    pos = want_cls.sum(1) > 0
    np.testing.assert_allclose(got_inst.numpy()[pos], want_inst[pos], atol=1e-5)


def test_a_short_instance_is_learned_at_level_zero():
    # A 1.2-step gesture at steps [10, 11.2]: the point at 10.5 and only it is positive.
    crit = PyramidCriterion(load_config(None, PYR).loss.pyramid, 3, levels=3, range_base=4.0)
    cls_t, inst, inside, _ = crit.targets(16, [{"labels": torch.tensor([2]),
                                             "segments": torch.tensor([[10 / 16, 11.2 / 16]])}],
                                       [16], torch.device("cpu"))
    pos = torch.nonzero(cls_t[0].sum(-1)).flatten().tolist()
    assert pos == [10] and cls_t[0, 10].tolist() == [0, 0, 1]
    torch.testing.assert_close(inst[0, 10], torch.tensor([10.0, 11.2]))
    assert inside.all()


def test_loss_ignores_padding_and_trains_towards_the_instance():
    model = pyramid()
    crit = build_criterion(load_config(None, PYR), 3)
    x = torch.randn(1, 16, 12)
    tg = [{"labels": torch.tensor([1]), "segments": torch.tensor([[2 / 16, 5 / 16]])}]
    out = model(x)
    a, logs = crit(out, tg, torch.zeros(1, 16, 3), valid=[8])
    # Logits of points whose centre lies in the padding (steps 8..15) do not change the loss.
    bumped = dict(out, cls_logits=out["cls_logits"].clone())
    centres = pyramid_points(16, 3)[0]
    bumped["cls_logits"][0, centres >= 8] += 5.0
    b, _ = crit(bumped, tg, torch.zeros(1, 16, 3), valid=[8])
    torch.testing.assert_close(a, b)
    assert set(logs) == {"loss_cls", "loss_reg"}
    # A window without instances has a classification loss only.
    _, empty = crit(out, [{"labels": torch.zeros(0, dtype=torch.long),
                           "segments": torch.zeros(0, 2)}], torch.zeros(1, 16, 3))
    assert empty["loss_reg"] == 0 and empty["loss_cls"] > 0
    # A few steps of Adam on one window find the instance.
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        loss, _ = crit(model(x), tg, torch.zeros(1, 16, 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    d = decode_outputs(model(x), [("v", 0, 16)], DecodeOptions(16, 4, 10.0, levels=3))["v"][0]
    best = int(np.argmax(d.score))
    assert d.label[best] == 1
    assert d.start[best] == pytest.approx(0.8, abs=0.1) and d.end[best] == pytest.approx(2.0,
                                                                                         abs=0.1)


def decode_loop(cls_logits, segments, meta, stride, fps, W, levels, topk, thr):
    """`decode_pyramid` one window and one candidate at a time."""
    centres = pyramid_points(W, levels)[0].tolist()
    out = {}
    for b, (vid, start, valid) in enumerate(meta):
        cands = []
        for n, c in enumerate(centres):
            for k in range(cls_logits.shape[2]):
                p = 1 / (1 + math.exp(-float(cls_logits[b, n, k])))
                if c < valid and p > thr:
                    cands.append((-p, n * cls_logits.shape[2] + k, n, k, p))
        rows = []
        for _, _, n, k, p in sorted(cands)[:topk]:
            lo, hi = sorted(float(v) for v in segments[b, n])
            lo, hi = min(max(lo, 0), valid / W), min(max(hi, 0), valid / W)
            if hi > lo:
                rows.append(((start + lo * W) * stride / fps, (start + hi * W) * stride / fps,
                             k, p))
        cols = np.array(rows, np.float64).reshape(-1, 4)
        out.setdefault(vid, []).append(Detections(cols[:, 0], cols[:, 1], cols[:, 2], cols[:, 3]))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_decode_equals_a_loop(seed):
    g = torch.Generator().manual_seed(seed)
    W, levels, C = 12, 3, 3
    N = sum(level_lengths(W, levels))
    logits = torch.randn(3, N, C, generator=g, dtype=torch.float64) * 3
    segs = torch.rand(3, N, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    meta = [("a", 0, 12), ("a", 6, 12), ("b", 0, 5)]
    got = decode_pyramid(logits, segs, meta, 4, 10.0, W, levels, topk=20, threshold=0.3)
    want = decode_loop(logits, segs, meta, 4, 10.0, W, levels, 20, 0.3)
    assert got.keys() == want.keys()
    for vid in got:
        for a, b in zip(got[vid], want[vid], strict=True):
            assert len(a) > 0
            np.testing.assert_allclose(a.segments, b.segments)
            np.testing.assert_array_equal(a.label, b.label)
            np.testing.assert_allclose(a.score, b.score)


def test_config_rules():
    cfg = load_config(None, PYR)
    assert cfg.model.pyramid.levels == 3 and cfg.loss.pyramid.iou_loss == "diou"
    with pytest.raises(ConfigError, match="dense_fusion"):
        load_config(None, [*PYR, "eval.dense_fusion=0.3"])
    with pytest.raises(ConfigError, match="pyramid"):
        load_config(None, [*PYR, "model.pyramid.depth=3"])
    with pytest.raises(ConfigError, match="encoder"):
        load_config(None, [*PYR, 'model.pyramid.encoder="transformer"'])
    for path in ("configs/synthetic-small-dense.toml", "configs/smg-dense.toml"):
        assert load_config(path).model.arch == "pyramid"


def test_end_to_end_model_takes_the_pyramid():
    cfg = load_config(None, [*PYR, 'mode="e2e"', 'backbone.weights="random"'])
    model = build_e2e_model(cfg, 2)
    assert isinstance(model.detector, PyramidDetector)


@pytest.mark.parametrize(("steps", "hop", "push"), [(88, 8, 5), (11, 4, 4)])
def test_online_equals_offline_windows(steps, hop, push):
    W, stride, fps, nms, thr = 16, 4, 10.0, 0.5, 0.3
    model = pyramid()
    with torch.no_grad():  # scores around 0.5 rather than the prior's 0.01: many candidates
        model.cls_head.out.bias.zero_()
    opts = DecodeOptions(W, stride, fps, levels=3, pre_nms_topk=50)
    feats = np.random.default_rng(2).standard_normal((steps, 12)).astype(np.float32)
    det = OnlineDetector(model, WindowSettings(W, hop, stride, fps), nms, thr, decode=opts)
    got = [det.push(feats[i:i + push]) for i in range(0, steps, push)] + [det.finish()]
    parts = []
    with torch.inference_mode():
        for s in plan_windows(steps, W, 1 - hop / W):
            out = model(slice_padded(feats, s, W)[None], None)
            parts += decode_outputs(out, [("v", s, min(W, steps - s))], opts)["v"]
    want = apply_threshold({"v": merge_video(parts, nms, 0.0, 10**9)}, thr)["v"]
    g = Detections.concat(got)
    assert len(want) > 3 and len(g) == len(want)
    key = lambda d: sorted(zip(d.label.tolist(), d.start.round(6).tolist(),  # noqa: E731
                               d.end.round(6).tolist(), strict=True))
    assert key(g) == key(want)
    with pytest.raises(ValueError, match="disagree"):
        OnlineDetector(model, WindowSettings(W, hop, stride, fps), nms, thr,
                       decode=DecodeOptions(W + 1, stride, fps, levels=3))


@pytest.mark.slow
def test_a_pyramid_run_trains_resumes_evaluates_and_reports(tmp_path):
    from detect.apps.report import write_report
    from detect.evaluation.evaluate import evaluate_run
    from detect.runs import BEST
    from detect.synthetic.features import synth_feature_set
    from detect.train.loop import train
    from extract.io import load_checkpoint, read_metrics_rows

    fs, ann = synth_feature_set(tmp_path / "d", videos=12, classes=3, seed=0, noise=0.0, dim=16,
                                min_duration_s=40, max_duration_s=60)
    cfg = load_config(None, [*PYR, "data.window=32", "train.epochs=12", "train.lr=3e-3",
                             "train.batch_size=4", "train.device=cpu"])
    train(cfg, fs.path, ann, tmp_path / "full", progress=False)
    train(cfg, fs.path, ann, tmp_path / "cut", progress=False, max_epochs=5)
    train(cfg, fs.path, ann, tmp_path / "cut", resume=True, progress=False)
    rows = [read_metrics_rows(tmp_path / r) for r in ("full", "cut")]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows[0]] == [
        {k: v for k, v in r.items() if k != "seconds"} for r in rows[1]]
    assert {"train_loss_cls", "train_loss_reg"} <= set(rows[0][0])
    assert isinstance(build_model(cfg, 16, 3, 0), PyramidDetector)
    assert load_checkpoint(tmp_path / "full" / BEST)["threshold"] > 0
    # The clean set is easy: a dense detector must find most of it.
    metrics = evaluate_run(tmp_path / "full", "test", progress=False)
    assert metrics["f1_strict"] >= 0.6, metrics
    assert set(metrics["recall_by_duration"]) == {"<0.8s", "0.8-2s", "2-4s", ">=4s"}
    page = write_report(tmp_path / "full", "test", progress=False).read_text()
    assert "timeline-" in page and "RANDOM WEIGHTS" not in page
