"""A synthetic micro-gesture video set: a drawn figure that idles and now and then gestures.

Each video shows a frontal standing figure (head, torso, upper arms, forearms, hands, thighs,
shins) drawn with anti-aliased thick lines and discs on a still, slightly textured background. The
figure idles with small motions (breathing, sway, hand drift, well under a pixel to about a pixel)
and performs gestures: joint trajectories with a smooth onset, a hold with a class-specific
repetition (rubbing, scratching, tapping, swinging) and a smooth offset. Classes differ by *which
body parts move where and how*, never by colour, so a detector must see motion.

Timelines are realistic in the ways that matter to a detector (see the SMG statistics note):
durations 0.5-6 s (median about 1.6 s), bursts (half the gaps under a second), heavy class
imbalance (weights are the square roots of SMG's class counts), and about one gesture in ten
overlapped by a gesture of other body parts (e.g. moving legs while touching the face).

The output is the SMG layout (`detect.datasets.smg`), frames 0-based, classes 1..K in the files::

    OUT/SampleXXXX/SampleXXXX_color.mp4        H.264 yuv420p
    OUT/SampleXXXX/SampleXXXX_finelabels.csv   class,start_frame,end_frame (inclusive)
    OUT/SampleXXXX/SampleXXXX_data.csv         header numFrames,fps,maxDepth, then one row
    OUT/SampleXXXX/SampleXXXX_skeleton.csv     SMG's Kinect v2 format, exact (`kinect_skeleton`)
    OUT/classes.txt                            the K class names, one a line
    OUT/annotations.json                       canonical annotations with the split used
    OUT/render.json                            the settings (a re-run must use the same)

The skeleton is in SMG's real format (see `kinect_skeleton`): a row per frame, no header, Kinect
v2's 25 joints (`KINECT_JOINTS`) with 11 numbers each; its image x, y are the drawn figure's
joints exactly, so pose and fusion can run end to end on a rendered set.

Rendering is deterministic for a seed and resumable: a sample whose video exists is skipped (the
video is written under a temporary name and renamed last).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from detect.data.converters.common import (
    Instance,
    VideoRecord,
    build_annotations,
    frames_to_seconds,
    write_annotations,
)
from extract.io import atomic_write_bytes, atomic_write_json
from extract.progress import ProgressBar
from extract.progress import progress as progress_bar

# Body model, in units of 1/120 of the frame height, origin at the pelvis, y down; "_R" is the
# figure's right, on the image's left. Joints in UPPER move with the torso's sway and lean; knees
# and feet stay planted.
REST: dict[str, tuple[float, float]] = {
    "head": (0.0, -45.0),
    "neck": (0.0, -34.0),
    "shoulder_R": (-13.0, -32.0),
    "elbow_R": (-16.0, -15.0),
    "hand_R": (-17.0, 0.0),
    "hip_R": (-7.0, 2.0),
    "knee_R": (-8.0, 26.0),
    "foot_R": (-9.0, 50.0),
}
for _name, (_x, _y) in list(REST.items()):
    if _name.endswith("_R"):
        REST[_name[:-1] + "L"] = (-_x, _y)
JOINTS: tuple[str, ...] = tuple(sorted(REST))
UPPER = {j for j in JOINTS if not j.startswith(("knee", "foot"))}
PELVIS_Y = 62.0  # units from the top of the frame

# SMG's `_skeleton.csv`: Kinect v2's 25 joints in its order, 11 numbers each per frame (world x,
# y, z in metres; orientation quaternion w, x, y, z; colour-image x, y in pixels; two unused).
KINECT_JOINTS: tuple[str, ...] = (
    "SpineBase", "SpineMid", "Neck", "Head",
    "ShoulderLeft", "ElbowLeft", "WristLeft", "HandLeft",
    "ShoulderRight", "ElbowRight", "WristRight", "HandRight",
    "HipLeft", "KneeLeft", "AnkleLeft", "FootLeft",
    "HipRight", "KneeRight", "AnkleRight", "FootRight",
    "SpineShoulder", "HandTipLeft", "ThumbLeft", "HandTipRight", "ThumbRight",
)  # fmt: skip
KINECT_VALUES = 11  # numbers per joint in a skeleton row
KINECT_WORLD, KINECT_ORIENTATION, KINECT_IMAGE = slice(0, 3), slice(3, 7), slice(7, 9)
_K = {name: i for i, name in enumerate(KINECT_JOINTS)}
# Figure joints that are Kinect joints exactly (same pixel). Kinect's Left/Right are the person's
# own, like the figure's "_L"/"_R". The other Kinect joints are derived (`kinect_pixels`).
FIGURE_TO_KINECT: dict[str, int] = {"head": _K["Head"], "neck": _K["Neck"]}
for _side, _kside in (("L", "Left"), ("R", "Right")):
    for _part, _kpart in (("shoulder", "Shoulder"), ("elbow", "Elbow"), ("hand", "Hand"),
                          ("hip", "Hip"), ("knee", "Knee"), ("foot", "Foot")):
        FIGURE_TO_KINECT[f"{_part}_{_side}"] = _K[_kpart + _kside]
# Where the derived joints that the figure lacks sit (body units from a figure joint, along its
# limb), so that Kinect's hand-tip, thumb and ankle bones keep a length and the limb's direction.
# The wrist is the hand point, where the drawn forearm ends.
SPINE_SHOULDER_BELOW_NECK = 2.0  # along the spine, about where the shoulder line crosses it
HAND_TIP_BEYOND_HAND = 3.0  # along the forearm: the edge of the drawn hand disc
THUMB_BEYOND_HAND = 1.5
ANKLE_ABOVE_FOOT = 2.0  # up the shin
# The pinhole camera behind the world coordinates: the figure stands CAMERA_DEPTH_M from it and
# the focal length is FOCAL_HEIGHTS frame heights, so a body unit is 1/60 m and the figure about
# 1.75 m tall. The principal point is the frame's centre.
CAMERA_DEPTH_M = 2.5
FOCAL_HEIGHTS = 1.25
MAX_DEPTH_MM = 4500  # `_data.csv`'s maxDepth: Kinect v2's depth range


@dataclass(frozen=True)
class Osc:
    """A repetition added to a joint during the hold: (ax sin(wt + px), ay sin(wt + py)) units."""

    ax: float
    ay: float
    hz: float
    px: float = 0.0
    py: float = 0.0


@dataclass(frozen=True)
class Gesture:
    """Targets (body units, written for the right side; mirrored for the left) and repetitions."""

    name: str
    targets: dict[str, tuple[float, float]]
    osc: dict[str, Osc] = field(default_factory=dict)


_CIRCLE = math.pi / 2
# Ordered from most to least frequent; weights are sqrt(SMG class counts) of the imitated classes.
GESTURES: tuple[Gesture, ...] = (
    Gesture(
        "moving legs",
        {"knee_R": (-9.0, 24.0), "foot_R": (-11.0, 47.0)},
        {"foot_R": Osc(3.0, 2.5, 2.0, 0.0, _CIRCLE), "knee_R": Osc(1.5, 1.0, 2.0, 0.0, _CIRCLE)},
    ),
    Gesture(
        "arms akimbo",
        {
            "hand_R": (-11.0, -2.0),
            "elbow_R": (-25.0, -16.0),
            "hand_L": (11.0, -2.0),
            "elbow_L": (25.0, -16.0),
        },
    ),
    Gesture(
        "rubbing hands",
        {
            "hand_R": (-2.0, -9.0),
            "elbow_R": (-16.0, -15.0),
            "hand_L": (2.0, -9.0),
            "elbow_L": (16.0, -15.0),
        },
        {"hand_R": Osc(0.5, 2.5, 3.0), "hand_L": Osc(0.5, 2.5, 3.0, math.pi, math.pi)},
    ),
    Gesture(
        "touching face",
        {"hand_R": (-4.0, -39.0), "elbow_R": (-11.0, -19.0)},
        {"hand_R": Osc(1.0, 1.0, 1.5)},
    ),
    Gesture(
        "folding arms",
        {
            "hand_R": (9.0, -20.0),
            "elbow_R": (-15.0, -18.0),
            "hand_L": (-9.0, -17.0),
            "elbow_L": (15.0, -19.0),
        },
    ),
    Gesture(
        "holding arms",
        {"hand_R": (12.0, -23.0), "elbow_R": (-8.0, -16.0)},
        {"hand_R": Osc(0.0, 1.0, 1.0)},
    ),
    Gesture(
        "playing with hair",
        {"hand_R": (-8.0, -53.0), "elbow_R": (-23.0, -41.0)},
        {"hand_R": Osc(2.0, 2.0, 2.0, 0.0, _CIRCLE)},
    ),
    Gesture(
        "rubbing eyes",
        {"hand_R": (-3.0, -46.0), "elbow_R": (-12.0, -24.0)},
        {"hand_R": Osc(2.0, 0.5, 3.0)},
    ),
    Gesture(
        "illustrative hand gestures",
        {
            "hand_R": (-10.0, -16.0),
            "elbow_R": (-21.0, -17.0),
            "hand_L": (10.0, -16.0),
            "elbow_L": (21.0, -17.0),
        },
        {
            "hand_R": Osc(5.0, 5.0, 1.0, 0.0, _CIRCLE),
            "hand_L": Osc(5.0, 5.0, 1.0, 2.0, 2.0 + _CIRCLE),
            "elbow_R": Osc(2.0, 2.0, 1.0, 0.0, _CIRCLE),
            "elbow_L": Osc(2.0, 2.0, 1.0, 2.0, 2.0),
        },
    ),
    Gesture(
        "turtling neck",
        {
            "shoulder_R": (-13.0, -36.0),
            "shoulder_L": (13.0, -36.0),
            "neck": (0.0, -32.0),
            "head": (0.0, -41.0),
        },
    ),
    Gesture(
        "scratching neck",
        {"hand_R": (-4.0, -35.0), "elbow_R": (-17.0, -21.0)},
        {"hand_R": Osc(0.5, 1.5, 4.0)},
    ),
    Gesture(
        "crossing legs",
        {"knee_R": (-2.0, 26.0), "foot_R": (7.0, 49.0)},
    ),
)
CLASS_WEIGHTS = np.sqrt([1104, 880, 255, 190, 182, 64, 60, 48, 44, 43, 23, 16])
MAX_CLASSES = len(GESTURES)


def class_names(classes: int) -> list[str]:
    """Names of the first `classes` synthetic gestures (class id k+1 in the label files)."""
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must be 1..{MAX_CLASSES}, got {classes}")
    return [g.name for g in GESTURES[:classes]]


def _mirror(joint: str) -> str:
    return (
        joint[:-1] + ("L" if joint.endswith("_R") else "R") if joint[-2:] in ("_R", "_L") else joint
    )


def _group(joint: str) -> str:
    """Body parts that one gesture at a time may drive."""
    if joint.startswith(("hand", "elbow")):
        return "arm" + joint[-2:]
    if joint.startswith(("knee", "foot")):
        return "legs"
    return "head"


def gesture_joints(label: int, side: int) -> dict[str, tuple[tuple[float, float], Osc | None]]:
    """Joint -> (target, repetition) of gesture `label` done with side -1 (right) or +1 (left)."""
    g = GESTURES[label]
    out: dict[str, tuple[tuple[float, float], Osc | None]] = {}
    for j, (x, y) in g.targets.items():
        osc = g.osc.get(j)
        if side > 0:
            out[_mirror(j)] = ((-x, y), None if osc is None else replace(osc, ax=-osc.ax))
        else:
            out[j] = ((x, y), osc)
    return out


def joint_groups(label: int, side: int) -> set[str]:
    return {_group(j) for j in gesture_joints(label, side)}


@dataclass
class PlannedGesture:
    """One gesture of a timeline: 0-based class, side, inclusive frames and its variation."""

    label: int
    side: int  # -1: the figure's right hand/leg, +1: left (mirrored)
    start: int
    end: int
    speed: float = 1.0  # scales the repetition frequency
    amp: float = 1.0  # scales the repetition amplitude
    phase: float = 0.0
    offset: tuple[float, float] = (0.0, 0.0)  # added to every target, units


MIN_GAP_S = 0.15  # between two gestures of the same body part


def plan_timeline(
    num_frames: int, fps: float, classes: int, rng: np.random.Generator
) -> list[PlannedGesture]:
    """A random gesture timeline, sorted by start: bursts, imbalance, occasional overlaps."""
    weights = CLASS_WEIGHTS[:classes] / CLASS_WEIGHTS[:classes].sum()
    total = num_frames / fps
    free_at: dict[str, float] = {}
    out: list[PlannedGesture] = []

    def duration() -> float:
        return float(np.clip(np.exp(rng.normal(math.log(1.6), 0.55)), 0.5, 6.0))

    def add(label: int, side: int, t: float, dur: float) -> None:
        start = int(round(t * fps))
        n = max(2, int(round(dur * fps)))
        out.append(
            PlannedGesture(
                label, side, start, start + n - 1,
                speed=float(rng.uniform(0.8, 1.25)), amp=float(rng.uniform(0.8, 1.2)),
                phase=float(rng.uniform(0, 2 * math.pi)),
                offset=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))),
            )
        )  # fmt: skip
        for g in joint_groups(label, side):
            free_at[g] = (start + n) / fps + MIN_GAP_S

    t = float(rng.uniform(0.3, 2.0))
    while True:
        label = int(rng.choice(classes, p=weights))
        side = int(rng.choice((-1, 1)))
        dur = duration()
        t = max([t] + [free_at.get(g, 0.0) for g in joint_groups(label, side)])
        if t + dur > total - 0.2:
            break
        add(label, side, t, dur)
        if rng.random() < 0.1:
            # Another body part joins in while this gesture runs.
            t2 = t + float(rng.uniform(0.1, 0.7)) * dur
            options = [
                (lab, sd)
                for lab in range(classes)
                for sd in (-1, 1)
                if all(free_at.get(g, 0.0) <= t2 for g in joint_groups(lab, sd))
            ]
            dur2 = duration()
            if options and t2 + dur2 <= total - 0.2:
                lab, sd = options[int(rng.integers(len(options)))]
                add(lab, sd, t2, dur2)
        gap = rng.uniform(0.05, 1.0) if rng.random() < 0.5 else rng.uniform(1.5, 10.0)
        t += dur + float(gap)
    return sorted(out, key=lambda p: (p.start, p.end))


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, amp: float) -> np.ndarray:
    """A slow, smooth wobble of about `amp` (sum of three random low-frequency sines), (T,)."""
    out = np.zeros_like(t)
    for _ in range(3):
        out += np.sin(2 * math.pi * rng.uniform(0.05, 0.35) * t + rng.uniform(0, 2 * math.pi))
    return out * (amp / 3)


def envelope(n: int, fps: float) -> np.ndarray:
    """Onset, hold and offset of an n-frame gesture, (n,), > 0 on every frame, 1 in the hold."""
    tau = (np.arange(n) + 0.5) / fps
    dur = n / fps
    ramp = float(np.clip(0.25 * dur, 0.12, 0.5))
    x = np.clip(np.minimum(tau, dur - tau) / ramp, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def pose_track(
    num_frames: int,
    fps: float,
    plan: Sequence[PlannedGesture],
    size: tuple[int, int],
    rng: np.random.Generator,
    idle: float = 1.0,
    posture: dict[str, tuple[float, float]] | None = None,
    mouth: float | None = None,
) -> dict[str, np.ndarray]:
    """Pixel positions of every joint in every frame: {joint: (T, 2) float64 x, y}.

    idle scales the idle motions (breathing, drift, sway); 0 gives a figure still between gestures.
    posture: a constant offset (body units) of some joints for the whole video (a slumped or
    upright player).
    """
    w, h = size
    t = np.arange(num_frames) / fps
    body = {j: np.tile(np.asarray(REST[j], dtype=np.float64), (num_frames, 1)) for j in JOINTS}
    for j, (dx, dy) in (posture or {}).items():
        body[j] += (dx, dy)
    # Idle life: breathing lifts the shoulders and head; hands and head drift a little.
    breath = idle * 0.2 * np.sin(2 * math.pi * t / rng.uniform(3.2, 4.5) + rng.uniform(0, 6.3))
    for j in ("shoulder_R", "shoulder_L", "neck", "head"):
        body[j][:, 1] += breath
    for j in ("hand_R", "hand_L", "elbow_R", "elbow_L", "head"):
        body[j][:, 0] += _smooth_noise(rng, t, idle * 0.15)
        body[j][:, 1] += _smooth_noise(rng, t, idle * 0.15)
    for p in plan:
        n = p.end - p.start + 1
        env = envelope(n, fps)[:, None]
        tau = (np.arange(n) + 0.5) / fps
        for j, (target, osc) in gesture_joints(p.label, p.side).items():
            delta = np.asarray(target) + np.asarray(p.offset) - np.asarray(REST[j])
            move = np.broadcast_to(delta, (n, 2)).copy()
            if osc is not None:
                wt = 2 * math.pi * osc.hz * p.speed * tau + p.phase
                move[:, 0] += p.amp * osc.ax * np.sin(wt + osc.px)
                move[:, 1] += p.amp * osc.ay * np.sin(wt + osc.py)
            body[j][p.start : p.end + 1] += env * move
    # Sway and lean of the upper body about the pelvis; the feet stay planted.
    sway = idle * 0.2 * np.sin(2 * math.pi * t / rng.uniform(4.5, 6.5) + rng.uniform(0, 6.3))
    lean = idle * 0.004 * np.sin(2 * math.pi * t / rng.uniform(3.5, 5.0) + rng.uniform(0, 6.3))
    c, s = np.cos(lean)[:, None], np.sin(lean)[:, None]
    unit = h / 120.0
    out = {}
    for j, xy in body.items():
        if j in UPPER:
            x = c[:, 0] * xy[:, 0] - s[:, 0] * xy[:, 1] + sway
            y = s[:, 0] * xy[:, 0] + c[:, 0] * xy[:, 1]
            xy = np.stack([x, y], axis=1)
        out[j] = np.stack([w / 2 + unit * xy[:, 0], unit * (PELVIS_Y + xy[:, 1])], axis=1)
    return out


def _along(a: np.ndarray, b: np.ndarray, dist: float) -> np.ndarray:
    """The point `dist` pixels past b on the ray a -> b (back towards a when negative), (T, 2)."""
    d = b - a
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    # A zero-length segment has no direction; its derived joint then sits on b.
    return b + dist * d / np.maximum(norm, 1e-9)


def kinect_pixels(joints: dict[str, np.ndarray], unit: float) -> np.ndarray:
    """The figure's joints {name: (T, 2)} as Kinect's 25 joints in image pixels, (T, 25, 2).

    Exact where the figure has the joint (`FIGURE_TO_KINECT`); SpineBase is the mid-hips, SpineMid
    midway between it and the neck, SpineShoulder just below the neck on that spine, Wrist the hand
    (the figure has no wrist), HandTip and Thumb a little past the hand along the forearm, Ankle
    a little up the shin from the foot. unit: pixels per body unit.
    """
    n = next(iter(joints.values())).shape[0]
    out = np.zeros((n, len(KINECT_JOINTS), 2))
    for name, k in FIGURE_TO_KINECT.items():
        out[:, k] = joints[name]
    pelvis = (joints["hip_L"] + joints["hip_R"]) / 2
    out[:, _K["SpineBase"]] = pelvis
    out[:, _K["SpineMid"]] = (pelvis + joints["neck"]) / 2
    out[:, _K["SpineShoulder"]] = _along(pelvis, joints["neck"], -SPINE_SHOULDER_BELOW_NECK * unit)
    for side, kside in (("L", "Left"), ("R", "Right")):
        elbow, hand = joints[f"elbow_{side}"], joints[f"hand_{side}"]
        out[:, _K["Wrist" + kside]] = hand
        out[:, _K["HandTip" + kside]] = _along(elbow, hand, HAND_TIP_BEYOND_HAND * unit)
        out[:, _K["Thumb" + kside]] = _along(elbow, hand, THUMB_BEYOND_HAND * unit)
        knee, foot = joints[f"knee_{side}"], joints[f"foot_{side}"]
        out[:, _K["Ankle" + kside]] = _along(knee, foot, -ANKLE_ABOVE_FOOT * unit)
    return out


def kinect_skeleton(joints: dict[str, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """SMG's skeleton rows for the figure's joints {name: (T, 2) pixels}: (T, 25, 11) float64.

    World coordinates follow Kinect's camera space (metres; x to the sensor's left, y up, z away
    from it; right-handed) through a pinhole back-projection: the flat figure stands at
    CAMERA_DEPTH_M, the focal length is FOCAL_HEIGHTS frame heights and the principal point the
    frame's centre, so x = -(u - W/2) z / f, y = -(v - H/2) z / f for pixel (u, v). As the video
    is a camera's (not a mirror's) view, the sensor's left is the image's left, where the figure's
    right is: the person's right has the larger x, as in Kinect's data. Orientations are not
    modelled: every joint gets the identity quaternion (1, 0, 0, 0). Every joint is tracked in
    every frame (the figure is always in view), so no joint has Kinect's all-zero "not tracked".
    """
    w, h = size
    pix = kinect_pixels(joints, h / 120.0)
    metres_per_pixel = CAMERA_DEPTH_M / (FOCAL_HEIGHTS * h)
    out = np.zeros(pix.shape[:2] + (KINECT_VALUES,))
    out[..., 0] = -(pix[..., 0] - w / 2) * metres_per_pixel
    out[..., 1] = -(pix[..., 1] - h / 2) * metres_per_pixel
    out[..., 2] = CAMERA_DEPTH_M
    out[..., KINECT_ORIENTATION.start] = 1.0
    out[..., KINECT_IMAGE] = pix
    return out


def write_kinect_skeleton(
    path: Path, joints: dict[str, np.ndarray], size: tuple[int, int]
) -> None:
    """Write SMG's `_skeleton.csv` (no header, a row of 25 x 11 numbers per frame) atomically."""
    # A reader must get the figure's pixels back: 3 decimals keep them to 1/2000 of a pixel.
    per_joint = ["%.5f"] * 3 + ["%.0f"] * 4 + ["%.3f"] * 2 + ["%.0f"] * 2
    fmt = ",".join(per_joint * len(KINECT_JOINTS))
    table = kinect_skeleton(joints, size).reshape(-1, len(KINECT_JOINTS) * KINECT_VALUES)
    text = "".join(fmt % tuple(row) + "\n" for row in table)
    atomic_write_bytes(Path(path), text.encode())


