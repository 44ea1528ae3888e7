import json
import math

import numpy as np
import pytest
import torch

from detect.data.annotations import parse_annotations
from detect.evaluation.metrics import best_threshold, f1_miga
from detect.inference.detections import (
    Detections,
    PredictionError,
    load_predictions,
    save_predictions,
    tiou,
)
from detect.inference.postprocess import decode_windows, merge_video, nms_1d
from detect.inference.predictor import predict
from detect.model.build import build_model
from detect.synthetic.features import synth_feature_set

CLASSES = ["a", "b", "c"]


def test_tiou_hand_values():
    got = tiou(np.array([[0, 10], [2, 2]]), np.array([[0, 3], [5, 15], [20, 30], [2, 2]]))
    np.testing.assert_allclose(got, [[0.3, 5 / 15, 0, 0], [0, 0, 0, 0]])


def test_decode_windows_matches_loop_reference():
    rng = np.random.default_rng(0)
    B, Nq, C, W = 3, 5, 4, 16
    logits = torch.from_numpy(rng.normal(0, 2, (B, Nq, C + 1))).float()
    segs = torch.from_numpy(rng.uniform(-0.2, 1.2, (B, Nq, 2))).float()
    meta = [("v1", 0, 16), ("v1", 16, 16), ("v2", 0, 10)]  # v2: padded window, 10 valid steps
    stride, fps = 4, 10.0
    dense = torch.from_numpy(rng.normal(0, 2, (B, W, C))).float()
    for focal, fusion in ((False, 0.0), (True, 0.0), (False, 0.4), (True, 1.0)):
        out = decode_windows(logits, segs, meta, stride, fps, W, focal=focal, top_k=2,
                             dense_logits=dense if fusion else None, dense_fusion=fusion)
        assert [len(x) for x in (out["v1"], out["v2"])] == [2, 1]
        flat = {"v1": Detections.concat(out["v1"]), "v2": out["v2"][0]}
        rows = {"v1": [], "v2": []}
        for b, (vid, start, valid) in enumerate(meta):
            for q in range(Nq):
                x = logits[b, q].double().tolist()
                if focal:
                    p = [1 / (1 + math.exp(-v)) for v in x[:C]]
                else:
                    z = [math.exp(v) for v in x]
                    p = [v / sum(z) for v in z][:C]
                top = sorted(range(C), key=lambda c: -p[c])[:2]
                s, e = sorted(segs[b, q].double().tolist())
                s = min(max(s, 0.0), valid / W)
                e = min(max(e, 0.0), valid / W)
                if e <= s:
                    continue  # nothing left of it in the valid part of the window
                # The steps the segment covers, at least the one holding its start.
                steps = range(min(math.floor(s * W), W - 1),
                              max(math.ceil(e * W), min(math.floor(s * W), W - 1) + 1))
                for c in top:
                    d = [1 / (1 + math.exp(-float(dense[b, t, c]))) for t in steps]
                    score = p[c] ** (1 - fusion) * (sum(d) / len(d)) ** fusion
                    rows[vid].append(((start + s * W) * 0.4, (start + e * W) * 0.4, c, score))
        for vid, r in rows.items():
            ref = np.array(r)
            d = flat[vid]
            np.testing.assert_allclose(d.start, ref[:, 0], atol=1e-6)
            np.testing.assert_allclose(d.end, ref[:, 1], atol=1e-6)
            np.testing.assert_array_equal(d.label, ref[:, 2])
            np.testing.assert_allclose(d.score, ref[:, 3], rtol=1e-6)
        assert flat["v2"].end.max() <= 10 * 0.4 + 1e-9  # never past the valid steps
        assert len(flat["v1"]) < 2 * Nq * 2  # some segments fell outside [0, 1] and were dropped
        for d in flat.values():
            assert (d.end > d.start).all()
    with pytest.raises(ValueError, match="dense head"):
        decode_windows(logits, segs, meta, stride, fps, W, dense_fusion=0.5)


