"""OpenPose keypoints as iMiGUE releases them: reading, writing and the 137-point layout.

Every reader returns one array (T, 137, 3) of x, y (pixels) and confidence per frame, in the
order of OpenPose's JSON fields: BODY_25 (0-24), face (25-94, 70 points), left hand (95-115, 21)
and right hand (116-136, 21). A missing person or point is (0, 0, 0), as OpenPose writes it.

Sources:
- OpenPose JSON, one file per frame (`<name>_<frame:012d>_keypoints.json`, the raw iMiGUE skeleton
  folders): the frame number comes from the file name; frames without a file are empty; when several
  people are found the one with the largest summed body confidence is kept (the player, not a
  passing reporter).
- Tables (`.csv`, or `.xlsx` with the optional `openpyxl`), one row per frame: 3K numbers, or a
  leading frame column and 3K numbers, with K = 137 (this layout), 25 (BODY_25) or 35 (the MiGA
  `XXXX_light_hand.csv`: BODY_25, then 5 right-hand and 5 left-hand points, taken here as the
  fingertips, OpenPose hand points 4, 8, 12, 16, 20). A first row of words is a header.

A malformed file or row is a `PoseError` naming the file and the frame or row
(`classify.data.openpose`, which re-exports these, raises its `DatasetError` instead).

Finding iMiGUE's keypoints: `find_imigue_keypoints` (the same files and order as
`classify.data.clips.find_skeleton`), and the frame rate of the video beside them:
`video_fps_beside`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from extract.decode import open_video
from extract.io import is_number
from extract.pose import PoseError, row_numbers

BODY_25: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder",
    "left_elbow", "left_wrist", "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip",
    "left_knee", "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear",
    "left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe",
    "right_heel",
)  # fmt: skip
FIELDS: tuple[tuple[str, int], ...] = (
    ("pose_keypoints_2d", 25), ("face_keypoints_2d", 70),
    ("hand_left_keypoints_2d", 21), ("hand_right_keypoints_2d", 21),
)  # fmt: skip
NUM_KEYPOINTS = sum(n for _, n in FIELDS)  # 137
FACE = slice(25, 95)
LEFT_HAND = slice(95, 116)
RIGHT_HAND = slice(116, 137)
FINGERTIPS = (4, 8, 12, 16, 20)  # of a 21-point OpenPose hand
_FRAME = re.compile(r"(\d+)_keypoints\.json$")


def _person(path: Path, person: object) -> np.ndarray:
    """One person's JSON dict -> (137, 3)."""
    if not isinstance(person, dict):
        raise PoseError(f"{path}: a person entry is not an object")
    out = []
    for name, n in FIELDS:
        values = person.get(name) or []
        if not isinstance(values, list) or len(values) not in (0, 3 * n):
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise PoseError(f"{path}: {name} has {got} numbers, expected {3 * n} (or none)")
        try:
            arr = np.asarray(values, dtype=np.float32).reshape(-1, 3)
        except (TypeError, ValueError):
            raise PoseError(f"{path}: {name} holds a value that is not a number") from None
        out.append(arr if len(arr) else np.zeros((n, 3), np.float32))
    kp = np.concatenate(out)
    if not np.isfinite(kp).all():
        raise PoseError(f"{path}: a keypoint is not finite")
    return kp


def read_openpose_frame(path: Path) -> np.ndarray:
    """One OpenPose JSON file -> (137, 3): the most confident person, zeros if nobody."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PoseError(f"{path}: not a readable OpenPose JSON file ({e})") from e
    people = doc.get("people") if isinstance(doc, dict) else None
    if not isinstance(people, list):
        raise PoseError(f"{path}: no `people` list (not OpenPose output)")
    if not people:
        return np.zeros((NUM_KEYPOINTS, 3), np.float32)
    kps = [_person(path, p) for p in people]
    return kps[int(np.argmax([k[:25, 2].sum() for k in kps]))]


def read_openpose_dir(folder: Path) -> np.ndarray:
    """A folder of per-frame OpenPose JSON files -> (T, 137, 3), T = last frame + 1."""
    folder = Path(folder)
    files: dict[int, Path] = {}
    for f in folder.glob("*_keypoints.json"):
        m = _FRAME.search(f.name)
        if m is None:
            raise PoseError(f"{f}: no frame number before _keypoints.json")
        files[int(m.group(1))] = f
    if not files:
        raise PoseError(f"{folder}: no OpenPose *_keypoints.json files")
    out = np.zeros((max(files) + 1, NUM_KEYPOINTS, 3), np.float32)
    for i, f in files.items():
        out[i] = read_openpose_frame(f)
    return out


def _table_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based row number, cells as text) of a CSV or XLSX table, blank rows dropped."""
    if path.suffix.lower() == ".xlsx":
        try:
            import openpyxl
        except ImportError:
            raise PoseError(f"{path}: reading .xlsx needs openpyxl "
                               "(pip install -e '.[xlsx]')") from None
        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to open is a broken file
            raise PoseError(f"{path}: not a readable .xlsx file ({e})") from e
        sheet = book.worksheets[0]
        rows = [(i, ["" if c is None else str(c) for c in row])
                for i, row in enumerate(sheet.iter_rows(values_only=True), 1)]
        book.close()
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise PoseError(f"{path}: cannot read ({e})") from e
        rows = [(i, line.split(",")) for i, line in enumerate(text.splitlines(), 1)]
    out = []
    for i, cells in rows:
        while cells and not cells[-1].strip():
            cells = cells[:-1]
        if cells:
            out.append((i, [c.strip() for c in cells]))
    return out


