"""Source frames -> the 10 fps grid -> per-step pose features.

Ticks. Source frame i is at i / source_fps seconds. As `extract.decode` samples RGB frames, tick
k (at k / fps) shows the last source frame with time <= k / fps, i.e. frame floor(k * source_fps
/ fps), and there is one tick for every k / fps <= t_last = (N - 1) / source_fps:

    num_ticks = floor((N - 1) * fps / source_fps) + 1

Times are compared as exact fractions (`tick_indices`), so pose step i covers the same 10 fps
frames [i * stride, (i + 1) * stride) as RGB feature step i, and has the same timestamp.

Features per tick, from the common joints (N, J, 3) (x, y pixels, confidence; 0 = missing). Every
tick's features use that tick and earlier ones only (causal), so a stream computes, tick by tick,
exactly what the offline extraction writes (`PoseFeaturizer`), and no later frame changes an
earlier feature:
- centre: the neck; where it is missing, the midpoint of the two shoulders; where both are
  missing, the last known centre carried forward (before the first known one: none). Neck and
  shoulders rather than the hips: iMiGUE's players sit behind a table that hides their hips.
- scale: the body size, the running median over the ticks so far of the shoulder width (or,
  where one shoulder is missing, twice the neck-to-shoulder distance), at least 1 pixel (before
  the first measurable tick: none). A median keeps one bad frame from rescaling that frame; over
  a whole video it settles on the video's body size.
- position (J, 2): (joint - centre) / scale; 0 where the joint, the centre or the scale is
  missing.
- velocity (J, 2): (joint_k - joint_{k-1}) / scale, per 10 fps frame, from the un-centred
  joints so that moving the whole body shows; 0 where the joint is missing at k or k - 1, where
  the scale is, and at the first tick.
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

import bisect
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


def _measure(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, J, 3) -> each tick's centre (n, 2) and body size (n,) where measurable (masks (n,))."""
    present = points[:, :, 2] > 0
    xy = points[:, :, :2]
    r, lft = SHOULDERS
    both = present[:, r] & present[:, lft]
    centre = np.where(present[:, NECK, None], xy[:, NECK], (xy[:, r] + xy[:, lft]) / 2)
    has_centre = present[:, NECK] | both
    size = np.full(len(points), np.nan)
    size[both] = np.linalg.norm(xy[both, r] - xy[both, lft], axis=1)
    for s, other in ((r, lft), (lft, r)):
        one = present[:, s] & ~present[:, other] & present[:, NECK]
        size[one] = 2 * np.linalg.norm(xy[one, s] - xy[one, NECK], axis=1)
    return centre, has_centre, size


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
    w = valid[:n].reshape(steps, stride, valid.shape[1], 1).astype(np.float64)
    total = (v * w).sum(axis=1)
    count = w.sum(axis=1)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


