"""Pose features are causal (extract.pose.features): pushed tick by tick or in any batches they
equal the offline features, equal a per-tick loop written from the definition, and no later tick
changes an earlier step."""

from __future__ import annotations

import numpy as np
import pytest

from extract.pose import PoseError
from extract.pose.features import PoseFeaturizer, step_features
from extract.pose.joints import COMMON_JOINTS

J = len(COMMON_JOINTS)
NECK = COMMON_JOINTS.index("neck")
R, L = COMMON_JOINTS.index("right_shoulder"), COMMON_JOINTS.index("left_shoulder")


def random_ticks(n: int, seed: int = 0) -> np.ndarray:
    """(n, J, 3) a moving, resizing figure with missing joints, ticks without anyone, and no
    centre or size in the first ticks."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(100, 500, size=(J, 2))
    drift = np.cumsum(rng.normal(0, 3, size=(n, 1, 2)), axis=0)
    xy = base[None] * rng.uniform(0.8, 1.2, size=(n, 1, 1)) + drift
    c = rng.uniform(0.2, 1.0, size=(n, J, 1))
    pts = np.concatenate([xy, c], axis=2)
    pts[rng.random((n, J)) < 0.2] = 0  # missing joints
    pts[rng.random(n) < 0.05] = 0  # nobody
    pts[:3, [NECK, R, L]] = 0  # neither centre nor size at first
    return pts


def reference(points: np.ndarray, stride: int) -> np.ndarray:
    """The definition (module doc), tick by tick in plain Python."""
    centre, sizes, feats, prev = None, [], [], None
    ticks = []
    for p in points:
        present = p[:, 2] > 0
        if present[NECK]:
            centre = p[NECK, :2]
        elif present[R] and present[L]:
            centre = (p[R, :2] + p[L, :2]) / 2
        if present[R] and present[L]:
            sizes.append(float(np.linalg.norm(p[R, :2] - p[L, :2])))
        elif present[NECK] and (present[R] or present[L]):
            s = R if present[R] else L
            sizes.append(2 * float(np.linalg.norm(p[s, :2] - p[NECK, :2])))
        scale = max(float(np.median(sizes)), 1.0) if sizes else None
        pos, pos_ok = np.zeros((J, 2)), np.zeros(J, bool)
        vel, vel_ok = np.zeros((J, 2)), np.zeros(J, bool)
        for j in range(J):
            if present[j] and scale is not None and centre is not None:
                pos[j], pos_ok[j] = (p[j, :2] - centre) / scale, True
            if present[j] and prev is not None and prev[j, 2] > 0 and scale is not None:
                vel[j], vel_ok[j] = (p[j, :2] - prev[j, :2]) / scale, True
        ticks.append((pos, pos_ok, vel, vel_ok, np.where(present, p[:, 2], 0.0)))
        prev = p
    for i in range(len(points) // stride):
        chunk = ticks[i * stride : (i + 1) * stride]
        row = []
        for v, ok in ((0, 1), (2, 3)):
            for j in range(J):
                vals = [t[v][j] for t in chunk if t[ok][j]]
                row.extend(np.mean(vals, axis=0) if vals else [0.0, 0.0])
        row.extend(np.mean([t[4] for t in chunk], axis=0))
        feats.append(row)
    return np.array(feats, np.float32).reshape(-1, 5 * J)


def test_features_equal_the_definition_and_any_batching():
    pts = random_ticks(61)
    want = reference(pts, 4)
    offline = step_features(pts, 4, "test")
    np.testing.assert_allclose(offline.features, want, rtol=1e-5, atol=1e-6)
    assert offline.features.shape == (15, 5 * J)
    assert offline.counts["ticks_before_centre"] == 3
    assert offline.counts["ticks_before_scale"] == 3
    # the first step: its first 3 ticks have neither centre nor scale, so only tick 3 counts
    rng = np.random.default_rng(1)
    for _ in range(3):
        f = PoseFeaturizer(4)
        cuts = np.sort(rng.choice(np.arange(1, 61), size=8, replace=False))
        got = np.concatenate([f.push(b) for b in np.split(pts, cuts)])
        np.testing.assert_array_equal(got, offline.features)
        assert f.counts() == offline.counts


def test_later_ticks_never_change_earlier_steps():
    pts = random_ticks(60, seed=2)
    before = step_features(pts, 4, "test").features
    changed = pts.copy()
    changed[40:, :, :2] *= 3.0  # the figure grows 3x from tick 40 (step 10) on
    changed[41:, NECK] = 0
    after = step_features(changed, 4, "test").features
    np.testing.assert_array_equal(after[:10], before[:10])
    assert not np.array_equal(after[10:], before[10:])


def test_a_video_nobody_can_centre_or_scale_is_an_error():
    pts = random_ticks(12)
    nobody = pts.copy()
    nobody[:, [NECK, R, L]] = 0
    with pytest.raises(PoseError, match="cannot be centred"):
        step_features(nobody, 4, "clip.csv")
    no_size = pts.copy()
    no_size[:, [R, L]] = 0
    with pytest.raises(PoseError, match="body size is unknown"):
        step_features(no_size, 4, "clip.csv")
    with pytest.raises(PoseError, match="too short"):
        step_features(pts[:3], 4, "clip.csv")


class MovingFakePose:
    """A pose estimator whose figure moves and grows a little every frame (no mediapipe)."""

    weights = "fake-blazepose"
    weights_sha256 = "0" * 64

    def settings(self):
        return {"fake": "moving"}

    def tracker(self):
        from contextlib import contextmanager

        @contextmanager
        def track():
            frame = [0]

            def fn(image):
                k = frame[0]
                frame[0] += 1
                lm = np.zeros((33, 4), np.float32)
                lm[:, :2] = 0.5 + 0.01 * np.sin(np.arange(33) + k)[:, None]
                lm[:, 3] = 0.9
                lm[11, :2], lm[12, :2] = (0.6 + 0.002 * k, 0.4), (0.4, 0.4)  # the shoulders
                return None if k == 3 else lm  # nobody at frame 3

            yield fn

        return track()


def test_the_streamed_blazepose_feed_equals_the_offline_extraction(tmp_path):
    """`detect stream`'s BlazePose feed (frames decoded beside stage one, causal features step
    by step) gives the steps `extract pose` writes for the same video."""
    from detect.apps.pose_feed import PoseFeed, _blazepose_ticks
    from extract.cache import FeatureSet
    from extract.pose.joints import BLAZEPOSE
    from extract.pose.run import VideoSource, run_pose_extraction
    from tests.videos import write_noise_video

    (tmp_path / "v").mkdir()
    video = write_noise_video(tmp_path / "v" / "clip.mp4", 3.0, fps=25)
    s = run_pose_extraction(VideoSource([video], MovingFakePose()), tmp_path / "out",
                            progress=False)
    want = FeatureSet.open(s.featureset).load("clip").features
    feed = PoseFeed(1, "k", "blazepose-33-full",
                    _blazepose_ticks(video, 10.0, MovingFakePose(), BLAZEPOSE), 4)
    got = np.concatenate([feed.take(2), feed.take(1), feed.take(len(want) - 3)])
    feed.close()
    np.testing.assert_array_equal(got, want)
    assert feed.padded_ticks == 0 and len(np.unique(want[:, 0])) > 3  # it moves
    # past the source's end: nobody (confidence 0), counted
    extra = feed.take(2)
    assert (extra[:, 4 * J :] == 0).all() and feed.padded_ticks == 8