def draw_capsules(
    canvas: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, color: np.ndarray
) -> None:
    """Paint, in place, a thick anti-aliased segment a->b (a disc when a == b) on every frame.

    canvas: (N, H, W, 3) float32; a, b: (N, 2) pixel x, y (pixel (i, j) is centred at x=j, y=i).
    Only the box around the N segments is touched, which keeps this cheap.
    """
    n, hgt, wid, _ = canvas.shape
    lo = np.floor(np.minimum(a, b).min(axis=0) - radius - 1).astype(int)
    hi = np.ceil(np.maximum(a, b).max(axis=0) + radius + 2).astype(int)
    x0, y0 = max(int(lo[0]), 0), max(int(lo[1]), 0)
    x1, y1 = min(int(hi[0]), wid), min(int(hi[1]), hgt)
    if x1 <= x0 or y1 <= y0:
        return
    a32 = a.astype(np.float32)
    d = (b - a).astype(np.float32)
    ax, ay = a32[:, 0, None, None], a32[:, 1, None, None]
    dx, dy = d[:, 0, None, None], d[:, 1, None, None]
    rx = np.arange(x0, x1, dtype=np.float32)[None, None, :] - ax  # (N, 1, w)
    ry = np.arange(y0, y1, dtype=np.float32)[None, :, None] - ay  # (N, h, 1)
    length2 = np.maximum(dx * dx + dy * dy, 1e-6)
    u = np.clip((rx * dx + ry * dy) / length2, 0.0, 1.0)  # (N, h, w)
    ex, ey = rx - u * dx, ry - u * dy
    alpha = np.clip(radius + 0.5 - np.sqrt(ex * ex + ey * ey), 0.0, 1.0)[..., None]
    region = canvas[:, y0:y1, x0:x1]
    region += alpha * (np.asarray(color, dtype=np.float32) - region)


