import numpy as np
import pytest
import torch

from detect.config import DataConfig
from detect.data.annotations import parse_annotations
from detect.data.windows import (
    WindowDataset,
    collate_windows,
    dense_targets,
    instances_in_feature_time,
    plan_windows,
)
from extract.cache import FeatureMeta, FeatureSet, feature_timestamps, write_video

STEP_S = 0.4  # stride 4 at 10 fps


def _feature_set(tmp_path, steps: dict[str, int], dim: int = 3, res4: bool = False) -> FeatureSet:
    fs = FeatureSet.create(tmp_path / "feats", "t", {"fps": 10.0, "stride": 4})
    for vid, n in steps.items():
        # Row t holds t in every channel, so a window's rows name the steps they came from.
        feats = np.repeat(np.arange(n, dtype=np.float32)[:, None], dim, axis=1)
        meta = FeatureMeta(
            video_id=vid, fps=10.0, stride=4, source_path=f"{vid}.mp4", source_fps=30.0,
            duration=n * STEP_S, num_frames=n * 4, model="synthetic", weights="none",
            weights_sha256="", layers=["x"], mgdet_version="0",
        )
        write_video(
            fs.video_path(vid), feats, feature_timestamps(n, 4, 10.0), meta,
            res4=-feats[:, :2] if res4 else None, dtype="float32",
        )
    return fs


def _ann(videos: dict[str, list[tuple[int, float, float]]], subset="test", classes=3):
    """videos: id -> [(label, start_step, end_step)] in feature steps (converted to seconds)."""
    names = [f"c{i}" for i in range(classes)]
    db = {
        vid: {
            "subset": subset, "duration": 100.0, "fps": 30.0,
            "annotations": [
                {"label": names[c], "label_id": c, "segment": [a * STEP_S, b * STEP_S]}
                for c, a, b in items
            ],
        }
        for vid, items in videos.items()
    }
    return parse_annotations({"classes": names, "database": db})


def test_plan_windows_cases():
    assert plan_windows(5, 8, 0.0) == [0]  # shorter than W: one padded window
    assert plan_windows(8, 8, 0.75) == [0]
    assert plan_windows(16, 8, 0.0) == [0, 8]  # exact multiple: the tail equals the last one
    assert plan_windows(19, 8, 0.0) == [0, 8, 11]
    assert plan_windows(19, 8, 0.0, tail=False) == [0, 8]
    assert plan_windows(16, 8, 0.75) == [0, 2, 4, 6, 8]
    assert plan_windows(300, 128, 0.75) == [0, 32, 64, 96, 128, 160, 172]
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(10, 8, 1.0)


def test_plan_windows_cover_every_step():
    for n in range(1, 60):
        for overlap in (0.0, 0.5, 0.75):
            starts = plan_windows(n, 8, overlap)
            covered = np.zeros(n, bool)
            for s in starts:
                assert 0 <= s and (s + 8 <= n or (s == 0 and n < 8))
                covered[s : s + 8] = True
            assert covered.all() and len(set(starts)) == len(starts)


def _dense_reference(ft, labels, start, window, num_steps, num_classes):
    out = np.zeros((window, num_classes), np.float32)
    for (a, b), c in zip(ft, labels, strict=True):
        for j in range(window):
            t = start + j
            if t >= num_steps:
                continue
            if a == b:
                hit = t <= a < t + 1 or (a == num_steps and t == num_steps - 1)
            else:
                hit = min(b, t + 1) - max(a, t) > 0
            if hit:
                out[j, c] = 1.0
    return out


def test_dense_targets_match_loop_reference():
    rng = np.random.default_rng(0)
    for _ in range(200):
        num_steps = int(rng.integers(1, 30))
        n = int(rng.integers(0, 6))
        a = rng.uniform(0, num_steps, n)
        a = np.where(rng.random(n) < 0.3, np.floor(a), a)  # exact step boundaries too
        b = np.minimum(a + rng.choice([0.0, 0.3, 1.0, 2.5, 7.0], n), num_steps)
        ft = np.stack([a, b], 1)
        labels = rng.integers(0, 3, n)
        start = int(rng.integers(0, num_steps))
        got = dense_targets(ft, labels, start, 8, num_steps, 3)
        np.testing.assert_array_equal(got, _dense_reference(ft, labels, start, 8, num_steps, 3))
    # Zero-length instance exactly at the video end marks the last real step.
    end = dense_targets(np.array([[5.0, 5.0]]), np.array([1]), 0, 8, 5, 3)
    assert end[4, 1] == 1 and end.sum() == 1


