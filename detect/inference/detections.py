"""Detections: the type every stage after the model speaks, their temporal IoU, and their file.

Predictions JSON::

    {"results": {video_id: [{"segment": [start_s, end_s], "label": name, "label_id": int,
                             "score": float}, ...]}}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detect.data.annotations import check_label, finite_number, parse_segment, require_keys
from extract.io import atomic_write_json, read_json


class PredictionError(ValueError):
    """A predictions file is malformed."""


@dataclass
class Detections:
    """A set of detections as columns: start, end (n,) float64 seconds; label (n,) int64
    (0-based class); score (n,) float64."""

    start: np.ndarray
    end: np.ndarray
    label: np.ndarray
    score: np.ndarray

    def __post_init__(self) -> None:
        self.start = np.asarray(self.start, np.float64).reshape(-1)
        self.end = np.asarray(self.end, np.float64).reshape(-1)
        self.label = np.asarray(self.label, np.int64).reshape(-1)
        self.score = np.asarray(self.score, np.float64).reshape(-1)
        n = self.start.shape[0]
        if not all(a.shape == (n,) for a in (self.end, self.label, self.score)):
            raise ValueError(
                f"detection columns differ in length: start {n}, end {self.end.shape[0]}, "
                f"label {self.label.shape[0]}, score {self.score.shape[0]}"
            )

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.zeros(0))

    @classmethod
    def concat(cls, parts: Sequence[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.start for p in parts]),
            np.concatenate([p.end for p in parts]),
            np.concatenate([p.label for p in parts]),
            np.concatenate([p.score for p in parts]),
        )

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def take(self, index: np.ndarray) -> Detections:
        """The detections at `index` (integer indices or a boolean mask), in that order."""
        return Detections(self.start[index], self.end[index], self.label[index], self.score[index])

    @property
    def segments(self) -> np.ndarray:
        """(n, 2) float64 (start, end) seconds."""
        return np.stack([self.start, self.end], axis=1)


def tiou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Temporal IoU of every interval in `a` (n, 2) with every one in `b` (m, 2): (n, m) float64.

    Interval length is end - start (no +1). Where the union is zero (two zero-length intervals)
    the IoU is 0, so a zero-length interval never overlaps anything.
    """
    a = np.asarray(a, np.float64).reshape(-1, 2)
    b = np.asarray(b, np.float64).reshape(-1, 2)
    inter = np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0])
    inter = np.maximum(inter, 0.0)
    union = (a[:, None, 1] - a[:, None, 0]) + (b[None, :, 1] - b[None, :, 0]) - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def save_predictions(path: Path | str, preds: dict[str, Detections], classes: list[str],
                     extra: dict[str, dict[str, np.ndarray]] | None = None) -> None:
    """Write predictions JSON atomically (videos sorted, detections by descending score).

    extra: per video, more per-detection columns (name -> (n,) values in the detections' order)
    written as fields of each detection (e.g. `emitted_at` of an online replay)."""
    results: dict[str, list[dict[str, Any]]] = {}
    for vid in sorted(preds):
        d = preds[vid]
        if len(d) and (d.label.min() < 0 or d.label.max() >= len(classes)):
            raise PredictionError(f"{path}: video {vid!r} has labels outside [0, {len(classes)})")
        order = np.argsort(-d.score, kind="stable")
        results[vid] = [
            {
                "segment": [float(d.start[i]), float(d.end[i])],
                "label": classes[int(d.label[i])],
                "label_id": int(d.label[i]),
                "score": float(d.score[i]),
                **{k: float(v[i]) for k, v in (extra or {}).get(vid, {}).items()},
            }
            for i in order
        ]
    atomic_write_json(Path(path), {"results": results})


def _read_json(path: Path) -> Any:
    data = read_json(path, "predictions file", PredictionError)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise PredictionError(f"{path}: expected an object with a 'results' object")
    return data


def _parse_detection(it: Any, at: str, classes: list[str] | None
                     ) -> tuple[float, float, int, float]:
    """(start, end, label_id, score) of one detection."""
    if not isinstance(it, dict):
        raise PredictionError(f"{at}: expected an object, got {it!r}")
    require_keys(it, ("segment", "label_id", "score"), at, PredictionError)
    s, e = parse_segment(it["segment"], at, PredictionError)
    lid = it["label_id"]
    if isinstance(lid, bool) or not isinstance(lid, int) or lid < 0:
        raise PredictionError(f"{at}: label_id must be a non-negative integer, got {lid!r}")
    if classes is not None:
        check_label(lid, it.get("label"), classes, at, PredictionError)
    return s, e, lid, finite_number(it["score"], f"{at}, score", PredictionError)


def load_predictions(path: Path | str, classes: list[str] | None = None) -> dict[str, Detections]:
    """Read and check a predictions JSON. With `classes`, label_id must be in range and agree
    with the label name."""
    path = Path(path)
    out: dict[str, Detections] = {}
    for vid, items in _read_json(path)["results"].items():
        where = f"{path}: video {vid!r}"
        if not isinstance(items, list):
            raise PredictionError(f"{where}: expected a list of detections")
        rows = [_parse_detection(it, f"{where}, detection {i}", classes)
                for i, it in enumerate(items)]
        cols = np.array([(s, e, sc) for s, e, _, sc in rows], np.float64).reshape(-1, 3)
        labels = np.array([lid for _, _, lid, _ in rows], np.int64)
        out[str(vid)] = Detections(cols[:, 0], cols[:, 1], labels, cols[:, 2])
    return out
