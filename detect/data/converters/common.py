"""Shared pieces of the dataset converters: the frame/second convention, row parsing, the canonical
annotation dict, its summary, and a cheap video probe.

Frame convention (the one place it is defined): a label row `class,a,b` names the *inclusive* frame
range a..b of the source video, whose first frame is numbered `base` (0 or 1). In time that gesture
covers [a - base, b - base + 1) frame periods, so

    start_s = (a - base) / fps,    end_s = (b - base + 1) / fps

and back (what a MiGA CSV writer must use)

    a = round(start_s * fps) + base,    b = max(a, round(end_s * fps) - 1 + base)

with round-half-up. The pair is an exact round trip for every integer a <= b. A single-frame gesture
(a == b) lasts one frame period; a zero-length segment in seconds maps back to a single frame.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extract.io import atomic_write_json, is_number

SUBSETS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent (the message names the file/line)."""


def frames_to_seconds(
    start_frame: int, end_frame: int, fps: float, base: int = 0
) -> tuple[float, float]:
    """Inclusive frame range [start_frame, end_frame] (first frame = `base`) -> [start_s, end_s)."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return (start_frame - base) / fps, (end_frame - base + 1) / fps


def frame_ranges(
    start_s: np.ndarray, end_s: np.ndarray, fps: float, base: int = 0,
    num_frames: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """[start_s, end_s) in seconds (n,) -> inclusive frame ranges (start (n,), end (n,)) int64.

    The inverse of `frames_to_seconds`: start = round(s*fps), end = round(e*fps) - 1 (halves
    up), never before start; with `num_frames`, clamped to the video's frames; then `base` added.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    a = np.floor(np.asarray(start_s, np.float64) * fps + 0.5).astype(np.int64)
    b = np.floor(np.asarray(end_s, np.float64) * fps + 0.5).astype(np.int64) - 1
    if num_frames is not None:
        last = max(int(num_frames) - 1, 0)
        a, b = np.clip(a, 0, last), np.clip(b, 0, last)
    return a + base, np.maximum(a, b) + base


def seconds_to_frames(start_s: float, end_s: float, fps: float, base: int = 0) -> tuple[int, int]:
    """[start_s, end_s) in seconds -> inclusive frame range (start_frame, end_frame), base first.

    The inverse of `frames_to_seconds`; the end frame is never before the start frame.
    """
    a, b = frame_ranges(np.array([start_s]), np.array([end_s]), fps, base)
    return int(a[0]), int(b[0])


@dataclass
class Instance:
    """One annotated gesture: 0-based class index and [start_s, end_s) in seconds."""

    label_id: int
    start_s: float
    end_s: float


@dataclass
class VideoRecord:
    """One video of a converted dataset."""

    video_id: str
    subset: str
    duration: float
    fps: float
    instances: list[Instance] = field(default_factory=list)
    # Set when the duration could not be read from the data (no video, no frame count).
    duration_guessed: bool = False


def build_annotations(classes: Sequence[str], videos: Sequence[VideoRecord]) -> dict[str, Any]:
    """The canonical annotations dict (see the top-level README) from converted records."""
    database: dict[str, Any] = {}
    for v in sorted(videos, key=lambda r: r.video_id):
        if v.subset not in SUBSETS:
            raise DatasetError(f"video {v.video_id}: subset {v.subset!r} is not one of {SUBSETS}")
        if v.video_id in database:
            raise DatasetError(f"video {v.video_id} appears twice")
        insts = sorted(v.instances, key=lambda i: (i.start_s, i.end_s, i.label_id))
        database[v.video_id] = {
            "subset": v.subset,
            "duration": float(v.duration),
            "fps": float(v.fps),
            "annotations": [
                {
                    "label": classes[i.label_id],
                    "label_id": int(i.label_id),
                    "segment": [float(i.start_s), float(i.end_s)],
                }
                for i in insts
            ],
        }
    return {"classes": list(classes), "database": database}


def write_annotations(out: Path, ann: Mapping[str, Any]) -> None:
    """Write the canonical dict atomically (readers never see half a file)."""
    atomic_write_json(Path(out), ann)


def summarize(ann: Mapping[str, Any]) -> str:
    """A table of instance counts per class and subset, plus videos and hours per subset."""
    classes = list(ann["classes"])
    db = ann["database"]
    counts = {s: [0] * len(classes) for s in SUBSETS}
    nvid = dict.fromkeys(SUBSETS, 0)
    hours = dict.fromkeys(SUBSETS, 0.0)
    for v in db.values():
        nvid[v["subset"]] += 1
        hours[v["subset"]] += v["duration"] / 3600.0
        for a in v["annotations"]:
            counts[v["subset"]][a["label_id"]] += 1
    width = max([len("class")] + [len(c) for c in classes])

    def row(key: str, name: str, values: list[Any], fmt: str = "d") -> str:
        cells = "".join(f"{v:>8{fmt}}" for v in [*values, sum(values)])
        return f"{key:>3}  {name:<{width}}{cells}"

    head = f"{'id':>3}  {'class':<{width}}" + "".join(f"{s:>8}" for s in [*SUBSETS, "total"])
    lines = [head, "-" * len(head)]
    for k, name in enumerate(classes):
        lines.append(row(str(k), name, [counts[s][k] for s in SUBSETS]))
    lines.append("-" * len(head))
    lines.append(row("", "instances", [sum(counts[s]) for s in SUBSETS]))
    lines.append(row("", "videos", [nvid[s] for s in SUBSETS]))
    lines.append(row("", "hours", [hours[s] for s in SUBSETS], ".2f"))
    return "\n".join(lines)


