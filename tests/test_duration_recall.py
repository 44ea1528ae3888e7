"""Recall by ground-truth duration bin (`metrics.score`["recall_by_duration"])."""

import sys
from pathlib import Path

import numpy as np
import pytest

from detect.config import EvalConfig
from detect.evaluation.evaluate import score_detections
from detect.evaluation.metrics import DURATION_BINS, duration_labels, format_table, score
from detect.inference.postprocess import apply_threshold

sys.path.insert(0, str(Path(__file__).parent))
from test_metrics import _ann, _det  # noqa: E402

LABELS = ["<0.8s", "0.8-2s", "2-4s", ">=4s"]


def _row(recall: float, matched: int, support: int) -> dict:
    return {"recall": recall, "matched": matched, "support": support}


# One video, ground truths of 0.5, 0.5, 1, 3, 5 and 10 s in different classes.
GT = [
    (0, 0.0, 0.5),  # 0.5 s: hit exactly
    (1, 60.0, 60.5),  # 0.5 s: only a wrong-class prediction on it
    (1, 10.0, 11.0),  # 1 s: hit, tIoU 0.8
    (2, 20.0, 23.0),  # 3 s: no prediction
    (0, 30.0, 35.0),  # 5 s: tIoU exactly 0.3 (1.5 / 5), not a hit (> 0.3)
    (2, 40.0, 50.0),  # 10 s: hit, tIoU 0.8
]
PRED = [
    (0, 0.0, 0.5, 0.9),
    (0, 60.0, 60.5, 0.9),
    (1, 10.2, 11.0, 0.8),
    (0, 30.0, 31.5, 0.7),
    (2, 41.0, 49.0, 0.6),
]


def _expected() -> dict:
    return {
        "<0.8s": _row(0.5, 1, 2),
        "0.8-2s": _row(1.0, 1, 1),
        "2-4s": _row(0.0, 0, 1),
        ">=4s": _row(0.5, 1, 2),
    }


def test_labels_from_edges():
    assert duration_labels() == LABELS
    assert duration_labels(DURATION_BINS) == LABELS
    assert duration_labels((0.5, 1.25)) == ["<0.5s", "0.5-1.25s", ">=1.25s"]
    for bad in [(), (2.0, 1.0), (1.0, 1.0), (0.0, 1.0), (1.0, float("inf"))]:
        with pytest.raises(ValueError, match="duration bins"):
            duration_labels(bad)
    with pytest.raises(ValueError, match="duration bins"):
        score({}, _ann({"v": GT}), "test", duration_bins=(2.0, 1.0))


def test_hand_computed_bins():
    m = score({"v": _det(PRED)}, _ann({"v": GT}), "test")
    assert m["recall_by_duration"] == _expected()
    assert list(m["recall_by_duration"]) == LABELS
    # The bins split the MiGA counts.
    assert sum(b["matched"] for b in _expected().values()) == m["matched_gt_miga"] == 3
    assert sum(b["support"] for b in _expected().values()) == m["num_ground_truth"] == 6


def test_match_iou_argument():
    m = score({"v": _det(PRED)}, _ann({"v": GT}), "test", match_iou=0.2)  # tIoU 0.3 now a hit
    assert m["recall_by_duration"][">=4s"] == _row(1.0, 2, 2)
    assert m["recall_by_duration"]["<0.8s"] == _row(0.5, 1, 2)  # the wrong class still misses


def test_empty_bins_and_custom_edges():
    # No ground truth between 0.8 s and 4 s: those bins report recall 0 on support 0.
    ann = _ann({"v": [(0, 0.0, 0.5), (1, 30.0, 35.0)]})
    m = score({"v": _det([(1, 30.0, 35.0, 0.9)])}, ann, "test")
    assert m["recall_by_duration"] == {
        "<0.8s": _row(0.0, 0, 1),
        "0.8-2s": _row(0.0, 0, 0),
        "2-4s": _row(0.0, 0, 0),
        ">=4s": _row(1.0, 1, 1),
    }
    m = score({"v": _det(PRED)}, _ann({"v": GT}), "test", duration_bins=(0.8, 2.0, 4.0, 20.0))
    expected = _expected()
    del expected[">=4s"]
    assert m["recall_by_duration"] == {
        **expected, "4-20s": _row(0.5, 1, 2), ">=20s": _row(0.0, 0, 0)
    }


def test_no_ground_truth_and_other_subsets():
    # Only the scored subset counts; a video without predictions has its ground truth missed.
    ann = _ann({"v": [(0, 0.0, 1.0)], "w": ("train", [(0, 0.0, 1.0)]), "x": [(2, 5.0, 8.0)]})
    preds = {"v": _det([(0, 0.0, 1.0, 0.9)]), "w": _det([(0, 0.0, 1.0, 0.9)])}
    m = score(preds, ann, "test")
    assert m["recall_by_duration"] == {
        "<0.8s": _row(0.0, 0, 0),
        "0.8-2s": _row(1.0, 1, 1),
        "2-4s": _row(0.0, 0, 1),
        ">=4s": _row(0.0, 0, 0),
    }
    empty = score({}, _ann({"v": []}), "test")["recall_by_duration"]
    assert empty == {lab: _row(0.0, 0, 0) for lab in LABELS}


