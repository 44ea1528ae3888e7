"""iMiGUE (post-match press conferences, 25 fps, 1280x720).

Two label layouts are read:

- the MiGA release, found recursively: `XXXX/XXXX_label.csv`, no header, rows `class,start,end`
  (0-based inclusive frames at 25 fps), next to the video `XXXX/XXXX.mp4`;
- the original `labels_20200831.csv` with the header `video_id,label_id,start_time,start_frame,
  end_time,end_frame,class,subject_id,subject_gender,subject_nationality,win_or_lose`. Its numeric
  video ids become 4-digit ids (`371` -> `0371`) to match the release folders.

When both are present, labels come from the per-video files and subject ids from the original file.
Classes are 1-31 plus 99 (illustrative, non-micro-gesture), which maps to 32 as in the MiGA
loaders; canonical label ids are 0-31 with the names in `IMIGUE_CLASSES`. Overlapping instances are
kept. The split is cross-subject (the official protocol: `DEFAULT_TRAIN_SUBJECTS` train, every
other subject test) unless the caller gives subjects per subset or a video -> subset mapping.
A video's duration comes from its header when the video is there, otherwise from its last label
(reported in the summary).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detect.data.converters.common import (
    SUBSETS,
    DatasetError,
    Instance,
    VideoRecord,
    build_annotations,
    check_frame_range,
    frames_to_seconds,
    parse_int,
    parse_split_spec,
    probe_video,
    read_csv_rows,
    summarize,
    write_annotations,
)

IMIGUE_CLASSES: tuple[str, ...] = (
    "turtle neck",
    "bulging face or deep breath",
    "touching hat",
    "touching or scratching head",
    "touching or scratching forehead",
    "covering face",
    "rubbing eyes",
    "touching or scratching facial parts",
    "touching ears",
    "biting nails",
    "touching jaw",
    "touching or scratching neck",
    "playing with or adjusting hair",
    "buttoning or pulling collar or adjusting tie",
    "touching or covering suprasternal notch",
    "scratching back",
    "folding arms",
    "dusting off clothes",
    "putting arms behind body",
    "moving torso",
    "sitting straightly",
    "scratching or touching arms",
    "rubbing or holding hands",
    "crossing fingers",
    "minaret gesture",
    "playing with or manipulating objects",
    "holding back arms",
    "head up",
    "pressing lips",
    "arms akimbo",
    "shaking shoulders",
    "illustrative hand gestures",
)

ILLUSTRATIVE_FILE_CLASS = 99  # written as 99 in the files, class 32 in the challenge

# Official cross-subject protocol (iMiGUE `evaluation protocol.pdf`): 37 training subjects.
DEFAULT_TRAIN_SUBJECTS: tuple[int, ...] = (
    2, 4, 5, 6, 9, 10, 12, 13, 14, 15, 17, 18, 20, 21, 22, 23, 25, 28, 29, 30, 31, 35, 36, 38, 39,
    41, 42, 43, 44, 46, 47, 48, 52, 53, 59, 61, 62,
)  # fmt: skip
DEFAULT_IMIGUE_SPLIT = "train=" + ",".join(map(str, DEFAULT_TRAIN_SUBJECTS)) + ";test=rest"
FPS = 25.0

ORIGINAL_COLUMNS = (
    "video_id", "label_id", "start_time", "start_frame", "end_time", "end_frame", "class",
    "subject_id", "subject_gender", "subject_nationality", "win_or_lose",
)  # fmt: skip
_LABEL_RE = re.compile(r"^(\d+)_label\.csv$")


def normalise_video_id(text: str) -> str:
    """Numeric ids are zero-padded to 4 digits (`371` -> `0371`), others kept."""
    return f"{int(text):04d}" if text.isdigit() else text


def _class_index(path: Path, lineno: int, text: str) -> int:
    """File class (1-32, or 99 for illustrative) -> 0-based label id."""
    cls = parse_int(path, lineno, "class", text)
    if cls == ILLUSTRATIVE_FILE_CLASS:
        cls = len(IMIGUE_CLASSES)
    if not 1 <= cls <= len(IMIGUE_CLASSES):
        raise DatasetError(f"{path}, line {lineno}: unknown class {text} (expected 1..31 or 99)")
    return cls - 1


@dataclass
class LabelRow:
    """One label row as written: where it is, 0-based label id, inclusive frames."""

    path: Path
    lineno: int
    label_id: int
    start: int
    end: int


def read_label_csv(path: Path) -> list[LabelRow]:
    """One MiGA per-video `XXXX_label.csv` (rows class,start,end)."""
    out = []
    for lineno, (c_txt, s_txt, e_txt) in read_csv_rows(path, columns=3):
        label = _class_index(path, lineno, c_txt)
        start = parse_int(path, lineno, "start frame", s_txt)
        end = parse_int(path, lineno, "end frame", e_txt)
        out.append(LabelRow(Path(path), lineno, label, start, end))
    return out


OUTCOMES = {"win": "win", "w": "win", "1": "win", "lose": "lose", "l": "lose", "0": "lose",
            "loss": "lose"}


@dataclass
class OriginalLabels:
    """What `labels_20200831.csv` says: label rows, subject and match outcome per video."""

    labels: dict[str, list[LabelRow]]
    subjects: dict[str, int]
    outcomes: dict[str, str]  # "win" | "lose"; empty without a win_or_lose column


def read_original_csv(path: Path) -> OriginalLabels:
    """`labels_20200831.csv` -> label rows, subject ids and win/lose of each video."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    rows = csv.reader(text.splitlines())
    header = [h.strip() for h in next(rows, [])]
    need = ("video_id", "start_frame", "end_frame", "class", "subject_id")
    missing = [c for c in need if c not in header]
    if missing:
        raise DatasetError(f"{path}, line 1: header lacks columns {missing} (got {header})")
    col = {c: header.index(c) for c in need}
    if "win_or_lose" in header:
        col["win_or_lose"] = header.index("win_or_lose")
    labels: dict[str, list[LabelRow]] = {}
    subjects: dict[str, int] = {}
    outcomes: dict[str, str] = {}
    for lineno, row in enumerate(rows, start=2):
        if not row or all(not f.strip() for f in row):
            continue
        if len(row) != len(header):
            raise DatasetError(
                f"{path}, line {lineno}: expected {len(header)} columns, got {len(row)}"
            )
        f = {c: row[i].strip() for c, i in col.items()}
        vid = normalise_video_id(f["video_id"])
        if not vid:
            raise DatasetError(f"{path}, line {lineno}: empty video_id")
        label = _class_index(path, lineno, f["class"])
        start = parse_int(path, lineno, "start_frame", f["start_frame"])
        end = parse_int(path, lineno, "end_frame", f["end_frame"])
        subject = parse_int(path, lineno, "subject_id", f["subject_id"])
        if subjects.setdefault(vid, subject) != subject:
            raise DatasetError(
                f"{path}, line {lineno}: video {vid} has subject {subject}, "
                f"earlier rows say {subjects[vid]}"
            )
        if "win_or_lose" in f:
            outcome = OUTCOMES.get(f["win_or_lose"].lower())
            if outcome is None:
                raise DatasetError(f"{path}, line {lineno}: win_or_lose {f['win_or_lose']!r} is "
                                   "not win or lose")
            if outcomes.setdefault(vid, outcome) != outcome:
                raise DatasetError(f"{path}, line {lineno}: video {vid} is a {outcome}, earlier "
                                   f"rows say {outcomes[vid]}")
        labels.setdefault(vid, []).append(LabelRow(path, lineno, label, start, end))
    return OriginalLabels(labels, subjects, outcomes)