def read_csv_rows(
    path: Path, columns: int, allow_header: bool = True
) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based line number, stripped fields) of a header-less CSV with `columns` columns.

    Blank lines are skipped. A first line made only of non-numeric words (e.g. `class,start,end`) is
    taken as a header and skipped when `allow_header`; any other malformed row is an error.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a text CSV file ({e})") from e
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        fields = [f.strip() for f in row]
        if not fields or all(f == "" for f in fields):
            continue
        if (
            lineno == 1
            and allow_header
            and all(f and not is_number(f) and f.replace("_", "").isalpha() for f in fields)
        ):
            continue
        if len(fields) != columns:
            raise DatasetError(
                f"{path}, line {lineno}: expected {columns} columns, got {len(fields)}: {row}"
            )
        yield lineno, fields


def parse_int(path: Path, lineno: int, what: str, text: str) -> int:
    """An integer field (`12` or `12.0`) or a DatasetError naming the file, line and field."""
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{path}, line {lineno}: {what} {text!r} is not a number") from None
    if not math.isfinite(value) or value != int(value):
        raise DatasetError(f"{path}, line {lineno}: {what} {text!r} is not an integer")
    return int(value)


def parse_float(path: Path, lineno: int, what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{path}, line {lineno}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{path}, line {lineno}: {what} {text!r} is not finite")
    return value


def check_frame_range(
    path: Path, lineno: int, start: int, end: int, base: int, num_frames: int | None
) -> None:
    """Errors for a label's inclusive frame range that is reversed or outside the video."""
    if end < start:
        raise DatasetError(f"{path}, line {lineno}: end frame {end} is before start frame {start}")
    if start < base:
        raise DatasetError(
            f"{path}, line {lineno}: start frame {start} is before the first frame ({base})"
        )
    if num_frames is not None and end - base >= num_frames:
        raise DatasetError(
            f"{path}, line {lineno}: end frame {end} is beyond the video's {num_frames} frames "
            f"(last frame {num_frames - 1 + base} with frame base {base})"
        )


@dataclass
class VideoProbe:
    """What a video's container says: average frame rate, frame count and duration in seconds."""

    fps: float
    num_frames: int
    duration: float


def probe_video(path: Path) -> VideoProbe:
    """Read a video's header (no decoding). The frame count falls back to duration * fps."""
    import av  # local: only the converters that look at videos need PyAV

    path = Path(path)
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise DatasetError(f"{path}: no video stream")
            st = c.streams.video[0]
            rate = st.average_rate or st.guessed_rate or st.base_rate
            if not rate:
                raise DatasetError(f"{path}: the video stream has no frame rate")
            fps = float(rate)
            if st.duration is not None and st.time_base is not None:
                duration = float(st.duration * st.time_base)
            elif c.duration is not None:
                duration = c.duration / 1_000_000
            else:
                duration = 0.0
            frames = int(st.frames) if st.frames else int(math.floor(duration * fps + 0.5))
    except av.error.FFmpegError as e:
        raise DatasetError(f"{path}: not a readable video ({e})") from e
    if frames > 0 and duration <= 0:
        duration = frames / fps
    return VideoProbe(fps=fps, num_frames=frames, duration=duration)


def parse_ranges(spec: str) -> list[int]:
    """`1-30,33,35-36` -> [1..30, 33, 35, 36]."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise ValueError(f"bad range {part!r} in {spec!r} (expected N or N-M)") from None
        if b < a:
            raise ValueError(f"bad range {part!r} in {spec!r}: end before start")
        out.extend(range(a, b + 1))
    return out


def parse_split_spec(spec: str) -> dict[str, list[int]]:
    """`train=1-30;val=31-35;test=36-40` -> {subset: [numbers]}; subsets train/val/test only.

    Subsets are separated by `;` or by whitespace; the numbers are what each converter's ids mean
    (SMG sample numbers, iMiGUE subject ids).
    """
    out: dict[str, list[int]] = {}
    for part in spec.replace(";", " ").split():
        name, sep, ranges = part.partition("=")
        name = name.strip()
        if not sep or name not in SUBSETS:
            raise ValueError(f"bad split {part!r} in {spec!r} (expected train=.., val=.., test=..)")
        out.setdefault(name, []).extend(parse_ranges(ranges))
    seen: dict[int, str] = {}
    for name, nums in out.items():
        for n in nums:
            if n in seen and seen[n] != name:
                raise ValueError(f"split {spec!r}: {n} is in both {seen[n]} and {name}")
            seen[n] = name
    return out