def test_edges_are_inclusive_below_and_frame_times_bin_by_frames():
    # 21/25 .. 41/25 s is 20 frames at 25 fps, 0.8 s, though end - start is 0.7999999999999999.
    assert 41 / 25 - 21 / 25 < 0.8
    gts = [(0, 21 / 25, 41 / 25), (0, 10.0, 10.79), (0, 20.0, 22.0), (0, 30.0, 34.0),
           (0, 50.0, 50.0)]
    preds = {"v": _det([(0, s, e, 0.9) for _, s, e in gts])}
    m = score(preds, _ann({"v": gts}), "test")
    # Every one is predicted exactly, except that a zero-length ground truth never matches.
    assert m["recall_by_duration"] == {
        "<0.8s": _row(0.5, 1, 2),
        "0.8-2s": _row(1.0, 1, 1),
        "2-4s": _row(1.0, 1, 1),
        ">=4s": _row(1.0, 1, 1),
    }


def test_format_table_line():
    m = score({"v": _det(PRED)}, _ann({"v": GT}), "test")
    lines = format_table(m).splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("mAP"))
    assert lines[i + 1] == (
        "recall by duration (class match, tIoU > 0.3): "
        "<0.8s 0.500 (1/2)  0.8-2s 1.000 (1/1)  2-4s 0.000 (0/1)  >=4s 0.500 (1/2)"
    )
    del m["recall_by_duration"]  # a metrics dict from before the metric existed
    assert "recall by duration" not in format_table(m)


def test_score_detections_uses_thresholded_detections():
    # The 0.2-score prediction is the only hit on the 3 s ground truth: dropped at threshold 0.5.
    preds = {"v": _det([*PRED, (2, 20.0, 23.0, 0.2)])}
    ann = _ann({"v": GT})
    m = score_detections(preds, ann, "test", EvalConfig(), 0.5)
    assert m["recall_by_duration"] == _expected()
    assert m["recall_by_duration"] == score(apply_threshold(preds, 0.5), ann, "test")[
        "recall_by_duration"
    ]
    assert score(preds, ann, "test")["recall_by_duration"]["2-4s"] == _row(1.0, 1, 1)


def _tiou_ref(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def _reference(videos: dict, preds: dict, subset: str, match_iou: float, edges) -> dict:
    """Plain loops: every ground truth of the subset, its bin, whether any prediction hits it."""
    labels = duration_labels(edges)
    matched = [0] * len(labels)
    support = [0] * len(labels)
    for vid, (sub, gts) in videos.items():
        if sub != subset:
            continue
        for c, s, e in gts:
            k = sum(1 for edge in edges if round(e - s, 6) >= edge)
            support[k] += 1
            rows = preds.get(vid, [])
            if any(pc == c and _tiou_ref((ps, pe), (s, e)) > match_iou for pc, ps, pe, _ in rows):
                matched[k] += 1
    return {
        lab: _row(m / n if n else 0.0, m, n)
        for lab, m, n in zip(labels, matched, support, strict=True)
    }


def _random_case(rng: np.random.Generator) -> tuple[dict, dict]:
    """Videos (subset, [(label, start, end)]) and predictions [(label, start, end, score)], all
    on a 25 fps frame grid so that edges and tIoU thresholds are hit exactly now and then."""
    videos, preds = {}, {}
    for i in range(int(rng.integers(1, 9))):
        sub = "test" if rng.random() < 0.8 else "train"
        gts = []
        for _ in range(int(rng.integers(0, 8))):
            s = int(rng.integers(0, 2000))
            gts.append((int(rng.integers(0, 3)), s / 25, (s + int(rng.integers(0, 150))) / 25))
        videos[f"v{i}"] = (sub, gts)
        if rng.random() < 0.2:
            continue  # no predictions for this video
        rows = []
        for c, s, e in gts:  # jittered copies, sometimes of the wrong class
            for _ in range(int(rng.integers(0, 3))):
                fs, fe = round(s * 25), round(e * 25)
                fs, fe = fs + int(rng.integers(-15, 16)), fe + int(rng.integers(-15, 16))
                lab = c if rng.random() < 0.7 else int(rng.integers(0, 3))
                rows.append((lab, fs / 25, max(fs, fe) / 25, float(rng.random())))
        for _ in range(int(rng.integers(0, 5))):  # background
            s = int(rng.integers(0, 2000))
            rows.append((int(rng.integers(0, 3)), s / 25, (s + int(rng.integers(1, 100))) / 25,
                         float(rng.random())))
        preds[f"v{i}"] = rows
    return videos, preds


@pytest.mark.parametrize("seed", range(30))
def test_matches_loop_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    videos, rows = _random_case(rng)
    ann = _ann(videos)
    preds = {vid: _det(r) for vid, r in rows.items()}
    for match_iou, edges in [(0.3, DURATION_BINS), (0.5, (0.4, 1.0, 2.0, 3.0, 5.0))]:
        m = score(preds, ann, "test", iou_thresholds=(0.5,), match_iou=match_iou,
                  duration_bins=edges)
        assert m["recall_by_duration"] == _reference(videos, rows, "test", match_iou, edges)
        bins = m["recall_by_duration"].values()
        assert sum(b["matched"] for b in bins) == m["matched_gt_miga"]
        assert sum(b["support"] for b in bins) == m["num_ground_truth"]
