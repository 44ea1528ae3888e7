import json

import numpy as np
import pytest

from detect.data.annotations import parse_annotations
from detect.evaluation.metrics import (
    average_precision,
    f1_miga,
    f1_strict,
    format_table,
    interpolated_ap,
    score,
    score_files,
)
from detect.inference.detections import Detections, save_predictions

CLASSES = ["a", "b", "c"]


def _ann(videos: dict, subset: str = "test"):
    """videos: id -> [(label, start, end)] or (subset, [...])."""
    db = {}
    for vid, spec in videos.items():
        sub, items = spec if isinstance(spec, tuple) else (subset, spec)
        db[vid] = {
            "subset": sub, "duration": 100.0, "fps": 25.0,
            "annotations": [
                {"label": CLASSES[c], "label_id": c, "segment": [s, e]} for c, s, e in items
            ],
        }
    return parse_annotations({"classes": CLASSES, "database": db})


def _det(rows) -> Detections:
    """rows: [(label, start, end, score)]."""
    if not rows:
        return Detections.empty()
    r = np.array(rows, np.float64)
    return Detections(r[:, 1], r[:, 2], r[:, 0].astype(np.int64), r[:, 3])


def test_duplicate_credit_miga_vs_strict():
    ann = _ann({"v": [(0, 0, 10), (0, 1, 11)]})
    preds = {"v": _det([(0, 0, 10, 0.9), (0, 50, 60, 0.8)])}
    m = f1_miga(preds, ann, "test")
    # The first prediction hits both ground truths (tIoU 1 and 9/11) and is credited twice.
    assert (m["matched_gt"], m["num_pred"], m["num_gt"]) == (2, 2, 2)
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["f1"] == 1.0
    s = f1_strict(preds, ann, "test")
    assert s["matched"] == 1 and s["precision"] == 0.5 and s["recall"] == 0.5 and s["f1"] == 0.5


def test_strict_takes_best_iou_in_score_order():
    ann = _ann({"v": [(1, 0, 10), (1, 8, 18)]})
    # The best-scored prediction overlaps GT 1 better (tIoU 1) than GT 0 (2/12), so it takes GT 1
    # and the second prediction can still take GT 0.
    preds = {"v": _det([(1, 4, 9, 0.5), (1, 8, 18, 0.9)])}
    assert f1_strict(preds, ann, "test")["matched"] == 2
    # If the better prediction took GT 0 first, the other (tIoU 1/14 with GT 1) would miss.
    preds = {"v": _det([(1, 0, 10, 0.9), (1, 0, 9, 0.5)])}
    assert f1_strict(preds, ann, "test")["matched"] == 1
    assert f1_miga(preds, ann, "test")["matched_gt"] == 1


def test_tiou_exactly_threshold_and_class_mismatch():
    ann = _ann({"v": [(0, 0, 10)]})
    exact = {"v": _det([(0, 0, 3, 0.9)])}  # tIoU 3/10 = 0.3 exactly: not a hit (> 0.3)
    assert f1_miga(exact, ann, "test")["matched_gt"] == 0
    assert f1_strict(exact, ann, "test")["matched"] == 0
    ap = average_precision(exact, ann, "test", [0.3, 0.31])
    assert ap[0, 0] == 1.0 and ap[1, 0] == 0.0  # AP uses tIoU >= t
    above = {"v": _det([(0, 0, 3.01, 0.9)])}
    assert f1_miga(above, ann, "test")["matched_gt"] == 1
    wrong = {"v": _det([(1, 0, 10, 0.9)])}
    assert f1_miga(wrong, ann, "test")["f1"] == 0.0
    assert f1_strict(wrong, ann, "test")["f1"] == 0.0


def test_empty_predictions_and_empty_ground_truth():
    ann = _ann({"v": [(0, 0, 10)], "w": []})
    m = score({}, ann, "test")
    assert m["f1_miga"] == m["f1_strict"] == m["map"] == 0.0
    assert m["num_videos"] == 2 and m["num_ground_truth"] == 1 and m["num_predictions"] == 0
    assert m["per_class"]["a"]["ap"] == 0.0 and m["per_class"]["b"]["ap"] is None
    empty_gt = _ann({"w": []})
    m = score({"w": _det([(0, 1, 2, 0.5)])}, empty_gt, "test")
    assert m["f1_miga"] == m["precision_miga"] == m["recall_miga"] == m["map"] == 0.0
    assert m["num_predictions"] == 1


