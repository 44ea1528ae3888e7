"""Pose feature sets: skeletons as a second stream beside the I3D features.

`python -m extract pose` reads skeletons (SMG's Kinect CSVs, iMiGUE's OpenPose keypoints, or
BlazePose run on plain videos), maps them to one common joint layout (`joints`), samples them on
the same 10 fps grid as the RGB frames and writes per-step features under the feature cache's
contract (`extract.cache`): one HDF5 file per video, `features` (T, C) float32 with the I3D
sets' `timestamps`, resume, failures.json.

Modules, lowest first: `joints` (layouts and the mapping table), `kinect`, `openpose` and
`mediapipe_pose` (the readers of each source), `features` (source frames -> 10 fps ticks ->
steps), `run` (the run: sources, settings, resume, failures).
"""

from __future__ import annotations

import math
from pathlib import Path

from extract.io import is_number


class PoseError(ValueError):
    """A skeleton file or folder is missing, malformed or unusable; the message names the file
    and, where it applies, the row or frame."""


def row_numbers(path: Path, lineno: int, cells: list[str]) -> list[float]:
    """A table row's cells as finite floats; PoseError naming the file and 1-based row."""
    try:
        values = [float(c) for c in cells]
    except ValueError:
        bad = next(c for c in cells if not is_number(c))
        raise PoseError(f"{path}, row {lineno}: {bad.strip()!r} is not a number") from None
    if not all(math.isfinite(v) for v in values):
        raise PoseError(f"{path}, row {lineno}: a value is not finite")
    return values
