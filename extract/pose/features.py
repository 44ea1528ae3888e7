"""Source frames -> the 10 fps grid -> per-step pose features.

Ticks. Source frame i is at i / source_fps seconds. As `extract.decode` samples RGB frames, tick
k (at k / fps) shows the last source frame with time <= k / fps, i.e. frame floor(k * source_fps
/ fps), and there is one tick for every k / fps <= t_last = (N - 1) / source_fps:

    num_ticks = floor((N - 1) * fps / source_fps) + 1

Times are compared as exact fractions (`tick_indices`), so pose step i covers the same 10 fps
frames [i * stride, (i + 1) * stride) as RGB feature step i, and has the same timestamp.

Features per tick, from the common joints (N, J, 3) (x, y pixels, confidence; 0 = missing):
- centre: the neck; where it is missing, the midpoint of the two shoulders; where both are
  missing, the last known centre carried forward (the first known one before it). Neck and
  shoulders rather than the hips: iMiGUE's players sit behind a table that hides their hips.
- scale: the body size, one per video: the median over its ticks of the shoulder width (or,
  where one shoulder is missing, twice the neck-to-shoulder distance), at least 1 pixel. A
  per-video median keeps one bad frame from rescaling that frame.
- position (J, 2): (joint - centre) / scale; 0 where the joint is missing.
- velocity (J, 2): (joint_k - joint_{k-1}) / scale, per 10 fps frame, from the un-centred
  joints so that moving the whole body shows; 0 where the joint is missing at k or k - 1, and at
  the first tick.
- confidence (J,): the source's (Kinect 1 tracked / 0 not, OpenPose's score, BlazePose's
  visibility); 0 where missing.

Per step (`stride` ticks; the last ticks that do not fill a step are dropped, as for RGB): position
and velocity are averaged over the ticks where they exist (0 if none), confidence over all ticks
(so it is also the share of the step in which the joint was seen). Output (T, 5J) float32, joint
major within each block:

    [pos_x(j0), pos_y(j0), ..., pos_y(jJ-1),  vel_x(j0), vel_y(j0), ..., vel_y(jJ-1),
     conf(j0), ..., conf(jJ-1)]

(J = 17 for the common layout, C = 85).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from extract.pose import PoseError
from extract.pose.joints import COMMON_JOINTS

NECK = COMMON_JOINTS.index("neck")
SHOULDERS = (COMMON_JOINTS.index("right_shoulder"), COMMON_JOINTS.index("left_shoulder"))
MIN_SCALE_PX = 1.0
BLOCKS = ("position", "velocity", "confidence")


def _fraction(x: float) -> Fraction:
    # The same rounding of a float rate as extract.decode, so both pick the same frames.
    return Fraction(x).limit_denominator(1_000_000)


def num_ticks(num_source: int, source_fps: float, fps: float) -> int:
    """Ticks at `fps` that `num_source` frames at `source_fps` cover (see the module doc)."""
    if num_source <= 0:
        return 0
    return math.floor((num_source - 1) / _fraction(source_fps) * _fraction(fps)) + 1


def tick_indices(num_source: int, source_fps: float, fps: float = 10.0) -> np.ndarray:
    """(num_ticks,) int64: the source frame shown at each tick k / fps."""
    if not (source_fps > 0 and fps > 0):
        raise ValueError(f"frame rates must be positive, got source {source_fps}, fps {fps}")
    ratio = _fraction(source_fps) / _fraction(fps)
    a, b = ratio.numerator, ratio.denominator
    # Python integers: k * a can exceed int64 for long videos at awkward rates.
    return np.array([k * a // b for k in range(num_ticks(num_source, source_fps, fps))],
                    np.int64)


def feature_names(joints: tuple[str, ...] = COMMON_JOINTS) -> list[str]:
    """The C = 5J channel names, in feature order (`pos_x:head`, ..., `conf:left_ankle`)."""
    pos = [f"pos_{a}:{j}" for j in joints for a in "xy"]
    vel = [f"vel_{a}:{j}" for j in joints for a in "xy"]
    return pos + vel + [f"conf:{j}" for j in joints]


def _fill(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(N, 2) values with the unknown rows carried forward (leading ones: the first known)."""
    idx = np.where(known, np.arange(len(known)), -1)
    idx = np.maximum.accumulate(idx)
    idx[idx < 0] = int(np.argmax(known))
    return values[idx]