@pytest.mark.parametrize("seconds", [(0.8, 1.6), (2.0, 5.0), (5.6, 9.0)])
def test_no_detection_has_zero_length_or_lies_past_the_video(tmp_path, seconds):
    """Videos of 2-4 steps (a window of 16 that is mostly padding), shorter than one window, and
    a little longer (a tail window): an untrained model's queries land all over the window, and
    none may come out as a zero-length detection at the video's end (issue 28)."""
    from detect.config import load_config
    from detect.data.annotations import load_annotations
    from detect.data.windows import WindowDataset

    fs, ann_path = synth_feature_set(tmp_path, videos=4, classes=3, dim=8,
                                     min_duration_s=seconds[0], max_duration_s=seconds[1],
                                     max_instance_s=0.8, split=(1.0, 0.0, 0.0))
    cfg = load_config(None, ["data.window=16", "model.hidden_dim=16", "model.num_queries=12",
                             "model.num_points=4", "model.num_layers=1", "model.num_heads=2",
                             "model.ffn_dim=32", "model.mix_dim=4", "eval.top_k=2",
                             "eval.max_per_video=1000", "train.device=cpu"])
    torch.manual_seed(0)
    ann = load_annotations(ann_path)
    model = build_model(cfg, 8, ann.num_classes, 0, pretrained=False)
    ds = WindowDataset(fs, ann, "train", cfg.data, train=False)
    preds = predict(model, ds, cfg, torch.device("cpu"))
    assert set(preds) == set(ds.video_ids)
    for vid, d in preds.items():
        covered = math.ceil(ann.videos[vid].duration / 0.4) * 0.4  # the steps the video fills
        assert len(d) > 0, vid
        assert (d.end > d.start).all(), (vid, d.segments[d.end <= d.start])
        assert d.start.min() >= 0.0 and d.end.max() <= covered + 1e-9, vid


def _nms_reference(start, end, score, thr):
    order = sorted(range(len(score)), key=lambda i: (-score[i], i))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            inter = max(0.0, min(end[i], end[j]) - max(start[i], start[j]))
            union = (end[i] - start[i]) + (end[j] - start[j]) - inter
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_nms_matches_loop_reference():
    rng = np.random.default_rng(3)
    for _ in range(100):
        n = int(rng.integers(0, 40))
        s = rng.uniform(0, 20, n).round(1)
        e = s + rng.choice([0.0, 0.5, 1.0, 3.0], n)
        sc = rng.choice([0.2, 0.5, 0.8, 0.9], n)  # ties on purpose
        for thr in (0.0, 0.3, 0.5, 0.9):
            assert nms_1d(s, e, sc, thr).tolist() == _nms_reference(s, e, sc, thr)
    s, e, sc = np.array([0.0, 0.0]), np.array([1.0, 1.0]), np.array([0.5, 0.6])
    assert nms_1d(s, e, sc, 1.0).tolist() == [1, 0]  # >= 1 disables NMS


def test_merge_video_per_class_nms_threshold_and_cap():
    parts = [
        Detections([0, 0.1, 5], [2, 2.1, 6], [0, 0, 0], [0.9, 0.8, 0.05]),
        Detections([0, 10], [2, 12], [1, 1], [0.7, 0.6]),  # class 1 overlapping class 0: kept
    ]
    d = merge_video(parts, nms_iou=0.5, score_threshold=0.1, max_per_video=10)
    assert d.label.tolist() == [0, 1, 1] and d.score.tolist() == [0.9, 0.7, 0.6]
    d = merge_video(parts, nms_iou=1.0, score_threshold=0.0, max_per_video=2)
    assert d.score.tolist() == [0.9, 0.8]
    assert len(merge_video([], 0.5, 0.0, 10)) == 0


def _ann():
    rng = np.random.default_rng(5)
    db = {}
    for v in range(3):
        s = np.sort(rng.uniform(0, 50, 6)).round(2)
        lab = rng.integers(0, 3, 6)
        db[f"v{v}"] = {"subset": "val", "duration": 60.0, "fps": 25.0, "annotations": [
            {"label": CLASSES[c], "label_id": int(c), "segment": [float(a), float(a + 3)]}
            for c, a in zip(lab, s, strict=True)]}
    return parse_annotations({"classes": CLASSES, "database": db})