def test_ap_hand_worked_ranking():
    # 3 GTs; by score: TP, FP, TP, FP, one GT never found.
    # precision 1, 1/2, 2/3, 1/2 at recall 1/3, 1/3, 2/3, 2/3 -> AP = 1/3 * 1 + 1/3 * 2/3 = 5/9.
    assert interpolated_ap(np.array([1, 0, 1, 0], bool), 3) == pytest.approx(5 / 9)
    ann = _ann({"v": [(2, 0, 10), (2, 20, 30), (2, 40, 50)]})
    preds = {"v": _det([(2, 0, 10, 0.9), (2, 60, 70, 0.8), (2, 21, 30, 0.7), (2, 0, 10, 0.6)])}
    ap = average_precision(preds, ann, "test", [0.5])
    assert ap[0, 2] == pytest.approx(5 / 9)  # the duplicate of GT 0 is a false positive
    assert np.isnan(ap[0, 0]) and np.isnan(ap[0, 1])
    m = score(preds, ann, "test", iou_thresholds=[0.5, 0.95])
    assert m["map_at"] == {0.5: pytest.approx(5 / 9), 0.95: pytest.approx(1 / 3)}
    assert m["map"] == pytest.approx((5 / 9 + 1 / 3) / 2)


def test_other_subsets_ignored_unknown_videos_rejected():
    ann = _ann({"v": [(0, 0, 10)], "t": ("train", [(0, 0, 10)])})
    preds = {"v": _det([(0, 0, 10, 0.9)]), "t": _det([(1, 0, 10, 0.9)] * 5)}
    m = score(preds, ann, "test")
    assert m["num_predictions"] == 1 and m["f1_miga"] == 1.0 and m["num_videos"] == 1
    with pytest.raises(ValueError, match="not in the annotations: 'x'"):
        score({"x": _det([(0, 0, 1, 0.5)])}, ann, "test")


# ---- slow loop references on random data ----------------------------------------------------


def _iou_loop(p, g):
    inter = max(0.0, min(p[1], g[1]) - max(p[0], g[0]))
    union = (p[1] - p[0]) + (g[1] - g[0]) - inter
    return inter / union if union > 0 else 0.0


def _ap_reference(preds, ann, c, t):
    rows = []  # (score, video order, index) so ties keep video then detection order
    for vo, vid in enumerate(sorted(ann.videos)):
        d = preds.get(vid, Detections.empty())
        for i in range(len(d)):
            if d.label[i] == c:
                rows.append((-d.score[i], vo, i, vid))
    rows.sort()
    gts = {vid: [tuple(s) for s, lab in zip(v.segments, v.labels, strict=True) if lab == c]
           for vid, v in ann.videos.items()}
    npos = sum(len(x) for x in gts.values())
    used = {vid: [False] * len(x) for vid, x in gts.items()}
    tp = []
    for _, _, i, vid in rows:
        d = preds[vid]
        best, bj = -1.0, -1
        for j, g in enumerate(gts[vid]):
            o = _iou_loop((d.start[i], d.end[i]), g)
            if not used[vid][j] and o >= t and o > best:
                best, bj = o, j
        if bj >= 0:
            used[vid][bj] = True
        tp.append(bj >= 0)
    if not tp:
        return 0.0
    prec, rec, hits = [], [], 0
    for k, hit in enumerate(tp):
        hits += hit
        prec.append(hits / (k + 1))
        rec.append(hits / npos)
    ap, prev_r = 0.0, 0.0
    for k in range(len(tp)):
        if rec[k] > prev_r:
            ap += (rec[k] - prev_r) * max(prec[k:])
            prev_r = rec[k]
    return ap