def rows_to_instances(
    rows: list[LabelRow], fps: float, frame_base: int, num_frames: int | None
) -> list[Instance]:
    """Check each row's frames against the video and convert them to seconds."""
    out = []
    for r in rows:
        check_frame_range(r.path, r.lineno, r.start, r.end, frame_base, num_frames)
        s, e = frames_to_seconds(r.start, r.end, fps, frame_base)
        out.append(Instance(r.label_id, s, e))
    return out


def subject_split(spec: str) -> tuple[dict[int, str], str | None]:
    """`train=2,4-6;val=7;test=rest` -> ({subject: subset}, subset of the other subjects)."""
    rest = None
    parts = []
    for part in spec.replace(";", " ").split():
        name, _, value = part.partition("=")
        if value.strip() == "rest":
            if name not in SUBSETS or rest is not None:
                raise ValueError(f"bad split {part!r} in {spec!r}")
            rest = name
        else:
            parts.append(part)
    table = {n: name for name, nums in parse_split_spec(";".join(parts)).items() for n in nums}
    return table, rest


def find_one(root: Path, pattern: str) -> Path | None:
    found = sorted(p for p in root.rglob(pattern) if p.is_file())
    if len(found) > 1:
        raise DatasetError(f"{root}: more than one {pattern}: {', '.join(map(str, found))}")
    return found[0] if found else None