def test_best_threshold_matches_brute_force_sweep():
    ann = _ann()
    rng = np.random.default_rng(7)
    preds = {}
    for vid, v in ann.videos.items():
        n = 15
        gi = rng.integers(0, len(v), n)
        s = v.segments[gi, 0] + rng.normal(0, 1.0, n)
        lab = np.where(rng.random(n) < 0.7, v.labels[gi], rng.integers(0, 3, n))
        preds[vid] = Detections(s, s + 3, lab, rng.choice(np.linspace(0.05, 0.95, 10), n))
    t, f1 = best_threshold(preds, ann, "val", 0.3)
    cands = sorted({float(x) for d in preds.values() for x in d.score})
    sweep = []
    for c in cands:
        kept = {vid: d.take(d.score >= c) for vid, d in preds.items()}
        sweep.append((f1_miga(kept, ann, "val", 0.3)["f1"], c))
    best_f1 = max(f for f, _ in sweep)
    assert f1 == pytest.approx(best_f1)
    # The returned threshold lies inside an optimal interval, so it scores the best F1 itself.
    kept = {vid: d.take(d.score >= t) for vid, d in preds.items()}
    assert f1_miga(kept, ann, "val", 0.3)["f1"] == pytest.approx(best_f1)
    assert 0 < f1 < 1 and t > min(cands)  # a real trade-off, not the trivial end


def test_best_threshold_takes_the_middle_of_a_tied_plateau():
    full = _ann()
    ann = parse_annotations({"classes": CLASSES, "database": {
        "v0": full.to_dict()["database"]["v0"]}})
    vid, v = "v0", ann.videos["v0"]
    # Exact hits of every ground truth at 0.6; a wrong-class extra at 0.2. Every t in (0.2, 0.6]
    # gives the perfect F1, so the threshold is the middle, 0.4.
    n = len(v.segments)
    hits = Detections(v.segments[:, 0], v.segments[:, 1], v.labels, np.full(n, 0.6))
    wrong = Detections(v.segments[:1, 0], v.segments[:1, 1], (v.labels[:1] + 1) % 3, [0.2])
    preds = {vid: Detections.concat([hits, wrong])}
    t, f1 = best_threshold(preds, ann, "val", 0.3)
    assert f1 == pytest.approx(1.0) and t == pytest.approx(0.4)
    assert best_threshold({}, ann, "val") == (0.0, 0.0)


def test_predictions_roundtrip_and_errors(tmp_path):
    preds = {"v2": Detections([1.0, 0.5], [2.0, 0.5], [2, 0], [0.3, 0.9]), "v1": Detections.empty()}
    p = tmp_path / "pred.json"
    save_predictions(p, preds, CLASSES)
    data = json.loads(p.read_text())
    assert data["results"]["v2"][0] == {"segment": [0.5, 0.5], "label": "a", "label_id": 0,
                                        "score": 0.9}
    back = load_predictions(p, classes=CLASSES)
    assert set(back) == {"v1", "v2"} and len(back["v1"]) == 0
    np.testing.assert_array_equal(back["v2"].label, [0, 2])
    np.testing.assert_array_equal(back["v2"].start, [0.5, 1.0])

    def broken(entry, classes=CLASSES):
        d = {"results": {"v1": [{"segment": [0, 1], "label": "a", "label_id": 0, "score": 1.0},
                                entry]}}
        p.write_text(json.dumps(d))
        return lambda: load_predictions(p, classes=classes)

    cases = [
        ({"segment": [2, 1], "label_id": 0, "score": 0.5}, "detection 1: end 1.0 is before"),
        ({"segment": [0, 1], "label_id": 5, "score": 0.5}, "detection 1: label_id 5 out of"),
        ({"segment": [0, 1], "label": "b", "label_id": 0, "score": 0.5}, "label 'b' and"),
        ({"segment": [0, 1], "label_id": 0, "score": float("nan")}, "detection 1, score"),
        ({"segment": [0, 1], "label_id": 0}, "detection 1: key 'score' is missing"),
    ]
    for entry, msg in cases:
        with pytest.raises(PredictionError, match=msg) as info:
            broken(entry)()
        assert str(p) in str(info.value) and "video 'v1'" in str(info.value)
    with pytest.raises(PredictionError, match="labels outside"):
        save_predictions(p, {"v": Detections([0], [1], [3], [0.5])}, CLASSES)