def _f1_references(preds, ann, thr):
    mg = np_ = ng = ms = 0
    for vid, v in ann.videos.items():
        d = preds.get(vid, Detections.empty())
        np_ += len(d)
        ng += len(v.labels)
        for s, lab in zip(v.segments, v.labels, strict=True):
            for i in range(len(d)):  # the kit: first hit per GT, predictions reusable
                if d.label[i] == lab and _iou_loop((d.start[i], d.end[i]), s) > thr:
                    mg += 1
                    break
        used = [False] * len(v.labels)
        for i in sorted(range(len(d)), key=lambda i: -d.score[i]):
            best, bj = -1.0, -1
            for j, (s, lab) in enumerate(zip(v.segments, v.labels, strict=True)):
                o = _iou_loop((d.start[i], d.end[i]), s)
                if lab == d.label[i] and not used[j] and o > thr and o > best:
                    best, bj = o, j
            if bj >= 0:
                used[bj] = True
                ms += 1
    return mg, ms, np_, ng


def _random_case(rng, videos=4, classes=3):
    names = CLASSES[:classes]
    db, preds = {}, {}
    for v in range(videos):
        n = int(rng.integers(0, 8))
        s = rng.uniform(0, 25, n).round(1)  # dense: overlapping GTs
        e = s + rng.choice([0.0, 0.5, 2.0, 5.0, 9.0], n)
        lab = rng.integers(0, classes, n)
        db[f"v{v}"] = {"subset": "test", "duration": 70.0, "fps": 25.0, "annotations": [
            {"label": names[c], "label_id": int(c), "segment": [float(a), float(b)]}
            for c, a, b in zip(lab, s, e, strict=True)]}
        m = int(rng.integers(0, 12))
        # Predictions near some GTs (jittered) plus random ones; scores with ties.
        base = rng.integers(0, max(n, 1), m)
        ps = np.where(n > 0, s[base % max(n, 1)] if n else 0, 0) + rng.normal(0, 1, m)
        ps = np.where(rng.random(m) < 0.3, rng.uniform(0, 60, m), ps).clip(0)
        pe = ps + rng.uniform(0, 6, m)
        pl = np.where(rng.random(m) < 0.8, lab[base % max(n, 1)] if n else 0,
                      rng.integers(0, classes, m))
        sc = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], m) + rng.choice([0, 0.01], m)
        preds[f"v{v}"] = Detections(ps, pe, pl, sc)
    return parse_annotations({"classes": names, "database": db}), preds


def test_metrics_match_loop_references_on_random_data():
    rng = np.random.default_rng(1)
    ths = [0.1, 0.3, 0.5, 0.7]
    for _ in range(30):
        ann, preds = _random_case(rng)
        ap = average_precision(preds, ann, "test", ths)
        for k, t in enumerate(ths):
            for c in range(3):
                if not (np.concatenate([v.labels for v in ann.videos.values()]) == c).any():
                    assert np.isnan(ap[k, c])
                    continue
                assert ap[k, c] == pytest.approx(_ap_reference(preds, ann, c, t), abs=1e-12)
        mg, ms, np_, ng = _f1_references(preds, ann, 0.3)
        m, s = f1_miga(preds, ann, "test"), f1_strict(preds, ann, "test")
        assert (m["matched_gt"], m["num_pred"], m["num_gt"]) == (mg, np_, ng)
        assert s["matched"] == ms


def test_score_files_table_and_json(tmp_path):
    ann = _ann({"v": [(0, 0, 10), (1, 20, 25)], "w": [(2, 3, 4)]})
    ann_path = tmp_path / "annotations.json"
    ann_path.write_text(json.dumps(ann.to_dict()))
    preds = {"v": _det([(0, 1, 10, 0.9), (1, 30, 31, 0.2)])}
    pred_path = tmp_path / "pred.json"
    save_predictions(pred_path, preds, CLASSES)
    out = tmp_path / "metrics.json"
    m = score_files(pred_path, ann_path, "test", out=out)
    assert m["f1_miga"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert m["per_class"]["a"] == {"ap": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0,
                                   "support": 1, "predictions": 1}
    saved = json.loads(out.read_text())
    assert saved["f1_strict"] == m["f1_strict"] and saved["map_at"]["0.5"] == m["map_at"][0.5]
    table = format_table(m)
    for name in CLASSES:
        assert name in table
    assert f"{m['f1_miga']:.4f}" in table and f"{m['map']:.4f}" in table