def test_instances_clipped_to_feature_extent():
    seg = np.array([[0.0, 2.0], [3.8, 4.4], [4.4, 5.0], [4.0, 4.0]])  # seconds; 10 steps = 4.0 s
    ft, labels = instances_in_feature_time(seg, np.arange(4), 10, 4, 10.0)
    np.testing.assert_allclose(ft, [[0, 5], [9.5, 10], [10, 10]])
    np.testing.assert_array_equal(labels, [0, 1, 3])


def test_eval_windows_targets_and_padding(tmp_path):
    fs = _feature_set(tmp_path, {"short": 5, "exact": 16, "empty": 11})
    ann = _ann(
        {
            "short": [(0, 1, 3)],
            "exact": [
                (1, 6, 10),  # crosses the border between windows 0 and 8
                (2, 14, 16),  # at the very end
                (0, 3.5, 3.5),  # zero length
                (1, 2, 5),  # overlaps the next one
                (2, 4, 6),
            ],
            "empty": [],
        }
    )
    ds = WindowDataset(fs, ann, "test", DataConfig(window=8), train=False)
    metas = [ds[i]["meta"] for i in range(len(ds))]
    assert metas == [("empty", 0, 8), ("empty", 3, 8), ("exact", 0, 8), ("exact", 8, 8),
                     ("short", 0, 5)]
    short = ds[4]
    np.testing.assert_array_equal(short["features"][:, 0], [0, 1, 2, 3, 4, 4, 4, 4])
    np.testing.assert_allclose(short["segments"], [[1 / 8, 3 / 8]])
    assert short["dense"][:, 0].tolist() == [0, 1, 1, 0, 0, 0, 0, 0]

    w0, w8 = ds[2], ds[3]
    np.testing.assert_array_equal(w8["features"][:, 0], np.arange(8, 16))
    assert w0["labels"].tolist() == [0, 1, 2] and w0["labels"].dtype == torch.int64
    np.testing.assert_allclose(w0["segments"], [[3.5 / 8, 3.5 / 8], [2 / 8, 5 / 8], [4 / 8, 6 / 8]])
    assert w8["labels"].tolist() == [2]
    np.testing.assert_allclose(w8["segments"], [[6 / 8, 1.0]])
    # The crossing instance is in no window's set targets, but marks its steps in both.
    assert w0["dense"][:, 1].tolist() == [0, 0, 1, 1, 1, 0, 1, 1]
    assert w8["dense"][:, 1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert w0["dense"][3, 0] == 1 and w0["dense"][:, 0].sum() == 1
    assert w8["dense"][6:, 2].tolist() == [1, 1]
    # Window time maps back to the annotation's seconds: (s + u*W) * stride / fps.
    u = w8["segments"][0].double().numpy()
    np.testing.assert_allclose((8 + u * 8) * 4 / 10.0, [14 * STEP_S, 16 * STEP_S])
    assert ds[0]["labels"].numel() == 0 and ds[0]["dense"].sum() == 0

    # eval_overlap: half-overlapping windows, the crossing instance is whole in the middle one.
    half = WindowDataset(fs, ann, "test", DataConfig(window=8, eval_overlap=0.5), train=False)
    metas = [half[i]["meta"] for i in range(len(half))]
    assert metas == [("empty", 0, 8), ("empty", 3, 8), ("exact", 0, 8), ("exact", 4, 8),
                     ("exact", 8, 8), ("short", 0, 5)]
    assert 1 in half[3]["labels"].tolist()
    np.testing.assert_allclose(half[3]["segments"][half[3]["labels"] == 1], [[2 / 8, 6 / 8]])


def test_train_windows_keep_complete_instances(tmp_path):
    fs = _feature_set(tmp_path, {"a": 40, "b": 20})
    ann = _ann({"a": [(0, 9.5, 12), (1, 30, 37)], "b": []}, subset="train")
    cfg = DataConfig(window=8, train_overlap=0.75)
    ds = WindowDataset(fs, ann, "train", cfg, train=True)
    starts = [m[1] for m in (ds[i]["meta"] for i in range(len(ds)))]
    ref = [s for s in plan_windows(40, 8, 0.75) if (s <= 9.5 and 12 <= s + 8) or
           (s <= 30 and 37 <= s + 8)]
    assert starts == ref == [4, 6, 8, 30]
    assert all(m[0] == "a" for m in (ds[i]["meta"] for i in range(len(ds))))
    bg = WindowDataset(fs, ann, "train", DataConfig(window=8, keep_background=True), train=True)
    assert len(bg) == len(plan_windows(40, 8, 0.75)) + len(plan_windows(20, 8, 0.75))
    with pytest.raises(ValueError, match="no window holds a complete instance"):
        WindowDataset(fs, _ann({"b": []}, subset="train"), "train", cfg, train=True)


def test_train_jitter_shifts_windows_per_epoch_deterministically(tmp_path):
    fs = _feature_set(tmp_path, {"a": 40})
    ann = _ann({"a": [(0, 9.5, 12), (1, 30, 37), (2, 20, 22)]}, subset="train")
    cfg = DataConfig(window=8, train_overlap=0.5, train_jitter=True)  # hop 4: shifts of -2..2
    ds = WindowDataset(fs, ann, "train", cfg, train=True, seed=3)
    planned = [w.start for w in ds.items]
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        items = [ds[i] for i in range(len(ds))]
        for it, p in zip(items, planned, strict=True):
            vid, start, valid = it["meta"]
            assert abs(start - p) <= 2 and 0 <= start <= 40 - 8 and valid == 8
            # Rows name their steps: the features, targets and dense labels follow the shift.
            assert it["features"][:, 0].tolist() == list(range(start, start + 8))
            want = [(c, a, b) for c, a, b in [(0, 9.5, 12), (1, 30, 37), (2, 20, 22)]
                    if a >= start and b <= start + 8]
            assert it["labels"].tolist() == [c for c, _, _ in want]
            np.testing.assert_allclose(it["segments"].numpy(),
                                       np.array([[(a - start) / 8, (b - start) / 8]
                                                 for _, a, b in want]).reshape(-1, 2), atol=1e-6)
            seen.add((p, start))
        again = WindowDataset(fs, ann, "train", cfg, train=True, seed=3)
        again.set_epoch(epoch)
        assert [again[i]["meta"] for i in range(len(ds))] == [it["meta"] for it in items]
    assert len(seen) > len(planned) * 2  # windows really move from epoch to epoch
    # Off by default, and never at evaluation.
    fixed = WindowDataset(fs, ann, "train", DataConfig(window=8, train_overlap=0.5), train=True)
    fixed.set_epoch(5)
    assert [fixed[i]["meta"][1] for i in range(len(fixed))] == planned
    ev = WindowDataset(fs, ann, "train", cfg, train=False)
    ev.set_epoch(5)
    assert [ev[i]["meta"][1] for i in range(len(ev))] == plan_windows(40, 8, 0.0)


def test_collate_and_views(tmp_path):
    fs = _feature_set(tmp_path, {"a": 20, "b": 3}, dim=5, res4=True)
    ann = _ann({"a": [(1, 2, 4)], "b": [(0, 0, 1)]})
    ds = WindowDataset(fs, ann, "test", DataConfig(window=8, use_res4=True), train=False)
    item = ds[0]
    # Unpadded windows are views into the video's array: no copy per window.
    assert np.shares_memory(item["features"].numpy(), ds.videos[0].features)
    batch = collate_windows([ds[i] for i in range(len(ds))])
    assert batch["features"].shape == (len(ds), 8, 5) and batch["features"].dtype == torch.float32
    assert batch["res4"].shape == (len(ds), 8, 2)
    assert batch["dense"].shape == (len(ds), 8, 3)
    assert [t["segments"].shape for t in batch["targets"]] == [(1, 2), (0, 2), (0, 2), (1, 2)]
    assert batch["meta"][-1] == ("b", 0, 3)


def test_config_mismatch_errors(tmp_path):
    fs = _feature_set(tmp_path, {"a": 20})
    ann = _ann({"a": [(0, 1, 2)]})
    with pytest.raises(ValueError, match="stride 4; the config expects fps 10.0, stride 2"):
        WindowDataset(fs, ann, "test", DataConfig(window=8, stride=2), train=False)
    with pytest.raises(ValueError, match="feature_key"):
        WindowDataset(fs, ann, "test", DataConfig(window=8, feature_key="other"), train=False)
    with pytest.raises(ValueError, match="no videos in subset 'train'"):
        WindowDataset(fs, ann, "train", DataConfig(window=8), train=True)