@dataclass
class Look:
    """Colours of one video (RGB 0-255) and its static background."""

    background: np.ndarray  # (H, W, 3) float32
    shirt: np.ndarray
    sleeve: np.ndarray
    trousers: np.ndarray
    skin: np.ndarray
    hand: np.ndarray
    shoes: np.ndarray
    eyes: np.ndarray


def make_look(size: tuple[int, int], rng: np.random.Generator) -> Look:
    w, h = size
    base = rng.uniform(150, 215, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bg = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    bg += (yy / h - 0.5)[..., None] * rng.uniform(-25, 25)
    for _ in range(3):  # a faint static texture, so the background is not flat
        fx, fy = rng.uniform(0.02, 0.15, size=2)
        bg += 3.0 * np.sin(2 * math.pi * (fx * xx + fy * yy) + rng.uniform(0, 6.3))[..., None]
    bg[yy >= h * 0.94] *= 0.8  # the floor
    shirt = rng.uniform(40, 230, size=3)
    skin_tones = np.array([[233, 190, 160], [200, 150, 110], [150, 100, 70], [100, 65, 45]])
    skin = skin_tones[rng.integers(len(skin_tones))] + rng.uniform(-10, 10, size=3)
    return Look(
        background=np.clip(bg, 0, 255),
        shirt=shirt,
        sleeve=shirt * 0.55,
        trousers=rng.uniform(20, 90, size=3),
        skin=skin,
        hand=skin * 0.78,
        shoes=np.array([25.0, 22.0, 20.0]),
        eyes=np.array([20.0, 20.0, 30.0]),
    )


def draw_frames(joints: dict[str, np.ndarray], look: Look, unit: float,
                mouth: float | None = None) -> np.ndarray:
    """Frames showing the figure in the given poses: joints {name: (N, 2)} -> (N, H, W, 3) uint8.

    mouth: None draws no mouth; +1 a smile (corners up) ... -1 corners down."""
    n = next(iter(joints.values())).shape[0]
    canvas = np.repeat(look.background[None], n, axis=0)
    j = joints

    def cap(a: np.ndarray, b: np.ndarray, r: float, color: np.ndarray) -> None:
        draw_capsules(canvas, a, b, r * unit, color)

    for side in ("R", "L"):
        cap(j[f"hip_{side}"], j[f"knee_{side}"], 3.6, look.trousers)
        cap(j[f"knee_{side}"], j[f"foot_{side}"], 3.2, look.trousers)
        cap(j[f"foot_{side}"], j[f"foot_{side}"] + [0.0, 1.5 * unit], 2.6, look.shoes)
    cap(j["hip_R"], j["hip_L"], 5.5, look.trousers)
    chest = (j["shoulder_R"] + j["shoulder_L"]) / 2 + [0.0, 4.0 * unit]
    belly = (j["hip_R"] + j["hip_L"]) / 2 - [0.0, 3.0 * unit]
    cap(chest, belly, 10.0, look.shirt)
    cap(j["shoulder_R"], j["shoulder_L"], 4.5, look.shirt)
    cap(j["neck"], j["head"], 3.0, look.skin)
    cap(j["head"], j["head"], 8.0, look.skin)
    cap(j["head"] + [-3.0 * unit, -unit], j["head"] + [-3.0 * unit, -unit], 0.9, look.eyes)
    cap(j["head"] + [3.0 * unit, -unit], j["head"] + [3.0 * unit, -unit], 0.9, look.eyes)
    if mouth is not None:
        centre = j["head"] + [0.0, 3.5 * unit]
        for side in (-1.0, 1.0):
            cap(j["head"] + [side * 3.0 * unit, (3.5 - 1.5 * mouth) * unit], centre, 0.6,
                look.eyes)
    for side in ("R", "L"):
        cap(j[f"shoulder_{side}"], j[f"elbow_{side}"], 3.0, look.sleeve)
        cap(j[f"elbow_{side}"], j[f"hand_{side}"], 2.5, look.sleeve)
        cap(j[f"hand_{side}"], j[f"hand_{side}"], 3.2, look.hand)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def encode_video(
    path: Path, frames_iter: Iterable[np.ndarray], size: tuple[int, int], fps: float, keyint: int
) -> None:
    """Write H.264 yuv420p frames (an iterable of (N, H, W, 3) uint8 batches) atomically to `path`.

    keyint: frames between keyframes. Every keyframe re-quantises the still background, which
    makes a frame-difference flash larger than a gesture at this size, so callers put one
    keyframe per video (sequential decoding of these small videos is cheap).
    """
    import av

    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.thread_count = 1  # the renderer is meant to share a core; also deterministic
            stream.options = {"crf": "18", "preset": "veryfast", "g": str(max(1, keyint))}
            for batch in frames_iter:
                for frame in batch:
                    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                    for packet in stream.encode(vf):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


CHUNK = 32  # frames drawn at once


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    if w % 2 or h % 2 or w < 32 or h < 24:
        raise ValueError(f"size must be even (yuv420p) and at least 32x24, got {w}x{h}")
    return w, h


def render_video(
    path: Path,
    num_frames: int,
    plan: Sequence[PlannedGesture],
    size: tuple[int, int] = (160, 120),
    fps: float = 30.0,
    seed: int = 0,
    progress: ProgressBar | None = None,
    skeleton: Path | None = None,
    idle: float = 1.0,
    posture: dict[str, tuple[float, float]] | None = None,
    mouth: float | None = None,
) -> dict[str, np.ndarray]:
    """Render one video of `plan` to `path` (mp4); returns the joints {name: (T, 2) pixels}.

    skeleton: where to write the joints as SMG's Kinect skeleton CSV (`write_kinect_skeleton`).
    posture: see `pose_track`; mouth: see `draw_frames`.
    """
    w, h = check_size(size)
    rng = np.random.default_rng([seed, 1])
    look = make_look(size, rng)
    joints = pose_track(num_frames, fps, plan, size, rng, idle, posture)
    unit = h / 120.0
    if skeleton is not None:
        write_kinect_skeleton(Path(skeleton), joints, size)

    def batches():
        for f0 in range(0, num_frames, CHUNK):
            f1 = min(f0 + CHUNK, num_frames)
            yield draw_frames({k: v[f0:f1] for k, v in joints.items()}, look, unit, mouth)
            if progress is not None:
                progress.update(f1 - f0)

    encode_video(Path(path), batches(), size, fps, keyint=num_frames)
    return joints


def synthetic_split(videos: int) -> str:
    """The split of a rendered set: about 15% val and 15% test at the end (none under 3 videos)."""
    k = max(1, round(0.15 * videos)) if videos >= 3 else 0
    parts = [f"train=1-{videos - 2 * k}"]
    if k:
        parts += [f"val={videos - 2 * k + 1}-{videos - k}", f"test={videos - k + 1}-{videos}"]
    return ";".join(parts)


def _csv_bytes(rows: np.ndarray, header: str | None = None, fmt: str = "%d") -> bytes:
    lines = [header] if header else []
    lines += [",".join(fmt % v for v in row) for row in rows]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def render_dataset(
    out: Path,
    videos: int = 12,
    minutes: float = 2.0,
    classes: int = 8,
    seed: int = 0,
    size: tuple[int, int] = (160, 120),
    fps: float = 30.0,
    progress: bool = True,
) -> list[Path]:
    """Render a synthetic set in the SMG layout under `out`; returns the video paths, by id.

    Also writes `annotations.json` (canonical; split from `synthetic_split`), `classes.txt` and
    `render.json`. Videos already rendered with the same settings are skipped.
    """
    from detect.data.converters.smg import split_lookup

    out = Path(out)
    names = class_names(classes)
    if videos < 1 or minutes <= 0 or fps <= 0:
        raise ValueError("videos, minutes and fps must be positive")
    check_size(size)
    num_frames = int(round(minutes * 60 * fps))
    split = synthetic_split(videos)
    # Format 2 writes SMG's Kinect skeleton.csv: a set of format 1 must not be resumed with it.
    settings = {
        "videos": videos, "minutes": minutes, "classes": classes, "seed": seed,
        "size": list(size), "fps": fps, "split": split, "format": 2,
    }  # fmt: skip
    info = out / "render.json"
    if info.is_file():
        old = json.loads(info.read_text())
        if old != settings:
            raise ValueError(
                f"{info}: this folder was rendered with other settings ({old}); "
                f"use a new folder for {settings}"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(info, settings)
    atomic_write_bytes(out / "classes.txt", ("\n".join(names) + "\n").encode())

    subset_of = split_lookup(split)
    paths: list[Path] = []
    records: list[VideoRecord] = []
    bar = progress_bar(total=videos * num_frames, unit="frame", desc="render", enabled=progress)
    with bar:
        for i in range(1, videos + 1):
            vid = f"Sample{i:04d}"
            folder = out / vid
            video = folder / f"{vid}_color.mp4"
            plan = plan_timeline(num_frames, fps, classes, np.random.default_rng([seed, i, 0]))
            labels = folder / f"{vid}_finelabels.csv"
            data = folder / f"{vid}_data.csv"
            if video.is_file() and labels.is_file() and data.is_file():
                bar.update(num_frames)
            else:
                folder.mkdir(parents=True, exist_ok=True)
                rows = np.array([[p.label + 1, p.start, p.end] for p in plan]).reshape(-1, 3)
                atomic_write_bytes(labels, _csv_bytes(rows))
                data_rows = f"numFrames,fps,maxDepth\n{num_frames},{fps:g},{MAX_DEPTH_MM}\n"
                atomic_write_bytes(data, data_rows.encode())
                render_video(
                    video, num_frames, plan, size, fps, seed=seed * 100_003 + i, progress=bar,
                    skeleton=folder / f"{vid}_skeleton.csv",
                )  # fmt: skip
            paths.append(video)
            insts = [Instance(p.label, *frames_to_seconds(p.start, p.end, fps)) for p in plan]
            subset = subset_of(vid)
            assert subset is not None
            records.append(VideoRecord(vid, subset, num_frames / fps, fps, insts))
    write_annotations(out / "annotations.json", build_annotations(names, records))
    return paths