def test_miga_csvs(tmp_path):
    from detect.evaluation.submission import SubmissionError, read_miga_csv, write_miga_csvs

    db = {
        "Sample0036": {"subset": "test", "duration": 10.0, "fps": 30.0, "annotations": []},
        "Sample0037": {"subset": "test", "duration": 5.0, "fps": 25.0, "annotations": []},
        "Sample0001": {"subset": "train", "duration": 5.0, "fps": 25.0, "annotations": []},
    }
    ann = parse_annotations({"classes": CLASSES, "database": db})
    preds = {
        # Inclusive frame ranges: [1.25 s, 2.0 s) at 30 fps -> frames 38 (37.5 rounds half up)
        # to 59; 3.34 s -> 100; 9.99 s -> 300 - 1 = 299, the last frame; end >= start always.
        "Sample0036": Detections([3.34, 1.25, 9.9], [3.5, 2.0, 9.99], [2, 0, 1], [0.9, 0.8, 0.7]),
        "Sample0001": Detections([1.0], [2.0], [0], [0.5]),
    }
    paths = write_miga_csvs(preds, ann, tmp_path / "sub", subset="test")
    assert [p.name for p in paths] == ["Sample0036_prediction.csv", "Sample0037_prediction.csv"]
    assert paths[0].read_text() == "1,38,59\n3,100,104\n2,297,299\n"
    assert read_miga_csv(paths[0]).tolist() == [[1, 38, 59], [3, 100, 104], [2, 297, 299]]
    assert paths[1].read_text() == "" and read_miga_csv(paths[1]).shape == (0, 3)
    one = write_miga_csvs(preds, ann, tmp_path / "b", frame_base=1)
    assert [p.name for p in one] == ["Sample0001_prediction.csv", "Sample0036_prediction.csv"]
    assert read_miga_csv(one[1])[0].tolist() == [1, 39, 60]
    with pytest.raises(SubmissionError, match="Sample0099"):
        write_miga_csvs({"Sample0099": Detections.empty()}, ann, tmp_path / "c")
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,9,5\n")
    with pytest.raises(SubmissionError, match="bad.csv, line 2"):
        read_miga_csv(bad)


def test_miga_csv_of_ground_truth_gives_back_the_label_rows(tmp_path):
    """Labels -> seconds (converters) -> MiGA CSV (submission) is the identity on frames."""
    from detect.data.converters.common import frames_to_seconds
    from detect.evaluation.submission import read_miga_csv, write_miga_csvs

    rows = [(2, 0, 0), (1, 14, 75), (3, 299, 299), (1, 100, 101)]  # 1-based class, inclusive
    segs = [frames_to_seconds(a, b, 29.97) for _, a, b in rows]
    db = {"Sample0040": {"subset": "test", "duration": 300 / 29.97, "fps": 29.97, "annotations": [
        {"label": CLASSES[c - 1], "label_id": c - 1, "segment": list(s)}
        for (c, _, _), s in zip(rows, segs, strict=True)]}}
    ann = parse_annotations({"classes": CLASSES, "database": db})
    v = ann.videos["Sample0040"]
    dets = {"Sample0040": Detections(v.segments[:, 0], v.segments[:, 1], v.labels,
                                     np.ones(len(rows)))}
    (path,) = write_miga_csvs(dets, ann, tmp_path)
    assert sorted(map(tuple, read_miga_csv(path).tolist())) == sorted(rows)
