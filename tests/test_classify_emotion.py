"""Emotion: face boxes from OpenPose keypoints and their crops, the binary metrics against slow
references and hand-computed cases, and the config rules (the end-to-end run is in
tests/test_classify_fusion.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from classify.config import load_classify_config
from classify.data.faces import crop_faces, face_boxes
from classify.metrics import auroc, binary_report
from extract.config import ConfigError


def _keypoints(t: int) -> np.ndarray:
    kp = np.zeros((t, 137, 3))
    return kp


def test_face_box_from_face_points_head_points_or_the_nearest_frame() -> None:
    kp = _keypoints(5)
    # Frame 0: the 70 face points span x 40..60, y 10..40 -> centre (50, 25), side 1.4 * 30.
    xs, ys = np.linspace(40, 60, 70), np.linspace(10, 40, 70)
    kp[0, 25:95] = np.stack([xs, ys, np.full(70, 0.9)], 1)
    # Frame 2: no face points; nose (100, 50), eyes at +-5, ears at +-10 -> spread 20 -> 44;
    # the neck 60 below the nose makes the side 60.
    kp[2, 0] = [100, 50, 0.9]
    kp[2, 15], kp[2, 16] = [95, 48, 0.9], [105, 48, 0.9]
    kp[2, 17], kp[2, 18] = [90, 50, 0.9], [110, 50, 0.9]
    kp[2, 1] = [100, 110, 0.9]
    # Frame 4: four face points only, too few: falls back to nothing, then the nearest frame.
    kp[4, 25:29] = [[1, 1, 0.9]] * 4
    boxes = face_boxes(kp)
    np.testing.assert_allclose(boxes[0], [50, 25, 42])
    head = kp[2, [0, 15, 16, 17, 18], :2].mean(0)
    np.testing.assert_allclose(boxes[2], [*head, 60])
    np.testing.assert_allclose(boxes[1], boxes[0])  # a tie between 0 and 2 goes to the earlier
    np.testing.assert_allclose(boxes[3], boxes[2])
    np.testing.assert_allclose(boxes[4], boxes[2])
    with pytest.raises(ValueError, match="no frame has face or head keypoints"):
        face_boxes(_keypoints(3))


def test_crops_cut_the_box_and_pad_with_zeros() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 200, 240, 3), dtype=np.uint8)
    boxes = np.array([[60.0, 70.0, 112.0], [10.0, 10.0, 112.0]])
    crops = crop_faces(frames, boxes, 112).numpy()
    assert crops.shape == (2, 112, 112, 3)
    np.testing.assert_array_equal(crops[0], frames[0, 14:126, 4:116])  # same size: no resize
    assert (crops[1, :46, :] == 0).all() and (crops[1, :, :46] == 0).all()  # outside the image
    np.testing.assert_array_equal(crops[1, 46:, 46:], frames[1, :66, :66])
    small = crop_faces(frames[:1], np.array([[60.0, 70.0, 56.0]]), 112).numpy()[0]
    assert abs(small.astype(float).mean() - frames[0, 42:98, 32:88].mean()) < 3  # upsampled


def test_auroc_equals_the_pairwise_count_and_hand_cases() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        s = rng.integers(0, 5, n) / 4.0  # many ties
        y = rng.integers(0, 2, n)
        pos, neg = s[y == 1], s[y == 0]
        if len(pos) == 0 or len(neg) == 0:
            assert np.isnan(auroc(s, y))
            continue
        want = np.mean([1.0 if p > q else 0.5 if p == q else 0.0
                        for p, q in itertools.product(pos, neg)])
        assert auroc(s, y) == pytest.approx(want)
    assert auroc(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(0.75)
    r = binary_report(np.array([0.9, 0.6, 0.4, 0.2, 0.7]), np.array([1, 0, 1, 0, 1]))
    # predicted win: 0, 1, 4; tp 2, fp 1, fn 1 -> F1 4/6; correct 0, 3, 4 -> 3/5
    assert r["accuracy"] == pytest.approx(0.6) and r["f1"] == pytest.approx(2 / 3)
    assert r["auroc"] == pytest.approx(5 / 6) and r["videos"] == 5 and r["positives"] == 3


def test_emotion_config_needs_the_context_and_explicit_face_weights() -> None:
    with pytest.raises(ConfigError, match="needs rgb.enabled"):
        load_classify_config(None, ["emotion.enabled=true", "emotion.face_weights=random"])
    with pytest.raises(ConfigError, match="face_weights: a SwinFace checkpoint path"):
        load_classify_config(None, ["rgb.enabled=true", "emotion.enabled=true"])
    cfg = load_classify_config("configs/classify/fusion-small.toml", [])
    assert cfg.emotion.enabled and cfg.emotion.face_weights == "random"
