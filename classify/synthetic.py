"""A synthetic iMiGUE: `detect.synthetic.videos`'s drawn figure in iMiGUE's files, with OpenPose
keypoints.

Each video is a player who gestures now and then (one gesture at a time, 0.3-2 s apart, about
2.5 s long as iMiGUE's mean clip) at 25 fps. Ten of the drawn gestures stand for the iMiGUE
classes they look like (`CLASS_MAP`). Players have subject ids (three in four from the official
training subjects, so the cross-subject split has both sides) and each video a win or lose: a
losing player slumps (head and neck lower, shoulders raised and forward) and the corners of the
mouth go down (drawn, and in the face keypoints), a winner sits upright and smiles. Written as
released::

    OUT/XXXX/XXXX.mp4                                H.264, 25 fps
    OUT/XXXX/XXXX_label.csv                          class,start,end (0-based frames; 99 = 32)
    OUT/Data/skeleton/raw/<id>/<XXXX>_<frame:012d>_keypoints.json
                                                     OpenPose BODY_25 + face 70 + hands 21 x 2
    OUT/Label/labels_20200831.csv                    the original label file (subject, win/lose)
    OUT/render.json                                  the settings (a re-run must use the same)

The keypoints are the drawn figure's joints (BODY_25 derived from them: eyes, ears and feet at
fixed offsets), a 70-point face on the drawn head and two 21-point hands, with OpenPose-like
confidence (0.5-0.95), half-pixel jitter and 2% of points missed (0, 0, 0). Deterministic for a
seed; a video whose mp4 and skeleton exist is skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from classify.data.openpose import NUM_KEYPOINTS, write_openpose_dir
from detect.data.converters.imigue import DEFAULT_TRAIN_SUBJECTS, FPS, ORIGINAL_COLUMNS
from detect.synthetic.videos import GESTURES, PlannedGesture, check_size, render_video
from extract.io import atomic_write_bytes, atomic_write_json
from extract.progress import progress as progress_bar

# Drawn gesture -> iMiGUE file class (1-31, 99 illustrative).
CLASS_MAP: dict[str, int] = {
    "turtling neck": 1, "rubbing eyes": 7, "touching face": 8, "scratching neck": 12,
    "playing with hair": 13, "folding arms": 17, "holding arms": 22, "rubbing hands": 23,
    "arms akimbo": 30, "illustrative hand gestures": 99,
}  # fmt: skip
GESTURE_INDEX = {g.name: i for i, g in enumerate(GESTURES)}
SLUMP = {"head": (0.0, 2.5), "neck": (0.0, 2.0), "shoulder_R": (1.5, -1.0),
         "shoulder_L": (-1.5, -1.0)}  # body units
UPRIGHT = {"head": (0.0, -1.0), "neck": (0.0, -0.5)}


def face_template(mouth: float) -> np.ndarray:
    """OpenPose's 70 face points around the head centre, head units (radius 8, y down), (70, 2).

    mouth: +1 corners up (a smile) ... -1 corners down."""
    pts = []
    for i in range(17):  # jaw, from the face's right (image left) under the chin to its left
        a = math.pi - i * math.pi / 16
        pts.append((7.0 * math.cos(a), -1.0 + 8.0 * math.sin(a)))
    for x0 in (-5.5, 1.0):  # brows
        pts += [(x0 + 1.125 * k, -3.6 - 0.4 * math.sin(math.pi * k / 4)) for k in range(5)]
    pts += [(0.0, -2.5 + 0.9 * k) for k in range(4)]  # nose bridge
    pts += [(-1.4 + 0.7 * k, 1.8 + 0.2 * abs(k - 2)) for k in range(5)]  # nostrils
    for cx in (-3.0, 3.0):  # eyes
        pts += [(cx + 1.5 * math.cos(a), -1.0 + 0.6 * math.sin(a))
                for a in np.linspace(math.pi, -math.pi, 6, endpoint=False)]
    for rx, ry, n in ((3.0, 1.2, 12), (2.0, 0.5, 8)):  # outer and inner lips
        for a in np.linspace(math.pi, -math.pi, n, endpoint=False):
            x = rx * math.cos(a)
            corner = (abs(x) / rx) ** 2
            pts.append((x, 4.0 + ry * math.sin(a) - mouth * 1.2 * corner))
    pts += [(-3.0, -1.0), (3.0, -1.0)]  # pupils
    return np.asarray(pts)


def _hand(wrist: np.ndarray, elbow: np.ndarray, unit: float) -> np.ndarray:
    """21 OpenPose hand points fanned out from the wrist along the forearm, (T, 21, 2)."""
    d = wrist - elbow
    d /= np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-6)
    out = [wrist]
    for f in range(5):
        a = (f - 2) * 0.35
        c, s = math.cos(a), math.sin(a)
        fd = np.stack([c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]], -1)
        out += [wrist + fd * unit * (0.9 + 0.8 * k) for k in range(4)]
    return np.stack(out, 1)


def openpose_keypoints(joints: dict[str, np.ndarray], unit: float, mouth: float,
                       rng: np.random.Generator) -> np.ndarray:
    """The drawn figure's joints {name: (T, 2) pixels} -> OpenPose keypoints (T, 137, 3)."""
    j = joints
    head = j["head"]
    off = {  # BODY_25 points the figure has no joint for, body units from a joint
        0: ("head", (0.0, 1.5)), 15: ("head", (-3.0, -1.0)), 16: ("head", (3.0, -1.0)),
        17: ("head", (-7.5, 0.0)), 18: ("head", (7.5, 0.0)), 19: ("foot_L", (1.5, 2.5)),
        20: ("foot_L", (3.0, 2.5)), 21: ("foot_L", (-0.5, 1.5)), 22: ("foot_R", (-1.5, 2.5)),
        23: ("foot_R", (-3.0, 2.5)), 24: ("foot_R", (0.5, 1.5)),
    }  # fmt: skip
    same = {1: "neck", 2: "shoulder_R", 3: "elbow_R", 4: "hand_R", 5: "shoulder_L",
            6: "elbow_L", 7: "hand_L", 9: "hip_R", 10: "knee_R", 11: "foot_R", 12: "hip_L",
            13: "knee_L", 14: "foot_L"}
    t = len(head)
    xy = np.zeros((t, NUM_KEYPOINTS, 2))
    for k, name in same.items():
        xy[:, k] = j[name]
    for k, (name, (dx, dy)) in off.items():
        xy[:, k] = j[name] + unit * np.asarray([dx, dy])
    xy[:, 8] = (j["hip_R"] + j["hip_L"]) / 2
    xy[:, 25:95] = head[:, None] + unit * face_template(mouth)[None]
    xy[:, 95:116] = _hand(j["hand_L"], j["elbow_L"], unit)
    xy[:, 116:137] = _hand(j["hand_R"], j["elbow_R"], unit)
    xy += rng.normal(0.0, 0.5, xy.shape)
    conf = rng.uniform(0.5, 0.95, (t, NUM_KEYPOINTS))
    missed = rng.random((t, NUM_KEYPOINTS)) < 0.02
    out = np.concatenate([xy, conf[..., None]], -1).astype(np.float32)
    out[missed] = 0.0
    return out


