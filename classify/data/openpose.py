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

A malformed file or row is a `DatasetError` naming the file and the frame or row.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np

from detect.data.converters.common import DatasetError, is_number

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
        raise DatasetError(f"{path}: a person entry is not an object")
    out = []
    for name, n in FIELDS:
        values = person.get(name) or []
        if not isinstance(values, list) or len(values) not in (0, 3 * n):
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise DatasetError(f"{path}: {name} has {got} numbers, expected {3 * n} (or none)")
        try:
            arr = np.asarray(values, dtype=np.float32).reshape(-1, 3)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: {name} holds a value that is not a number") from None
        out.append(arr if len(arr) else np.zeros((n, 3), np.float32))
    kp = np.concatenate(out)
    if not np.isfinite(kp).all():
        raise DatasetError(f"{path}: a keypoint is not finite")
    return kp


def read_openpose_frame(path: Path) -> np.ndarray:
    """One OpenPose JSON file -> (137, 3): the most confident person, zeros if nobody."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not a readable OpenPose JSON file ({e})") from e
    people = doc.get("people") if isinstance(doc, dict) else None
    if not isinstance(people, list):
        raise DatasetError(f"{path}: no `people` list (not OpenPose output)")
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
            raise DatasetError(f"{f}: no frame number before _keypoints.json")
        files[int(m.group(1))] = f
    if not files:
        raise DatasetError(f"{folder}: no OpenPose *_keypoints.json files")
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
            raise DatasetError(f"{path}: reading .xlsx needs openpyxl "
                               "(pip install -e '.[xlsx]')") from None
        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to open is a broken file
            raise DatasetError(f"{path}: not a readable .xlsx file ({e})") from e
        sheet = book.worksheets[0]
        rows = [(i, ["" if c is None else str(c) for c in row])
                for i, row in enumerate(sheet.iter_rows(values_only=True), 1)]
        book.close()
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: cannot read ({e})") from e
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
        raise DatasetError(f"{path}: no keypoint rows")
    width = len(rows[0][1])
    layouts = {3 * k + lead: (k, lead) for k in (25, 35, NUM_KEYPOINTS) for lead in (0, 1)}
    if width not in layouts:
        raise DatasetError(
            f"{path}, row {rows[0][0]}: {width} columns; expected 3K or 3K + 1 (a leading frame "
            "column) for K = 25 (BODY_25), 35 (light_hand) or 137 (body, face, hands)")
    k, lead = layouts[width]
    table = np.zeros((len(rows), 3 * k), np.float32)
    frames = np.arange(len(rows))
    for r, (lineno, cells) in enumerate(rows):
        if len(cells) != width:
            raise DatasetError(f"{path}, row {lineno}: {len(cells)} columns, expected {width}")
        try:
            values = [float(c) for c in cells]
        except ValueError:
            bad = next(c for c in cells if not is_number(c))
            raise DatasetError(f"{path}, row {lineno}: {bad!r} is not a number") from None
        if not all(math.isfinite(v) for v in values):
            raise DatasetError(f"{path}, row {lineno}: a value is not finite")
        if lead:
            frames[r] = int(values[0])
        table[r] = values[lead:]
    if lead and (frames.min() < 0 or len(np.unique(frames)) != len(frames)):
        raise DatasetError(f"{path}: frame numbers in the first column repeat or are negative")
    out = np.zeros((int(frames.max()) + 1, k, 3), np.float32)
    out[frames] = table.reshape(-1, k, 3)
    return _expand(out)


def read_keypoints(path: Path) -> np.ndarray:
    """OpenPose keypoints from a folder of JSON files or a CSV / XLSX table -> (T, 137, 3)."""
    path = Path(path)
    if path.is_dir():
        return read_openpose_dir(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such skeleton file or folder")
    if path.suffix.lower() not in (".csv", ".xlsx"):
        raise DatasetError(f"{path}: unknown skeleton format (a JSON folder, .csv or .xlsx)")
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