def body_centre(points: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """(N, J, 3) -> centre (N, 2) and how many ticks carried it (see the module doc)."""
    present = points[:, :, 2] > 0
    r, lft = SHOULDERS
    both = present[:, r] & present[:, lft]
    centre = np.where(present[:, NECK, None], points[:, NECK, :2],
                      (points[:, r, :2] + points[:, lft, :2]) / 2)
    known = present[:, NECK] | both
    if not known.any():
        raise PoseError(f"{where}: no frame shows the neck or both shoulders; the pose cannot be "
                        "centred")
    return _fill(centre, known), int((~known).sum())


def body_scale(points: np.ndarray, where: str) -> float:
    """(N, J, 3) -> the video's body size in pixels (see the module doc)."""
    present = points[:, :, 2] > 0
    r, lft = SHOULDERS
    xy = points[:, :, :2]
    both = present[:, r] & present[:, lft]
    sizes = [np.linalg.norm(xy[both, r] - xy[both, lft], axis=1)]
    for s, other in ((r, lft), (lft, r)):
        one = present[:, s] & ~present[:, other] & present[:, NECK]
        sizes.append(2 * np.linalg.norm(xy[one, s] - xy[one, NECK], axis=1))
    size = np.concatenate(sizes)
    if size.size == 0:
        raise PoseError(f"{where}: no frame shows both shoulders, or the neck and a shoulder; "
                        "the body size is unknown")
    return max(float(np.median(size)), MIN_SCALE_PX)


@dataclass
class PoseSteps:
    """One video's pose features: (T, 5J) float32 and what was missing."""

    features: np.ndarray
    scale: float
    counts: dict[str, Any] = field(default_factory=dict)


def _step_mean(values: np.ndarray, valid: np.ndarray, steps: int, stride: int) -> np.ndarray:
    """(N, J, D) values averaged over each step's valid ticks -> (T, J, D); 0 where none."""
    n = steps * stride
    v = values[:n].reshape(steps, stride, *values.shape[1:])
    w = valid[:n].reshape(steps, stride, -1, 1).astype(np.float64)
    total = (v * w).sum(axis=1)
    count = w.sum(axis=1)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def step_features(points: np.ndarray, stride: int, where: str) -> PoseSteps:
    """(N, J, 3) common joints at the ticks -> PoseSteps with (N // stride, 5J) features.

    `where` names the source in errors (PoseError: too short, nobody to centre or scale)."""
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or points.shape[1:] != (len(COMMON_JOINTS), 3):
        raise ValueError(f"{where}: points must be (N, {len(COMMON_JOINTS)}, 3), got "
                         f"{points.shape}")
    n, j, _ = points.shape
    steps = n // stride
    if steps == 0:
        raise PoseError(f"{where}: too short for one feature ({n} ticks; a feature needs "
                        f"{stride})")
    present = points[:, :, 2] > 0
    centre, carried = body_centre(points, where)
    scale = body_scale(points, where)
    pos = (points[:, :, :2] - centre[:, None]) / scale
    vel = np.zeros_like(pos)
    vel[1:] = (points[1:, :, :2] - points[:-1, :, :2]) / scale
    moving = np.zeros_like(present)
    moving[1:] = present[1:] & present[:-1]
    conf = np.where(present, points[:, :, 2], 0.0)
    feats = np.concatenate([
        _step_mean(pos, present, steps, stride).reshape(steps, 2 * j),
        _step_mean(vel, moving, steps, stride).reshape(steps, 2 * j),
        conf[:steps * stride].reshape(steps, stride, j).mean(axis=1),
    ], axis=1).astype(np.float32)
    missing = (~present).sum(axis=0)
    counts = {
        "ticks": int(n),
        "steps": int(steps),
        "ticks_without_person": int((~present).all(axis=1).sum()),
        "ticks_centre_carried": carried,
        "missing_joint_ticks": dict(zip(COMMON_JOINTS, map(int, missing), strict=True)),
        "scale_px": round(scale, 4),
    }
    return PoseSteps(features=feats, scale=scale, counts=counts)