@dataclass
class Video:
    vid: str
    subject: int
    outcome: str
    plan: list[PlannedGesture]


def subjects_for(videos: int) -> list[int]:
    """Subject of each video: two videos a subject, three subjects in four from the official
    training list, the others not (test)."""
    train = list(DEFAULT_TRAIN_SUBJECTS)
    test = [s for s in range(1, 80) if s not in DEFAULT_TRAIN_SUBJECTS]
    order = []
    while len(order) * 2 < videos:
        order.append(train.pop(0) if len(order) % 4 != 3 else test.pop(0))
    return [order[i // 2] for i in range(videos)]


def plan_video(num_frames: int, rng: np.random.Generator, outcome: str) -> list[PlannedGesture]:
    """One gesture at a time: durations log-normal around 2.5 s (0.6-6 s), gaps 0.3-2 s; losers
    touch their face and neck more (self-soothing), winners gesture more."""
    names = list(CLASS_MAP)
    weights = np.ones(len(names))
    self_touch = ("rubbing eyes", "touching face", "scratching neck", "playing with hair")
    for i, n in enumerate(names):
        if outcome == "lose" and n in self_touch:
            weights[i] = 1.6
        if outcome == "win" and n == "illustrative hand gestures":
            weights[i] = 1.6
    weights /= weights.sum()
    plan, t = [], float(rng.uniform(0.3, 1.5))
    total = num_frames / FPS
    while True:
        dur = float(np.clip(np.exp(rng.normal(math.log(2.5), 0.45)), 0.6, 6.0))
        if t + dur > total - 0.2:
            break
        name = names[int(rng.choice(len(names), p=weights))]
        start = int(round(t * FPS))
        plan.append(PlannedGesture(
            GESTURE_INDEX[name], int(rng.choice((-1, 1))), start,
            start + max(2, int(round(dur * FPS))) - 1,
            speed=float(rng.uniform(0.8, 1.25)), amp=float(rng.uniform(0.8, 1.2)),
            phase=float(rng.uniform(0, 2 * math.pi)),
            offset=(float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))))
        t += dur + float(rng.uniform(0.3, 2.0))
    return plan


def render_imigue(out: Path, videos: int = 16, minutes: float = 0.75, seed: int = 0,
                  size: tuple[int, int] = (160, 120), progress: bool = True) -> list[Video]:
    """Render the set (see the module docstring) under `out`; returns what each video holds."""
    out = Path(out)
    if videos < 2 or minutes <= 0:
        raise ValueError("need at least 2 videos and a positive length")
    check_size(size)
    settings = {"videos": videos, "minutes": minutes, "seed": seed, "size": list(size),
                "fps": FPS, "format": 2}  # 2: the mouth is drawn
    info = out / "render.json"
    if info.is_file() and json.loads(info.read_text()) != settings:
        raise ValueError(f"{info}: this folder was rendered with other settings "
                         f"({json.loads(info.read_text())}); use a new folder for {settings}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(info, settings)
    num_frames = int(round(minutes * 60 * FPS))
    subjects = subjects_for(videos)
    rows, made = [], []
    bar = progress_bar(total=videos * num_frames, unit="frame", desc="render", enabled=progress)
    with bar:
        for i in range(1, videos + 1):
            vid = f"{i:04d}"
            rng = np.random.default_rng([seed, i, 7])
            outcome = "win" if rng.random() < 0.5 else "lose"
            plan = plan_video(num_frames, rng, outcome)
            made.append(Video(vid, subjects[i - 1], outcome, plan))
            folder = out / vid
            video = folder / f"{vid}.mp4"
            skel = out / "Data" / "skeleton" / "raw" / str(i)
            file_class = [CLASS_MAP[GESTURES[p.label].name] for p in plan]
            label_rows = "".join(f"{c},{p.start},{p.end}\n"
                                 for c, p in zip(file_class, plan, strict=True))
            for c, p in zip(file_class, plan, strict=True):
                rows.append([i, len(rows) + 1, p.start / FPS, p.start, (p.end + 1) / FPS, p.end,
                             c, subjects[i - 1], "F" if subjects[i - 1] % 2 else "M", "SYN",
                             outcome])
            if video.is_file() and skel.is_dir():
                bar.update(num_frames)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(folder / f"{vid}_label.csv", label_rows.encode())
            posture = SLUMP if outcome == "lose" else UPRIGHT
            mouth = 1.0 if outcome == "win" else -1.0
            joints = render_video(video, num_frames, plan, size, FPS, seed=seed * 100_003 + i,
                                  progress=bar, posture=posture, mouth=mouth)
            kp = openpose_keypoints(joints, size[1] / 120.0, mouth,
                                    np.random.default_rng([seed, i, 8]))
            write_openpose_dir(skel, vid, kp)
    lines = [",".join(ORIGINAL_COLUMNS)]
    lines += [",".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r) for r in rows]
    atomic_write_bytes(out / "Label" / "labels_20200831.csv", ("\n".join(lines) + "\n").encode())
    return made
