"""SMG (Spontaneous Micro-Gesture) as released for the MiGA online recognition track.

Layout, found recursively under the root (release folders such as `smg_rgb_train/` may nest it)::

    SampleXXXX/SampleXXXX_color.mp4         RGB video (1920x1080, about 28-30 fps)
    SampleXXXX/SampleXXXX_finelabels.csv    no header; one row per gesture: class,start,end
    SampleXXXX/SampleXXXX_data.csv          one row: numFrames,fps,maxDepth
    SampleXXXX/SampleXXXX_skeleton.csv      Kinect joints per frame (not read here)

Classes are 1-17 in the files (17 = illustrative hand gestures, annotated like the others) and
0-16 in the canonical annotations. Label frames are inclusive; the frame base (0 or 1) is a setting
(see `detect.datasets.common` for the conversion). A sequence without `_finelabels.csv` (a hidden
test set) is kept with no annotations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detect.data.converters.common import (
    DatasetError,
    Instance,
    VideoRecord,
    build_annotations,
    check_frame_range,
    frames_to_seconds,
    parse_float,
    parse_int,
    parse_split_spec,
    probe_video,
    read_csv_rows,
    summarize,
    write_annotations,
)

SMG_CLASSES: tuple[str, ...] = (
    "turtling neck and shoulder",
    "rubbing eyes and forehead",
    "folding arms",
    "touching or covering suprasternal notch",
    "moving legs",
    "touching or scratching neck",
    "folding arms behind body",
    "rubbing hands and crossing fingers",
    "arms akimbo",
    "crossing legs",
    "scratching some other body part",
    "scratching or touching facial parts other than eyes",
    "playing with or adjusting hair",
    "holding arms",
    "pulling shirt collar",
    "playing with jewellery or manipulating objects",
    "illustrative hand gestures",
)

# The MiGA 2024-2026 split: Sample0001-0030 train, 0031-0035 validate, 0036-0040 (hidden) test.
DEFAULT_SMG_SPLIT = "train=1-30;val=31-35;test=36-40"

_FILE_RE = re.compile(r"^(Sample\d+)_(color\.mp4|finelabels\.csv|data\.csv)$")
def find_videos(root: Path) -> list[Path]:
    """Every `SampleXXXX_color.mp4` under `root` (recursive), sorted by video id."""
    return [s.video for s in find_sequences(root).values() if s.video is not None]


@dataclass
class SmgSequence:
    """The files of one SMG sequence (any of them may be missing)."""

    video_id: str
    folder: Path
    video: Path | None = None
    labels: Path | None = None
    data: Path | None = None


def find_sequences(root: Path) -> dict[str, SmgSequence]:
    """All sequences under `root`, by id; the same id in two folders is an error."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    seqs: dict[str, SmgSequence] = {}
    for p in sorted(root.rglob("Sample*_*")):
        m = _FILE_RE.match(p.name)
        hidden = any(part.startswith(".") for part in p.relative_to(root).parts)
        if not m or hidden or not p.is_file():
            continue
        vid, kind = m.group(1), m.group(2)
        seq = seqs.setdefault(vid, SmgSequence(video_id=vid, folder=p.parent))
        if seq.folder != p.parent:
            raise DatasetError(
                f"{root}: sequence {vid} found twice, in {seq.folder} and in {p.parent}"
            )
        attr = {"color.mp4": "video", "finelabels.csv": "labels", "data.csv": "data"}[kind]
        setattr(seq, attr, p)
    return dict(sorted(seqs.items()))


def read_data_csv(path: Path) -> tuple[int, float]:
    """`SampleXXXX_data.csv` -> (number of frames, fps). One row `numFrames,fps,maxDepth`."""
    rows = list(read_csv_rows(path, columns=3))
    if len(rows) != 1:
        where = f"line {rows[1][0]}" if len(rows) > 1 else "no data row"
        raise DatasetError(f"{path}: expected one row numFrames,fps,maxDepth ({where})")
    lineno, (frames_txt, fps_txt, _depth) = rows[0]
    num_frames = parse_int(path, lineno, "numFrames", frames_txt)
    fps = parse_float(path, lineno, "fps", fps_txt)
    if num_frames <= 0 or fps <= 0:
        raise DatasetError(f"{path}, line {lineno}: numFrames and fps must be positive")
    return num_frames, fps


