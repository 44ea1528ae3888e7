"""Per-clip token files under stage one's cache contract, shared by every clip embedder.

    ROOT/<key>/featureset.json   the settings that made the numbers; `<key>` ends in their hash
    ROOT/<key>/<video id>.h5     tokens (N, ...) float16 and clip_start, clip_end (N,) of that
                                 video's clips, in label-file order
    ROOT/<key>/failures.json     videos that could not be read, with the reason

A video whose file exists with the same clip spans is skipped, so a killed run resumes; files
appear atomically; one unreadable video is recorded and the rest go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import av
import h5py
import numpy as np

from classify.data.clips import Clip, ClipIndex
from extract.cache import FeatureSet
from extract.decode import DecodeError, open_video
from extract.io import file_lock, temp_file_beside
from extract.pipeline import (
    remove_stale_temps,
    remove_stale_temps_if_free,
    update_failures,
    video_lock_path,
)
from extract.progress import ProgressBar
from extract.progress import progress as progress_bar

# (video id, its clips, each clip's frame numbers, {frame number: (H, W, 3) uint8}, progress bar)
# -> (N, ...) tokens
Embed = Callable[[str, list[Clip], list[np.ndarray], dict[int, np.ndarray], ProgressBar],
                 np.ndarray]


def read_frames_at(path: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """{frame number: (H, W, 3) uint8} of the wanted frames, in decode order (iMiGUE is CFR)."""
    container, stream = open_video(path)
    out: dict[int, np.ndarray] = {}
    last = max(wanted)
    n = 0
    try:
        for n, frame in enumerate(container.decode(stream)):
            if n in wanted:
                out[n] = frame.to_ndarray(format="rgb24")
            if n >= last:
                break
    except av.FFmpegError as e:
        raise DecodeError(f"{path}: decoding failed at frame {n} ({e})") from e
    finally:
        container.close()
    if last not in out:
        raise DecodeError(f"{path}: the video has {n + 1} frames but a clip needs frame {last}")
    return out


def _write(path: Path, tokens: np.ndarray, clips: list[Clip], video_id: str) -> None:
    fd, tmp = temp_file_beside(path, ".h5.tmp", prefix=f".{video_id}.")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("tokens", data=tokens.astype(np.float16))
            f.create_dataset("clip_start", data=np.array([c.start for c in clips], np.int64))
            f.create_dataset("clip_end", data=np.array([c.end for c in clips], np.int64))
            f.attrs["video_id"] = video_id
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _spans(clips: list[Clip]) -> np.ndarray:
    return np.array([[c.start, c.end] for c in clips], np.int64).reshape(-1, 2)


def _done(path: Path, clips: list[Clip]) -> bool:
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            spans = np.stack([f["clip_start"][()], f["clip_end"][()]], 1)
    except (OSError, KeyError):
        return False
    return spans.shape == _spans(clips).shape and bool((spans == _spans(clips)).all())


def cache_clip_tokens(index: ClipIndex, fs: FeatureSet, sample: Callable[[Clip], np.ndarray],
                      embed: Embed, desc: str, progress: bool = True) -> FeatureSet:
    """Tokens of every clip of every video of `index` that has an mp4, into `fs`.

    sample: a clip's frame numbers; embed: see `Embed` (it updates the bar by clips). An embed that
    raises ValueError for a video (e.g. no face found) records it as failed, like a decode error.
    """
    by_video: dict[str, list[Clip]] = {}
    for c in index.clips:
        by_video.setdefault(c.video, []).append(c)
    videos = sorted(v for v in by_video if v in index.videos)
    todo = [v for v in videos if not _done(fs.video_path(v), by_video[v])]
    for vid in set(videos) - set(todo):
        remove_stale_temps_if_free(fs, vid)
    failed: dict[str, str] = {}
    bar = progress_bar(total=sum(len(by_video[v]) for v in todo), desc=desc, unit="clip",
                       enabled=progress)
    with bar:
        for vid in todo:
            # As stage one: the video's lock while its file is written, so two runs on one
            # cache never remove each other's temp files; a video done meanwhile is skipped.
            with file_lock(video_lock_path(fs, vid)):
                remove_stale_temps(fs, [vid])
                if _done(fs.video_path(vid), by_video[vid]):
                    bar.update(len(by_video[vid]))
                    continue
                why = _cache_video(index, fs, vid, by_video[vid], sample, embed, bar)
            if why is not None:
                failed[vid] = why
    update_failures(fs, [v for v in todo if v not in failed], failed)
    return fs


def _cache_video(index: ClipIndex, fs: FeatureSet, vid: str, clips: list[Clip],
                 sample: Callable[[Clip], np.ndarray], embed: Embed, bar: ProgressBar
                 ) -> str | None:
    """One video's clip tokens into its file; why it failed, or None."""
    idx = [sample(c) for c in clips]
    try:
        frames = read_frames_at(index.videos[vid], {int(i) for ii in idx for i in ii})
        tokens = embed(vid, clips, idx, frames, bar)
    except (DecodeError, ValueError) as e:
        bar.update(len(clips))
        return str(e)
    _write(fs.video_path(vid), tokens, clips, vid)
    return None


def load_clip_tokens(fs: FeatureSet, clips: list[Clip]) -> dict[str, np.ndarray]:
    """{clip key: tokens (float32)} of the clips whose video has tokens."""
    out: dict[str, np.ndarray] = {}
    by_video: dict[str, list[Clip]] = {}
    for c in clips:
        by_video.setdefault(c.video, []).append(c)
    for vid, cs in by_video.items():
        path = fs.video_path(vid)
        if not path.is_file():
            continue
        with h5py.File(path, "r") as f:
            tokens = f["tokens"][()].astype(np.float32)
            spans = {(int(s), int(e)): i for i, (s, e) in
                     enumerate(zip(f["clip_start"][()], f["clip_end"][()], strict=True))}
        for c in cs:
            i = spans.get((c.start, c.end))
            if i is not None:
                out[c.key] = tokens[i]
    return out