def _expand(points: np.ndarray) -> np.ndarray:
    """(T, K, 3) with K in (25, 35, 137) -> (T, 137, 3)."""
    t, k, _ = points.shape
    if k == NUM_KEYPOINTS:
        return points
    out = np.zeros((t, NUM_KEYPOINTS, 3), np.float32)
    out[:, :25] = points[:, :25]
    if k == 35:
        out[:, [RIGHT_HAND.start + i for i in FINGERTIPS]] = points[:, 25:30]
        out[:, [LEFT_HAND.start + i for i in FINGERTIPS]] = points[:, 30:35]
    return out


def read_keypoint_table(path: Path) -> np.ndarray:
    """A CSV / XLSX keypoint table (one row per frame) -> (T, 137, 3)."""
    path = Path(path)
    rows = _table_rows(path)
    if rows and not all(is_number(c) for c in rows[0][1]):
        rows = rows[1:]  # a header
    if not rows:
        raise PoseError(f"{path}: no keypoint rows")
    width = len(rows[0][1])
    layouts = {3 * k + lead: (k, lead) for k in (25, 35, NUM_KEYPOINTS) for lead in (0, 1)}
    if width not in layouts:
        raise PoseError(
            f"{path}, row {rows[0][0]}: {width} columns; expected 3K or 3K + 1 (a leading frame "
            "column) for K = 25 (BODY_25), 35 (light_hand) or 137 (body, face, hands)")
    k, lead = layouts[width]
    table = np.zeros((len(rows), 3 * k), np.float32)
    frames = np.arange(len(rows))
    for r, (lineno, cells) in enumerate(rows):
        if len(cells) != width:
            raise PoseError(f"{path}, row {lineno}: {len(cells)} columns, expected {width}")
        values = row_numbers(path, lineno, cells)
        if lead:
            frames[r] = int(values[0])
        table[r] = values[lead:]
    if lead and (frames.min() < 0 or len(np.unique(frames)) != len(frames)):
        raise PoseError(f"{path}: frame numbers in the first column repeat or are negative")
    out = np.zeros((int(frames.max()) + 1, k, 3), np.float32)
    out[frames] = table.reshape(-1, k, 3)
    return _expand(out)


def read_keypoints(path: Path) -> np.ndarray:
    """OpenPose keypoints from a folder of JSON files or a CSV / XLSX table -> (T, 137, 3)."""
    path = Path(path)
    if path.is_dir():
        return read_openpose_dir(path)
    if not path.is_file():
        raise PoseError(f"{path}: no such skeleton file or folder")
    if path.suffix.lower() not in (".csv", ".xlsx"):
        raise PoseError(f"{path}: unknown skeleton format (a JSON folder, .csv or .xlsx)")
    return read_keypoint_table(path)


def frame_json(kp: np.ndarray) -> bytes:
    """(137, 3) -> one OpenPose JSON file's bytes (version 1.3, one person; all zeros: nobody)."""
    if not kp[:, 2].any():
        return json.dumps({"version": 1.3, "people": []}).encode()
    person: dict[str, object] = {"person_id": [-1]}
    i = 0
    for name, n in FIELDS:
        person[name] = [round(float(v), 3) for v in kp[i:i + n].reshape(-1)]
        i += n
    for name in ("pose_keypoints_3d", "face_keypoints_3d", "hand_left_keypoints_3d",
                 "hand_right_keypoints_3d"):
        person[name] = []
    return json.dumps({"version": 1.3, "people": [person]}, separators=(",", ":")).encode()


