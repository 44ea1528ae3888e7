"""iMiGUE micro-gesture clips as released: which clips, their class, subject, split and skeleton.

A clip is one labelled segment of a long video (`XXXX/XXXX_label.csv` rows `class,start,end`,
0-based inclusive frames at 25 fps; or the original `labels_20200831.csv`), with class ids 1-31 and
99 -> 32 as in the MiGA loaders (0-based label ids 0-31 here, names `IMIGUE_CLASSES`). Subjects and
each video's win/lose come from the original CSV; the split is the official cross-subject one
unless another subject spec is given (`detect.datasets.imigue.subject_split`).

A video's skeleton is looked for, in this order, in its folder (`XXXX/`):
`XXXX_light_hand.csv`, `XXXX_light.csv`, `XXXX_keypoints.xlsx`, `XXXX.xlsx`, `XXXX_openpose/`
(JSON per frame); then under the root: `Data/skeleton/raw/<id>/` or `skeleton/raw/<id>/` (the raw
OpenPose folders, `<id>` the number without zero padding, as in the iMiGUE repository) or with the
padded id.

The clips of one new video to label (`python -m classify predict --clips`) are read by
`read_clips_csv`: the release's own label file (`class,start,end`) or, without classes, `start,end`
rows; 0-based inclusive frames, an optional header line; a clip's row is its line number, as here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from detect.data.converters.common import DatasetError, parse_int, read_csv_rows
from detect.data.converters.imigue import (
    DEFAULT_IMIGUE_SPLIT,
    IMIGUE_CLASSES,
    LabelRow,
    find_label_files,
    find_one,
    read_label_csv,
    read_original_csv,
    subject_split,
    video_for,
)

UNLABELLED = -1  # the label of a clip whose class is not known (a clip to predict)


@dataclass(frozen=True)
class Clip:
    """One labelled segment: video id, row in its label file, 0-based label (`UNLABELLED` when
    not known), inclusive frames."""

    video: str
    row: int
    label: int
    start: int
    end: int
    subject: int
    subset: str

    @property
    def key(self) -> str:
        return f"{self.video}/{self.row}"


@dataclass
class ClipIndex:
    root: Path
    classes: tuple[str, ...]
    clips: list[Clip]
    outcomes: dict[str, str]  # video id -> "win" | "lose"
    skeletons: dict[str, Path]  # video id -> skeleton file or folder
    videos: dict[str, Path]  # video id -> mp4

    def subset(self, name: str) -> list[Clip]:
        return [c for c in self.clips if c.subset == name]


def _clip(video: str, r: LabelRow, subject: int, subset: str) -> Clip:
    """A label row as a clip; a DatasetError naming file and line when its frames are not one."""
    if r.end < r.start or r.start < 0:
        raise DatasetError(f"{r.path}, line {r.lineno}: frames {r.start}..{r.end} are not a "
                           "clip (negative or end before start)")
    return Clip(video, r.lineno, r.label_id, r.start, r.end, subject, subset)


def find_skeleton(root: Path, vid: str, folder: Path | None) -> Path | None:
    """Where video `vid`'s OpenPose keypoints are (see the module docstring), or None."""
    candidates = []
    if folder is not None:
        candidates += [folder / f"{vid}_light_hand.csv", folder / f"{vid}_light.csv",
                       folder / f"{vid}_keypoints.xlsx", folder / f"{vid}.xlsx",
                       folder / f"{vid}_openpose"]
    ids = [str(int(vid)), vid] if vid.isdigit() else [vid]
    for base in (root / "Data" / "skeleton" / "raw", root / "skeleton" / "raw"):
        candidates += [base / i for i in ids]
    for c in candidates:
        if c.is_file() or (c.is_dir() and any(c.glob("*_keypoints.json"))):
            return c
    return None


def index_imigue(root: Path, split: str | None = None, labels_csv: Path | None = None,
                 need_skeleton: bool = True) -> ClipIndex:
    """All clips under `root` (see the module docstring). A label row that is malformed or whose
    end precedes its start is a DatasetError naming file and line; so is a video without a
    subject id (needed for the cross-subject split) or, when `need_skeleton`, without a skeleton.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    labels_csv = labels_csv or find_one(root, "labels_*.csv")
    per_video = find_label_files(root)
    original = read_original_csv(labels_csv) if labels_csv is not None else None
    if not per_video and original is None:
        raise DatasetError(f"{root}: no iMiGUE labels (XXXX/XXXX_label.csv or labels_*.csv)")
    subjects = original.subjects if original else {}
    table, rest = subject_split(split if split is not None else DEFAULT_IMIGUE_SPLIT)
    clips: list[Clip] = []
    skeletons: dict[str, Path] = {}
    videos: dict[str, Path] = {}
    for vid in sorted(per_video or (original.labels if original else {})):
        label_path = per_video.get(vid)
        rows = read_label_csv(label_path) if label_path else original.labels[vid]
        if vid not in subjects:
            raise DatasetError(f"{label_path or root}: no subject id for video {vid} (the "
                               "original labels_*.csv gives them)")
        subset = table.get(subjects[vid], rest)
        if subset is None:
            continue  # a subject outside every subset of the spec
        folder = label_path.parent if label_path else None
        skel = find_skeleton(root, vid, folder)
        if skel is None and need_skeleton:
            raise DatasetError(f"{folder or root}: no skeleton for video {vid} (looked for "
                               f"{vid}_light_hand.csv, {vid}_light.csv, {vid}.xlsx, "
                               f"{vid}_openpose/, Data/skeleton/raw/{vid}/)")
        if skel is not None:
            skeletons[vid] = skel
        video = video_for(vid, folder) if folder else None
        if video is not None:
            videos[vid] = video
        clips += [_clip(vid, r, subjects[vid], subset) for r in rows]
    return ClipIndex(root, IMIGUE_CLASSES, clips, dict(original.outcomes) if original else {},
                     skeletons, videos)


def read_clips_csv(path: Path, video: str) -> list[Clip]:
    """The clips of one video to label (see the module docstring): `class,start,end` rows (the
    release's `XXXX_label.csv`, classes 1-31 or 99) or `start,end` rows (label `UNLABELLED`).
    A malformed row is a DatasetError naming file and line; subject -1, subset "predict"."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the clips file ({e})") from e
    first = next((i for i, line in enumerate(lines, 1) if line.strip()), None)
    if first is None:
        raise DatasetError(f"{path}: no clips (rows class,start,end or start,end)")
    width = len(lines[first - 1].split(","))
    if width == 3:
        rows = read_label_csv(path)
    elif width == 2:
        rows = [LabelRow(path, n, UNLABELLED, parse_int(path, n, "start frame", a),
                         parse_int(path, n, "end frame", b))
                for n, (a, b) in read_csv_rows(path, columns=2)]
    else:
        raise DatasetError(f"{path}, line {first}: {width} columns; a clips file has rows "
                           "class,start,end (the release's XXXX_label.csv) or start,end")
    if not rows:
        raise DatasetError(f"{path}: no clips (rows class,start,end or start,end)")
    return [_clip(video, r, -1, "predict") for r in rows]
