"""MiGA online-recognition submission files: one CSV per video, frames of the source video.

Conventions (reference note miga-metric-and-data.md §1.1, §2.1; the layout of the organisers'
label files, which the 2023 submissions copied):
- file `<video_id>_prediction.csv`, no header, one row per detection: `class,start_frame,end_frame`;
- class is 1-based (label_id + 1);
- frames are indices at the video's source fps (the annotation's `fps`), 0-based by default
  (`frame_base`; the release's base is ambiguous and ±1 frame is negligible at tIoU 0.3), an
  inclusive range as in the label files, converted by `detect.datasets.common.frame_ranges` (the
  inverse of the converters' `frames_to_seconds`), clamped to the video's frames, end >= start;
- rows in time order (start, end, class), which the matching rule does not depend on.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from detect.data.annotations import Annotations
from detect.data.converters.common import frame_ranges
from detect.inference.detections import Detections
from extract.io import atomic_write_bytes

SUFFIX = "_prediction.csv"


class SubmissionError(ValueError):
    """A submission cannot be written or a CSV is malformed."""


def miga_rows(d: Detections, fps: float, duration: float, frame_base: int = 0) -> np.ndarray:
    """(n, 3) int64 rows (1-based class, start frame, end frame) in time order."""
    num_frames = max(1, int(np.floor(duration * fps + 0.5)))
    start, end = frame_ranges(d.start, d.end, fps, frame_base, num_frames)
    rows = np.stack([d.label + 1, start, end], axis=1).astype(np.int64)
    order = np.lexsort((rows[:, 0], rows[:, 2], rows[:, 1]))
    return rows[order]


def write_miga_csvs(
    predictions: dict[str, Detections],
    annotations: Annotations,
    out_dir: Path | str,
    subset: str | None = None,
    frame_base: int = 0,
) -> list[Path]:
    """Write one MiGA CSV per video; returns the paths written.

    With `subset`, every video of that subset gets a file (empty when it has no predictions) and
    predictions for other videos are ignored; without it, every predicted video gets one. A
    predicted video unknown to the annotations is an error (its source fps is unknown).
    """
    out_dir = Path(out_dir)
    if subset is not None:
        vids = annotations.subset(subset).video_ids()
    else:
        unknown = sorted(set(predictions) - set(annotations.videos))
        if unknown:
            raise SubmissionError(
                f"no annotation (source fps) for predicted video(s) {', '.join(unknown[:5])}"
            )
        vids = sorted(predictions)
    paths = []
    for vid in vids:
        v = annotations.videos[vid]
        d = predictions.get(vid, Detections.empty())
        rows = miga_rows(d, v.fps, v.duration, frame_base)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows.tolist())
        path = out_dir / f"{vid}{SUFFIX}"
        atomic_write_bytes(path, buf.getvalue().encode())
        paths.append(path)
    return paths


def read_miga_csv(path: Path | str) -> np.ndarray:
    """Read a MiGA CSV (`class,start_frame,end_frame`, no header): (n, 3) int64."""
    path = Path(path)
    rows = []
    with open(path, newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 3:
                raise SubmissionError(f"{path}, line {lineno}: expected 3 fields, got {row!r}")
            try:
                c, s, e = (int(x) for x in row)
            except ValueError as err:
                raise SubmissionError(f"{path}, line {lineno}: not integers: {row!r}") from err
            if c < 1 or s < 0 or e < s:
                raise SubmissionError(
                    f"{path}, line {lineno}: need class >= 1 and 0 <= start <= end, got {row!r}"
                )
            rows.append((c, s, e))
    return np.array(rows, np.int64).reshape(-1, 3)
