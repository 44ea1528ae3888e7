"""OpenPose keypoints as iMiGUE releases them: reading, writing and the 137-point layout.

The readers and writers live in `extract.pose.openpose` (stage one reads the same files for its
pose feature sets, and `extract` may not import `classify`); this module re-exports them under
the names classify has always used. Every reader returns (T, 137, 3) x, y (pixels) and
confidence per frame (see `extract.pose.openpose` for the layouts it reads). A malformed file or
row is a `DatasetError` naming the file and the frame or row, like every other dataset file
classify reads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from detect.data.converters.common import DatasetError
from extract.pose import PoseError
from extract.pose import openpose as _op
from extract.pose.openpose import (
    BODY_25,
    FACE,
    FIELDS,
    FINGERTIPS,
    LEFT_HAND,
    NUM_KEYPOINTS,
    RIGHT_HAND,
    frame_json,
    write_openpose_dir,
)

__all__ = [
    "BODY_25", "FACE", "FIELDS", "FINGERTIPS", "LEFT_HAND", "NUM_KEYPOINTS", "RIGHT_HAND",
    "frame_json", "read_keypoint_table", "read_keypoints", "read_openpose_dir",
    "read_openpose_frame", "write_openpose_dir",
]  # fmt: skip

R = TypeVar("R")


def _as_dataset_error(fn: Callable[[Path], R]) -> Callable[[Path], R]:
    """`fn` raising classify's DatasetError (same message) where stage one raises PoseError."""

    @functools.wraps(fn)
    def wrapped(path: Path) -> R:
        try:
            return fn(path)
        except PoseError as e:
            raise DatasetError(str(e)) from e

    return wrapped


read_openpose_frame: Callable[[Path], np.ndarray] = _as_dataset_error(_op.read_openpose_frame)
read_openpose_dir: Callable[[Path], np.ndarray] = _as_dataset_error(_op.read_openpose_dir)
read_keypoint_table: Callable[[Path], np.ndarray] = _as_dataset_error(_op.read_keypoint_table)
read_keypoints: Callable[[Path], np.ndarray] = _as_dataset_error(_op.read_keypoints)
