import json

import numpy as np

from detect.annotations import load_annotations
from detect.metrics import score
from detect.postprocess import Detections
from detect.synth import synth_feature_set
from detect.windows import dense_targets, instances_in_feature_time

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
