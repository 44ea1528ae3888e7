"""SMG's Kinect v2 skeletons: `SampleXXXX_skeleton.csv` and the frame rate in `_data.csv`.

Skeleton file: one row per frame, comma-separated, no header, 25 joints x 11 numbers (275 values)
in `joints.KINECT_V2` order. Per joint: world x, y, z (metres), orientation w, x, y, z, image
x, y (pixels), then 2 unused numbers. A joint whose 11 numbers are all 0 was not tracked. Only the
image x, y are used (every pose source is compared in 2D image coordinates), with confidence 1
for a tracked joint and 0 for an untracked one. Trailing empty cells and blank lines are allowed.

`SampleXXXX_data.csv` beside it holds numFrames, fps, maxDepth: a header row
`numFrames,fps,maxDepth` and one row of values, or the row of values alone (commas, semicolons or
spaces between them).

A malformed row (wrong count, a value that is not a finite number) is a PoseError naming the file
and its 1-based row; so is an empty file.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extract.io import is_number
from extract.pose import PoseError, row_numbers
from extract.pose.joints import KINECT_V2

VALUES_PER_JOINT = 11
IMAGE_XY = slice(7, 9)  # of a joint's 11 numbers
ROW_VALUES = len(KINECT_V2) * VALUES_PER_JOINT  # 275
_SAMPLE_RE = re.compile(r"^(Sample\d+)_skeleton\.csv$")


def smg_sample_id(path: Path) -> str | None:
    """`.../Sample0001_skeleton.csv` -> `Sample0001` (the id SMG's RGB features get), None for
    any other file name."""
    m = _SAMPLE_RE.match(Path(path).name)
    return m.group(1) if m else None


def find_smg_skeletons(root: Path) -> list[Path]:
    """Every `SampleXXXX_skeleton.csv` under `root`, searched recursively, sorted. ValueError for
    a missing root or none found (usage errors, before any work)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    found = sorted(p for p in root.rglob("Sample*_skeleton.csv")
                   if p.is_file() and smg_sample_id(p) is not None)
    if not found:
        raise ValueError(f"{root}: no SMG skeletons (SampleXXXX/SampleXXXX_skeleton.csv)")
    return found


def _row_values(path: Path, lineno: int, cells: list[str]) -> list[float]:
    while cells and not cells[-1].strip():
        cells = cells[:-1]
    if len(cells) != ROW_VALUES:
        raise PoseError(f"{path}, row {lineno}: {len(cells)} values, expected {ROW_VALUES} "
                        f"({len(KINECT_V2)} joints x {VALUES_PER_JOINT})")
    return row_numbers(path, lineno, cells)


def _parse_rows(path: Path, text: str) -> np.ndarray:
    """The careful parse: every row checked, errors naming the 1-based row."""
    rows = [_row_values(path, i, line.split(","))
            for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not rows:
        raise PoseError(f"{path}: no skeleton rows (the file is empty)")
    return np.asarray(rows, np.float64)


def read_kinect_csv(path: Path) -> np.ndarray:
    """A Kinect skeleton CSV -> (N, 25, 3): image x, y (pixels) and 1 tracked / 0 not."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PoseError(f"{path}: cannot read ({e})") from e
    if not text.strip():
        raise PoseError(f"{path}: no skeleton rows (the file is empty)")
    try:
        # numpy's C parser reads a long recording in a fraction of the careful parse's time;
        # anything it does not take as a clean (N, 275) table is parsed again row by row, which
        # either accepts it (trailing commas) or names the bad row.
        table = np.loadtxt(text.splitlines(), delimiter=",", ndmin=2, dtype=np.float64)
        if table.shape[1] != ROW_VALUES or table.shape[0] == 0 or not np.isfinite(table).all():
            raise ValueError
    except ValueError:
        table = _parse_rows(path, text)
    joints = table.reshape(-1, len(KINECT_V2), VALUES_PER_JOINT)
    tracked = (joints != 0).any(axis=2)
    out = np.zeros((joints.shape[0], len(KINECT_V2), 3), np.float32)
    out[..., :2] = joints[..., IMAGE_XY]
    out[..., 2] = tracked
    out[~tracked] = 0
    return out


@dataclass
class SmgInfo:
    """What `SampleXXXX_data.csv` says: frames it declares and the frame rate."""

    num_frames: int
    fps: float


def data_csv_for(skeleton: Path) -> Path:
    """The `SampleXXXX_data.csv` beside a skeleton file."""
    sample = smg_sample_id(skeleton) or Path(skeleton).stem.removesuffix("_skeleton")
    return Path(skeleton).with_name(f"{sample}_data.csv")


def _cells(line: str) -> list[str]:
    return [c for c in re.split(r"[,;\s]+", line.strip()) if c]


def read_smg_data(path: Path) -> SmgInfo:
    """`SampleXXXX_data.csv` (numFrames, fps, maxDepth; optional header) -> SmgInfo."""
    path = Path(path)
    try:
        lines = [(i, _cells(line)) for i, line in
                 enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise PoseError(f"{path}: cannot read ({e})") from e
    names = ["numframes", "fps", "maxdepth"]
    if lines and not all(is_number(c) for c in lines[0][1]):
        names = [c.lower() for c in lines[0][1]]
        lines = lines[1:]
        if "fps" not in names or "numframes" not in names:
            raise PoseError(f"{path}, row 1: header {','.join(names)} has no numFrames and fps "
                            "(expected numFrames,fps,maxDepth)")
    if len(lines) != 1:
        raise PoseError(f"{path}: {len(lines)} rows of values, expected one row "
                        "numFrames,fps,maxDepth (after an optional header)")
    lineno, cells = lines[0]
    if len(cells) < 2 or len(cells) < len(names) or not all(is_number(c) for c in cells):
        raise PoseError(f"{path}, row {lineno}: {','.join(cells)!r} is not numFrames,fps,maxDepth "
                        "as numbers")
    fps = float(cells[names.index("fps")])
    frames = float(cells[names.index("numframes")])
    if not (math.isfinite(fps) and fps > 0):
        raise PoseError(f"{path}, row {lineno}: fps {cells[names.index('fps')]} is not a "
                        "positive number")
    return SmgInfo(num_frames=int(frames) if math.isfinite(frames) else -1, fps=fps)