def write_openpose_dir(folder: Path, name: str, keypoints: np.ndarray) -> None:
    """(T, 137, 3) -> `folder/<name>_<frame:012d>_keypoints.json`, one file per frame.

    The files go to a sibling temporary folder renamed last: a killed run leaves no partial
    skeleton under the real name."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for i, kp in enumerate(keypoints):
        (tmp / f"{name}_{i:012d}_keypoints.json").write_bytes(frame_json(kp))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


# A video's keypoint tables, best first, in the order classify.data.clips.find_skeleton takes
# them; JSON folders rank after them (`_keypoint_dir`).
_TABLES = tuple(re.compile(p) for p in (
    r"^(\d+)_light_hand\.csv$", r"^(\d+)_light\.csv$", r"^(\d+)_keypoints\.xlsx$",
    r"^(\d+)\.xlsx$"))
_OPENPOSE_DIR = re.compile(r"^(\d+)_openpose$")


def imigue_id(number: str) -> str:
    """iMiGUE's video id of a number as file names give it: 4 digits (`371` -> `0371`), as the
    RGB features and annotations name the video."""
    return f"{int(number):04d}"


def _table_kind(name: str) -> tuple[int, str] | None:
    """(rank, video id) of a keypoint table's file name, None for any other file."""
    for rank, pattern in enumerate(_TABLES):
        m = pattern.match(name)
        if m is not None:
            return rank, imigue_id(m.group(1))
    return None


def _keypoint_dir(path: Path) -> tuple[int, str] | None:
    """(rank, video id) of a folder of per-frame JSON files (`XXXX_openpose/`, or
    `skeleton/raw/<n>/` as the iMiGUE repository has them), None for any other folder."""
    m = _OPENPOSE_DIR.match(path.name)
    if m is not None:
        rank, number = len(_TABLES), m.group(1)
    elif path.name.isdigit() and (path.parent.name, path.parent.parent.name) == ("raw",
                                                                                  "skeleton"):
        rank, number = len(_TABLES) + 1, path.name
    else:
        return None
    if not any(path.glob("*_keypoints.json")):
        return None
    return rank, imigue_id(number)


def _walk_keypoints(root: Path) -> Iterator[tuple[tuple[int, str], Path]]:
    """Yield ((rank, video id), path) of every keypoint table and JSON folder under `root`,
    without descending into the JSON folders (a release holds millions of frame files)."""
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in files:
            kind = _table_kind(name)
            if kind is not None:
                yield kind, here / name
        keep = []
        for d in sorted(dirs):
            kind = _keypoint_dir(here / d)
            if kind is not None:
                yield kind, here / d
            elif not d.startswith("."):
                keep.append(d)
        dirs[:] = keep


def find_imigue_keypoints(root: Path) -> dict[str, Path]:
    """Every iMiGUE video's keypoints under `root`, searched recursively: video id -> the best
    of `XXXX_light_hand.csv`, `XXXX_light.csv`, `XXXX_keypoints.xlsx`, `XXXX.xlsx`,
    `XXXX_openpose/`, `skeleton/raw/<n>/`. Sorted by id.

    Raises ValueError for a missing root, no keypoints at all, or two files of the same kind for
    one video (usage errors, found before any work)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    best: dict[str, tuple[int, Path]] = {}
    clashes: list[str] = []
    for (rank, vid), path in _walk_keypoints(root):
        if vid in best and best[vid][0] == rank:
            clashes.append(f"{vid}: {best[vid][1]} and {path}")
        elif vid not in best or rank < best[vid][0]:
            best[vid] = (rank, path)
    if clashes:
        raise ValueError("several keypoint sources of the same kind for one video: "
                         + "; ".join(sorted(clashes)))
    if not best:
        raise ValueError(f"{root}: no iMiGUE keypoints (XXXX_light_hand.csv, XXXX_light.csv, "
                         "XXXX.xlsx, XXXX_openpose/ or skeleton/raw/<n>/ with *_keypoints.json)")
    return {vid: best[vid][1] for vid in sorted(best)}


def video_beside(vid: str, keypoints: Path) -> Path | None:
    """The video of `vid` in the folder that holds its keypoints (`XXXX.mp4`, `XXXX_color.mp4`
    or `XXXX/XXXX.mp4`, as detect's iMiGUE converter looks for it), or None."""
    folder = Path(keypoints).parent
    for p in (folder / f"{vid}.mp4", folder / f"{vid}_color.mp4", folder / vid / f"{vid}.mp4"):
        if p.is_file():
            return p
    return None


def video_fps(path: Path) -> float:
    """The frame rate a video's container states (DecodeError when it cannot be read)."""
    container, stream = open_video(path)
    try:
        rate = stream.average_rate or stream.guessed_rate
    finally:
        container.close()
    if not rate or float(rate) <= 0:
        raise PoseError(f"{path}: the video states no frame rate")
    return float(rate)