def read_finelabels(
    path: Path, num_classes: int, fps: float, frame_base: int = 0, num_frames: int | None = None
) -> list[Instance]:
    """Rows `class,start,end` (class 1..num_classes, inclusive frames) -> instances in seconds."""
    out: list[Instance] = []
    for lineno, (c_txt, s_txt, e_txt) in read_csv_rows(path, columns=3):
        cls = parse_int(path, lineno, "class", c_txt)
        start = parse_int(path, lineno, "start frame", s_txt)
        end = parse_int(path, lineno, "end frame", e_txt)
        if not 1 <= cls <= num_classes:
            raise DatasetError(
                f"{path}, line {lineno}: unknown class {cls} (expected 1..{num_classes})"
            )
        check_frame_range(path, lineno, start, end, frame_base, num_frames)
        s, e = frames_to_seconds(start, end, fps, frame_base)
        out.append(Instance(label_id=cls - 1, start_s=s, end_s=e))
    return out


def split_lookup(split: Mapping[str, str] | str | None) -> Callable[[str], str | None]:
    """A function video id -> subset (or None) for a split spec, a mapping, or the default."""
    if split is None:
        split = DEFAULT_SMG_SPLIT
    if isinstance(split, str):
        by_number = {n: name for name, nums in parse_split_spec(split).items() for n in nums}
        return lambda vid: by_number.get(int(vid[len("Sample") :]))
    mapping = dict(split)
    return mapping.get


def convert_smg(
    root: Path,
    out: Path | None,
    split: Mapping[str, str] | str | None = None,
    frame_base: int = 0,
    classes: Sequence[str] | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Convert an SMG release under `root` to the canonical annotations; write them to `out`.

    split: None (the MiGA split, `DEFAULT_SMG_SPLIT`), a spec like `train=1-30;val=31-35;test=36-40`
    (sample numbers), or a mapping video id -> subset. A sequence in no subset is an error.
    classes: names of classes 1..K in the label files (default: the 17 SMG classes).
    Prints the per-class/per-subset summary when `verbose` (`summarize` returns it as text).
    """
    names = tuple(classes) if classes is not None else SMG_CLASSES
    if not names:
        raise ValueError("classes must not be empty")
    if frame_base not in (0, 1):
        raise ValueError(f"frame_base must be 0 or 1, got {frame_base}")
    subset_of = split_lookup(split)
    seqs = find_sequences(root)
    if not seqs:
        raise DatasetError(f"{root}: no SMG sequences (SampleXXXX_*.csv/mp4) found")
    records: list[VideoRecord] = []
    for vid, seq in seqs.items():
        subset = subset_of(vid)
        if subset is None:
            raise DatasetError(f"{seq.folder}: sequence {vid} is in no subset of the split")
        if seq.data is not None:
            num_frames, fps = read_data_csv(seq.data)
        elif seq.video is not None:
            probe = probe_video(seq.video)
            num_frames, fps = probe.num_frames, probe.fps
        else:
            raise DatasetError(f"{seq.folder}: {vid} has neither {vid}_data.csv nor a video")
        insts = (
            read_finelabels(seq.labels, len(names), fps, frame_base, num_frames)
            if seq.labels is not None
            else []
        )
        records.append(
            VideoRecord(vid, subset, duration=num_frames / fps, fps=fps, instances=insts)
        )
    ann = build_annotations(names, records)
    if out is not None:
        write_annotations(Path(out), ann)
    if verbose:
        print(summarize(ann))
        unlabelled = [s.video_id for s in seqs.values() if s.labels is None]
        if unlabelled:
            print(f"{len(unlabelled)} sequences without labels: {', '.join(unlabelled)}")
    return ann