def find_label_files(root: Path) -> dict[str, Path]:
    """Every MiGA per-video `XXXX_label.csv` under `root`: {video id: path}."""
    per_video: dict[str, Path] = {}
    for p in sorted(Path(root).rglob("*_label.csv")):
        m = _LABEL_RE.match(p.name)
        if not m:
            continue
        vid = m.group(1)
        if vid in per_video:
            raise DatasetError(f"{root}: video {vid} found twice: {per_video[vid]} and {p}")
        per_video[vid] = p
    return per_video


def _label_sources(root: Path, labels_csv: Path | None
                   ) -> tuple[Path, dict[str, Path], Path | None]:
    """(folder of the videos, per-video label files, the original label CSV or None)."""
    if root.is_file():
        return root.parent, {}, root
    if not root.is_dir():
        raise DatasetError(f"{root}: no such file or directory")
    if labels_csv is None:
        labels_csv = find_one(root, "labels_*.csv")
    return root, find_label_files(root), labels_csv


def _subset_lookup(split: Mapping[str, str] | str | None, subjects: dict[str, int],
                   per_video: dict[str, Path], root: Path) -> Callable[[str], str | None]:
    """video id -> subset (None: in no subset of the split)."""
    if isinstance(split, Mapping):
        return dict(split).get
    table, rest = subject_split(split if split is not None else DEFAULT_IMIGUE_SPLIT)

    def subset_of(vid: str) -> str | None:
        if vid not in subjects:
            raise DatasetError(
                f"{per_video.get(vid, root)}: no subject id for video {vid} (give the "
                f"original labels CSV, or a video -> subset mapping as the split)"
            )
        return table.get(subjects[vid], rest)

    return subset_of


def _record(vid: str, label_path: Path | None, rows: list[LabelRow], folder: Path,
            subset: str | None, where: Path | None, fps: float, frame_base: int) -> VideoRecord:
    """One video's instances; its duration from the video file, else its last label's end."""
    video = video_for(vid, label_path.parent if label_path else folder)
    probe = probe_video(video) if video is not None else None
    insts = rows_to_instances(rows, fps, frame_base, probe.num_frames if probe else None)
    if subset is None:
        raise DatasetError(f"{where}: video {vid} is in no subset of the split")
    if probe is not None:
        duration = probe.num_frames / fps if probe.num_frames else probe.duration
    else:
        duration = max((i.end_s for i in insts), default=0.0)
    return VideoRecord(vid, subset, duration, fps, insts, duration_guessed=probe is None)


def convert_imigue(
    root: Path,
    out: Path | None,
    split: Mapping[str, str] | str | None = None,
    labels_csv: Path | None = None,
    fps: float = FPS,
    frame_base: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Convert iMiGUE under `root` (a folder, or the original CSV itself) to canonical annotations.

    split: None (the official cross-subject protocol), a subject spec `train=2,4-6;val=7;test=rest`,
    or a mapping video id -> subset. labels_csv: the original label file (default: the one
    `labels_*.csv` found under root, if any), used for labels when there are no per-video files and
    for subject ids.
    """
    root = Path(root)
    if frame_base not in (0, 1):
        raise ValueError(f"frame_base must be 0 or 1, got {frame_base}")
    folder, per_video, labels_csv = _label_sources(root, labels_csv)
    original: dict[str, list[LabelRow]] = {}
    subjects: dict[str, int] = {}
    if labels_csv is not None:
        orig = read_original_csv(labels_csv)
        original, subjects = orig.labels, orig.subjects
    if not per_video and not original:
        raise DatasetError(f"{root}: no iMiGUE labels (XXXX/XXXX_label.csv or labels_*.csv)")
    subset_of = _subset_lookup(split, subjects, per_video, root)
    records = []
    for vid in sorted(per_video or original):
        label_path = per_video.get(vid)
        rows = read_label_csv(label_path) if label_path is not None else original[vid]
        records.append(_record(vid, label_path, rows, folder, subset_of(vid),
                               label_path or labels_csv, fps, frame_base))
    ann = build_annotations(IMIGUE_CLASSES, records)
    if out is not None:
        write_annotations(Path(out), ann)
    guessed = [r.video_id for r in records if r.duration_guessed]
    if verbose:
        print(summarize(ann))
        if guessed:
            print(
                f"{len(guessed)} videos have no video file; their duration is their last label's "
                f"end: {', '.join(guessed[:10])}{' ...' if len(guessed) > 10 else ''}"
            )
    return ann


def video_for(vid: str, folder: Path) -> Path | None:
    for name in (f"{vid}.mp4", f"{vid}_color.mp4"):
        if (folder / name).is_file():
            return folder / name
    nested = folder / vid / f"{vid}.mp4"
    return nested if nested.is_file() else None