class PoseFeaturizer:
    """Per-step pose features from ticks as they arrive (see the module doc): `push` ticks in
    any batches, get the steps they complete. The state carried between pushes is what the
    features of later ticks need from earlier ones: the last centre, the sizes so far (for the
    running median), the previous tick (for velocity) and the ticks of an unfinished step."""

    def __init__(self, stride: int, joints: int = len(COMMON_JOINTS)) -> None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.stride, self.joints = stride, joints
        self._centre: np.ndarray | None = None
        self._sizes: list[float] = []  # sorted
        self._prev: np.ndarray | None = None  # (J, 3) the previous tick
        # The ticks of the unfinished step: position, its mask, velocity, its mask, confidence.
        self._pending: tuple[np.ndarray, ...] | None = None
        self.ticks = 0
        self.steps = 0
        self.without_person = 0
        self.centre_carried = 0
        self.before_centre = 0
        self.before_scale = 0
        self.missing = np.zeros(joints, np.int64)

    @property
    def scale(self) -> float | None:
        """The running median body size in pixels (None before a tick could measure it)."""
        n = len(self._sizes)
        if n == 0:
            return None
        return max((self._sizes[(n - 1) // 2] + self._sizes[n // 2]) / 2, MIN_SCALE_PX)

    def _centres_and_scales(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each tick's centre (n, 2) and scale (n,), NaN where not known yet; updates the state."""
        centre, has_centre, size = _measure(points)
        centres = np.full((len(points), 2), np.nan)
        scales = np.full(len(points), np.nan)
        for k in range(len(points)):
            if has_centre[k]:
                self._centre = centre[k]
            elif self._centre is not None:
                self.centre_carried += 1
            if self._centre is not None:
                centres[k] = self._centre
            if not np.isnan(size[k]):
                bisect.insort(self._sizes, float(size[k]))
            scale = self.scale
            scales[k] = np.nan if scale is None else scale
        self.before_centre += int(np.isnan(centres[:, 0]).sum())
        self.before_scale += int(np.isnan(scales).sum())
        return centres, scales

    def push(self, points: np.ndarray) -> np.ndarray:
        """(n, J, 3) the next ticks' joints -> (m, 5J) float32 features of the m steps they
        complete (m may be 0)."""
        points = np.asarray(points, np.float64).reshape(-1, self.joints, 3)
        n = len(points)
        if n == 0:
            return np.zeros((0, 5 * self.joints), np.float32)
        present = points[:, :, 2] > 0
        centres, scales = self._centres_and_scales(points)
        known = ~np.isnan(scales)
        safe = np.where(known, scales, 1.0)[:, None, None]
        pos = (points[:, :, :2] - np.nan_to_num(centres)[:, None]) / safe
        pos_ok = present & known[:, None] & ~np.isnan(centres[:, :1])
        before = np.concatenate([self._prev[None] if self._prev is not None
                                 else np.zeros((1, self.joints, 3)), points[:-1]])
        vel = (points[:, :, :2] - before[:, :, :2]) / safe
        vel_ok = present & (before[:, :, 2] > 0) & known[:, None]
        conf = np.where(present, points[:, :, 2], 0.0)
        self._prev = points[-1].copy()
        self.ticks += n
        self.without_person += int((~present).all(axis=1).sum())
        self.missing += (~present).sum(axis=0)
        new = (pos, pos_ok, vel, vel_ok, conf)
        if self._pending is not None:
            new = tuple(np.concatenate([a, b]) for a, b in zip(self._pending, new, strict=True))
        pos, pos_ok, vel, vel_ok, conf = new
        done = len(pos) // self.stride
        self._pending = tuple(a[done * self.stride :] for a in new)
        self.steps += done
        J = self.joints
        return np.concatenate([
            _step_mean(pos, pos_ok, done, self.stride).reshape(done, 2 * J),
            _step_mean(vel, vel_ok, done, self.stride).reshape(done, 2 * J),
            conf[: done * self.stride].reshape(done, self.stride, J).mean(axis=1),
        ], axis=1).astype(np.float32)

    def counts(self, joint_names: tuple[str, ...] = COMMON_JOINTS) -> dict[str, Any]:
        """What was missing so far (the feature set's per-video "pose" record)."""
        scale = self.scale
        return {
            "ticks": self.ticks,
            "steps": self.steps,
            "ticks_without_person": self.without_person,
            "ticks_centre_carried": self.centre_carried,
            "ticks_before_centre": self.before_centre,
            "ticks_before_scale": self.before_scale,
            "missing_joint_ticks": dict(zip(joint_names, map(int, self.missing), strict=True)),
            "scale_px": None if scale is None else round(scale, 4),
        }


def step_features(points: np.ndarray, stride: int, where: str) -> PoseSteps:
    """(N, J, 3) common joints at the ticks -> PoseSteps with (N // stride, 5J) features, the
    features a `PoseFeaturizer` gives tick by tick.

    `where` names the source in errors (PoseError: too short, nobody to centre or scale)."""
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or points.shape[1:] != (len(COMMON_JOINTS), 3):
        raise ValueError(f"{where}: points must be (N, {len(COMMON_JOINTS)}, 3), got "
                         f"{points.shape}")
    n = len(points)
    if n // stride == 0:
        raise PoseError(f"{where}: too short for one feature ({n} ticks; a feature needs "
                        f"{stride})")
    f = PoseFeaturizer(stride)
    feats = f.push(points)
    if f.before_centre == n:
        raise PoseError(f"{where}: no frame shows the neck or both shoulders; the pose cannot be "
                        "centred")
    if f.scale is None:
        raise PoseError(f"{where}: no frame shows both shoulders, or the neck and a shoulder; "
                        "the body size is unknown")
    return PoseSteps(features=feats, scale=f.scale, counts=f.counts())
