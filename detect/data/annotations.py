"""Stage-two annotations: the canonical `annotations.json` every stage-two module reads.

Format::

    {"classes": [name, ...],
     "database": {video_id: {"subset": "train" | "val" | "test",
                             "duration": seconds, "fps": source fps,
                             "annotations": [{"label": name, "label_id": 0-based int,
                                              "segment": [start_s, end_s]}, ...]}}}

Times are seconds of the source video. Zero-length segments (end == start, single-frame gestures)
are allowed, and segments may overlap (co-occurring gestures). `fps` is the source frame rate,
needed to write MiGA submissions in source frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extract.cache import FeatureSet
from extract.io import atomic_write_json, read_json

SUBSETS = ("train", "val", "test")


class AnnotationError(ValueError):
    """An annotation file is malformed or does not fit the feature set."""


@dataclass
class VideoAnnotations:
    """One video's ground truth. segments: (n, 2) float64 seconds; labels: (n,) int64."""

    subset: str
    duration: float
    fps: float
    segments: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Annotations:
    classes: list[str]
    videos: dict[str, VideoAnnotations]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, name: str) -> Annotations:
        """The videos of one subset ("train", "val" or "test"), same classes."""
        if name not in SUBSETS:
            raise AnnotationError(f"unknown subset {name!r}; expected one of {', '.join(SUBSETS)}")
        return Annotations(
            classes=list(self.classes),
            videos={k: v for k, v in self.videos.items() if v.subset == name},
        )

    def video_ids(self) -> list[str]:
        return sorted(self.videos)

    def num_instances(self) -> int:
        return sum(len(v) for v in self.videos.values())

    def to_dict(self) -> dict[str, Any]:
        database = {}
        for vid in self.video_ids():
            v = self.videos[vid]
            database[vid] = {
                "subset": v.subset,
                "duration": float(v.duration),
                "fps": float(v.fps),
                "annotations": [
                    {
                        "label": self.classes[int(lab)],
                        "label_id": int(lab),
                        "segment": [float(s), float(e)],
                    }
                    for (s, e), lab in zip(v.segments, v.labels, strict=True)
                ],
            }
        return {"classes": list(self.classes), "database": database}


def finite_number(value: Any, where: str, error: type[ValueError] = ValueError) -> float:
    """`value` as a float, or `error` naming `where` (bool, NaN and inf are not numbers here)."""
    # bool is an int in Python, but `true` as a time is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def parse_segment(seg: Any, at: str, error: type[ValueError] = ValueError,
                  nonnegative: bool = False) -> tuple[float, float]:
    """A `[start, end]` pair of finite numbers with end >= start (and start >= 0 when
    `nonnegative`), or `error` naming `at`."""
    if not isinstance(seg, (list, tuple)) or len(seg) != 2:
        raise error(f"{at}: segment must be [start, end], got {seg!r}")
    start = finite_number(seg[0], f"{at}, segment start", error)
    end = finite_number(seg[1], f"{at}, segment end", error)
    if nonnegative and start < 0:
        raise error(f"{at}: negative start time {start}")
    if end < start:
        raise error(f"{at}: end {end} is before start {start}")
    return start, end


def check_label(label_id: int, label: Any, classes: list[str], at: str,
                error: type[ValueError] = ValueError) -> None:
    """label_id in range of `classes` and, when `label` is given, naming the same class."""
    if not 0 <= label_id < len(classes):
        raise error(f"{at}: label_id {label_id} out of range [0, {len(classes)})")
    if label is not None and classes[label_id] != label:
        raise error(f"{at}: label {label!r} and label_id {label_id} ({classes[label_id]!r}) "
                    "disagree")


def require_keys(item: dict, keys: tuple[str, ...], at: str,
                 error: type[ValueError] = ValueError) -> None:
    for key in keys:
        if key not in item:
            raise error(f"{at}: key {key!r} is missing")


