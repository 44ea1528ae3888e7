"""ActivityNet / THUMOS-style JSON -> canonical annotations.

Input: `{"database": {video_id: {"subset": "training"|"validation"|"testing", "duration": s,
"annotations": [{"label": name, "segment": [start_s, end_s]}], "fps": optional}}}`. Subsets are
renamed train/val/test (the canonical names are accepted too); classes are the sorted set of labels
in the file unless the caller gives the list. A video without `fps` gets `default_fps` (only the
MiGA CSV writer uses it). Errors name the file, the video and the 1-based annotation index.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detect.data.converters.common import (
    DatasetError,
    Instance,
    VideoRecord,
    build_annotations,
    summarize,
    write_annotations,
)

SUBSET_NAMES = {
    "training": "train",
    "train": "train",
    "validation": "val",
    "val": "val",
    "testing": "test",
    "test": "test",
}


def _number(where: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DatasetError(f"{where}: {what} {value!r} is not a finite number")
    return float(value)


_Raw = tuple[str, str, float, float, list[tuple[str, float, float]]]


def _read_database(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from e
    db = data.get("database") if isinstance(data, dict) else None
    if not isinstance(db, dict):
        raise DatasetError(f"{path}: no 'database' object at the top level")
    return db


def _segment(at: str, a: Any) -> tuple[str, float, float]:
    """(label, start, end) of one annotation."""
    if not isinstance(a, dict) or "label" not in a or "segment" not in a:
        raise DatasetError(f"{at}: needs 'label' and 'segment'")
    seg = a["segment"]
    if not isinstance(seg, (list, tuple)) or len(seg) != 2:
        raise DatasetError(f"{at}: segment {seg!r} is not [start, end]")
    s, e = (_number(at, "segment time", t) for t in seg)
    if e < s:
        raise DatasetError(f"{at}: segment end {e} is before start {s}")
    if s < 0:
        raise DatasetError(f"{at}: segment start {s} is negative")
    return str(a["label"]), s, e


def _video(where: str, vid: str, v: Any, default_fps: float) -> _Raw:
    """One video's entry, checked, with its labels still names."""
    if not isinstance(v, dict):
        raise DatasetError(f"{where}: entry is not an object")
    subset = SUBSET_NAMES.get(str(v.get("subset", "")).lower())
    if subset is None:
        raise DatasetError(
            f"{where}: subset {v.get('subset')!r} is not training/validation/testing"
        )
    if "duration" not in v:
        raise DatasetError(f"{where}: 'duration' is missing")
    duration = _number(where, "duration", v["duration"])
    fps = _number(where, "fps", v["fps"]) if "fps" in v else float(default_fps)
    if duration < 0 or fps <= 0:
        raise DatasetError(f"{where}: duration must be >= 0 and fps > 0")
    anns = v.get("annotations", [])
    if not isinstance(anns, list):
        raise DatasetError(f"{where}: 'annotations' is not a list")
    segs = [_segment(f"{where}, annotation {k}", a) for k, a in enumerate(anns, start=1)]
    return str(vid), subset, duration, fps, segs


def convert_activitynet(
    json_path: Path,
    out: Path | None,
    classes: Sequence[str] | None = None,
    default_fps: float = 30.0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Convert an ActivityNet-style JSON file; write the canonical annotations to `out`."""
    path = Path(json_path)
    db = _read_database(path)
    raw = [_video(f"{path}: video {vid}", vid, v, default_fps) for vid, v in db.items()]
    names = sorted({lab for *_, segs in raw for lab, _, _ in segs}) if classes is None else classes
    index = {n: i for i, n in enumerate(names)}
    records = []
    for vid, subset, duration, fps, segs in raw:
        insts = []
        for k, (lab, s, e) in enumerate(segs, start=1):
            if lab not in index:
                raise DatasetError(f"{path}: video {vid}, annotation {k}: unknown label {lab!r}")
            insts.append(Instance(index[lab], s, e))
        records.append(VideoRecord(vid, subset, duration, fps, insts))
    ann = build_annotations(list(names), records)
    if out is not None:
        write_annotations(Path(out), ann)
    if verbose:
        print(summarize(ann))
    return ann
