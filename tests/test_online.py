"""Stage two online (detect/inference/online.py): what it emits equals offline merging over the same
windows, nothing is emitted before it is final, and memory stays bounded."""

import numpy as np
import pytest
import torch

from detect.config import ModelConfig
from detect.data.windows import plan_windows, slice_padded
from detect.inference.detections import Detections
from detect.inference.online import OnlineDetector, OnlineMerger, WindowSettings
from detect.inference.postprocess import apply_threshold, decode_windows, merge_video
from detect.model.detector import Detector


def as_set(d: Detections) -> set[tuple]:
    return {(round(s, 9), round(e, 9), int(c), round(p, 9))
            for s, e, c, p in zip(d.start, d.end, d.label, d.score, strict=True)}


def common(a: Detections, b: Detections, tol: float = 1e-5) -> int:
    """Detections of `a` with a twin in `b`: same class, start, end and score within `tol`.

    A tolerance, not exact equality: windows go through the model in batches of different sizes
    online and offline, and float32 results move in the last bits with the batch size.
    """
    xa = np.stack([a.start, a.end, a.score], 1)
    xb = np.stack([b.start, b.end, b.score], 1)
    close = (np.abs(xa[:, None] - xb[None]) <= tol).all(-1) & (a.label[:, None] == b.label[None])
    return int(close.any(1).sum())


def offline(parts: list[Detections], nms_iou: float, threshold: float) -> Detections:
    merged = merge_video(parts, nms_iou=nms_iou, score_threshold=0.0, max_per_video=10**9)
    return apply_threshold({"v": merged}, threshold)["v"]


def random_window_dets(rng, start: float, length: float, n: int, classes: int) -> Detections:
    """Candidates inside [start, start + length], many overlapping (to exercise NMS chains)."""
    a = start + rng.random(n) * length
    b = np.minimum(a + rng.random(n) * length * 0.3, start + length)
    return Detections(a, b, rng.integers(0, classes, n), rng.random(n))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("hop", [16, 8, 5])
def test_merger_equals_offline_nms_over_the_same_windows(seed, hop):
    rng = np.random.default_rng(seed)
    W, n_windows, nms, thr = 16, 12, 0.4, 0.3
    merger = OnlineMerger(nms, thr)
    parts, emitted = [], []
    for i in range(n_windows):
        s = i * hop
        d = random_window_dets(rng, s, W, 12, 2)
        parts.append(d)
        out = merger.add(d, frontier=s + hop, keep_after=s)
        # Final means final: nothing emitted ends after the frontier.
        assert np.all(out.end <= s + hop)
        emitted.append(out)
    emitted.append(merger.add(Detections.empty(), np.inf))
    got = Detections.concat(emitted)
    want = offline(parts, nms, thr)
    assert len(got) == len(as_set(got))  # never emitted twice
    assert as_set(got) == as_set(want)
    assert len(merger) == 0 or np.all(merger.emitted)


def test_a_candidate_waits_while_a_later_one_may_still_free_it():
    # One class, NMS at tIoU 0.3. a [2, 5] 0.9 suppresses b [1, 4] 0.8 (tIoU 0.5); b would
    # suppress c [0, 3] 0.7 (0.5), a does not (0.2). So with a, b, c alone c is kept. But c ends at
    # the frontier 3 while a does not: a later d [3, 6] 0.95 suppresses a (0.5), which frees b,
    # which drops c. Emitting c early would be wrong; offline keeps d and b.
    m = OnlineMerger(nms_iou=0.3, threshold=0.0)
    first = Detections(np.array([2.0, 1.0, 0.0]), np.array([5.0, 4.0, 3.0]),
                       np.zeros(3, np.int64), np.array([0.9, 0.8, 0.7]))
    assert len(m.add(first, frontier=3.0)) == 0
    d = Detections(np.array([3.0]), np.array([6.0]), np.zeros(1, np.int64), np.array([0.95]))
    out = Detections.concat([m.add(d, frontier=10.0), m.add(Detections.empty(), np.inf)])
    assert as_set(out) == {(3.0, 6.0, 0, 0.95), (1.0, 4.0, 0, 0.8)}
    assert as_set(out) == as_set(offline([first, d], 0.3, 0.0))


def tiny_model(in_dim: int = 12, classes: int = 3) -> Detector:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_dim=16, num_queries=6, num_points=6, num_layers=1, num_heads=2,
                      ffn_dim=32, mix_dim=4)
    return Detector(cfg, in_dim, classes).eval()


def offline_windows(model, feats: np.ndarray, W: int, hop: int, stride: int, fps: float,
                    nms: float, thr: float) -> Detections:
    """The reference: every plan_windows window over the whole sequence, merged at the end."""
    starts = plan_windows(len(feats), W, 1 - hop / W)
    parts = []
    with torch.inference_mode():
        for s in starts:
            x = slice_padded(feats, s, W)[None]
            out = model(x, None)
            meta = [("v", s, min(W, len(feats) - s))]
            parts += decode_windows(out["logits"][-1], out["segments"][-1], meta, stride, fps,
                                    W)["v"]
    return offline(parts, nms, thr)


@pytest.mark.parametrize(("steps", "hop", "push"), [(160, 16, 7), (160, 4, 1), (163, 5, 13),
                                                     (40, 8, 3), (11, 4, 4)])
def test_online_detector_equals_offline_windows(steps, hop, push):
    # steps 163 at hop 5: a tail window that starts between regular ones; 11 < W: one padded
    # window. Threshold 0.2 on a random model: plenty of overlapping candidates per class.
    W, stride, fps, nms, thr = 16, 4, 10.0, 0.5, 0.2
    model = tiny_model()
    feats = np.random.default_rng(1).standard_normal((steps, 12)).astype(np.float32)
    det = OnlineDetector(model, WindowSettings(W, hop, stride, fps), nms, thr)
    got, max_buffer = [], 0
    for i in range(0, steps, push):
        out = det.push(feats[i:i + push])
        # Emitted only once final: it ends where the windows run so far have fixed it.
        assert np.all(out.end <= (det.next_start) * stride / fps + 1e-9)
        got.append(out)
        max_buffer = max(max_buffer, det.buffered_steps)
    got.append(det.finish())
    want = offline_windows(model, feats, W, hop, stride, fps, nms, thr)
    g = Detections.concat(got)
    assert len(want) > 3
    if steps == 163:  # the tail window: what was already emitted wins over a tail candidate
        assert common(g, want) >= 0.9 * max(len(want), len(g))
    else:
        assert len(g) == len(want) == common(g, want) == common(want, g)
    assert max_buffer <= W + hop + push


def test_buffer_is_constant_in_stream_length():
    W, hop = 16, 4
    det = OnlineDetector(tiny_model(), WindowSettings(W, hop, 4, 10.0), 0.5, 0.5)
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(400):
        det.push(rng.standard_normal((3, 12)).astype(np.float32))
        sizes.append((det.buffered_steps, len(det.merger)))
    late = sizes[200:]
    assert max(b for b, _ in late) <= W + hop + 3
    assert max(p for _, p in late) <= max(p for _, p in sizes[:200]) * 2 + 20


def test_window_settings_are_checked():
    with pytest.raises(ValueError, match="hop"):
        WindowSettings(16, 17, 4, 10.0)
    with pytest.raises(ValueError, match="hop"):
        WindowSettings(16, 0, 4, 10.0)