def _parse_header(where: str, entry: Any) -> tuple[str, float, float]:
    """(subset, duration, fps) of one video's entry."""
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected an object, got {type(entry).__name__}")
    require_keys(entry, ("subset", "duration", "fps", "annotations"), where, AnnotationError)
    subset = entry["subset"]
    if subset not in SUBSETS:
        raise AnnotationError(f"{where}: subset {subset!r} is not one of {', '.join(SUBSETS)}")
    duration = finite_number(entry["duration"], f"{where}, duration", AnnotationError)
    if duration < 0:
        raise AnnotationError(f"{where}: negative duration {duration}")
    fps = finite_number(entry["fps"], f"{where}, fps", AnnotationError)
    if fps <= 0:
        raise AnnotationError(f"{where}: fps must be positive, got {fps}")
    return subset, duration, fps


def _parse_item(at: str, item: Any, classes: list[str]) -> tuple[float, float, int]:
    """(start, end, label_id) of one annotation."""
    if not isinstance(item, dict):
        raise AnnotationError(f"{at}: expected an object, got {item!r}")
    require_keys(item, ("label", "label_id", "segment"), at, AnnotationError)
    label, label_id = item["label"], item["label_id"]
    if label not in classes:
        raise AnnotationError(f"{at}: unknown label {label!r}")
    if isinstance(label_id, bool) or not isinstance(label_id, int):
        raise AnnotationError(f"{at}: label_id must be an integer, got {label_id!r}")
    check_label(label_id, label, classes, at, AnnotationError)
    start, end = parse_segment(item["segment"], at, AnnotationError, nonnegative=True)
    return start, end, label_id


def _parse_video(path: Path, vid: str, entry: Any, classes: list[str]) -> VideoAnnotations:
    where = f"{path}: video {vid!r}"
    subset, duration, fps = _parse_header(where, entry)
    items = entry["annotations"]
    if not isinstance(items, list):
        raise AnnotationError(f"{where}: 'annotations' must be a list")
    segments = np.zeros((len(items), 2), np.float64)
    labels = np.zeros(len(items), np.int64)
    for i, item in enumerate(items):
        start, end, labels[i] = _parse_item(f"{where}, annotation {i}", item, classes)
        segments[i] = (start, end)
    return VideoAnnotations(
        subset=subset, duration=duration, fps=fps, segments=segments, labels=labels
    )


def parse_annotations(data: Any, path: Path | str = "<annotations>") -> Annotations:
    """Check and convert an already-decoded annotation dict (`path` only names it in errors)."""
    path = Path(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object at the top level")
    for key in ("classes", "database"):
        if key not in data:
            raise AnnotationError(f"{path}: key {key!r} is missing")
    classes = data["classes"]
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise AnnotationError(f"{path}: 'classes' must be a list of names")
    if not classes:
        raise AnnotationError(f"{path}: 'classes' is empty")
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise AnnotationError(f"{path}: duplicate class name(s) {', '.join(dupes)}")
    database = data["database"]
    if not isinstance(database, dict):
        raise AnnotationError(f"{path}: 'database' must be an object of videos")
    videos = {str(vid): _parse_video(path, str(vid), e, classes) for vid, e in database.items()}
    return Annotations(classes=list(classes), videos=videos)


def load_annotations(path: Path | str, feature_set: FeatureSet | None = None) -> Annotations:
    """Read and check `annotations.json`; with `feature_set`, every video must have features."""
    path = Path(path)
    data = read_json(path, "annotation file", AnnotationError)
    ann = parse_annotations(data, path)
    if feature_set is not None:
        # Streams (several sets joined): each set must hold every video.
        for fs in getattr(feature_set, "sets", [feature_set]):
            check_features(ann, fs, path)
    return ann


def check_features(ann: Annotations, feature_set: FeatureSet, path: Path | str) -> None:
    """Raise naming the first videos of `ann` that `feature_set` lacks (and why, if known)."""
    missing = [vid for vid in ann.video_ids() if not feature_set.has(vid)]
    if not missing:
        return
    failures = feature_set.failures()
    shown = []
    for vid in missing[:5]:
        reason = failures.get(vid)
        shown.append(f"{vid!r} (extraction failed: {reason})" if reason else repr(vid))
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise AnnotationError(
        f"{path}: {len(missing)} video(s) have no features in {feature_set.path}: "
        f"{', '.join(shown)}{more}"
    )


def save_annotations(path: Path | str, ann: Annotations) -> None:
    """Write `ann` atomically in the canonical format."""
    atomic_write_json(Path(path), ann.to_dict())
