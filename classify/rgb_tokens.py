"""RGB clip tokens (MViTv2-S) cached in HDF5 under stage one's cache contract.

    ROOT/<key>/featureset.json   the settings that made the numbers (model, weights digest,
                                 frames, size, short side); `<key>` ends in their hash
    ROOT/<key>/<video id>.h5     tokens (N, 1 + frames/2, 768) float16 and clip_start,
                                 clip_end (N,) of that video's clips, in label-file order
    ROOT/<key>/failures.json     videos that could not be read, with the reason

A clip's `frames` frames are the bin centres of its span (as the skeleton stream's test-time
sampling), each resized to `short_side` and centre-cropped to `size`. A video whose file exists
with the same clip spans is skipped, so a killed run resumes; files appear atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import h5py
import numpy as np
import torch
from tqdm import tqdm

from classify.clips import Clip, ClipIndex
from classify.mvit import build_mvit, mvit_input
from classify.skeleton import sample_frames
from extract.cache import FeatureSet, temp_file_beside
from extract.decode import DecodeError, open_video, resize_crop
from extract.pipeline import remove_stale_temps, update_failures


@dataclass
class RGBConfig:
    enabled: bool = False  # then the RGB heads and the token fusion run after the skeleton
    cache: str = "cache/rgb"
    weights: str = "kinetics"  # "kinetics" (hub cache), a checkpoint path, or "random"
    frames: int = 16
    size: int = 224
    short_side: int = 0  # resize before the centre crop; 0 = size * 256 / 224 (Kinetics preset)
    batch_size: int = 8
    seed: int = 0  # of random weights


def clip_frame_indices(clip: Clip, frames: int) -> np.ndarray:
    """Source frame numbers (frames,) sampled from a clip's inclusive span."""
    return clip.start + sample_frames(clip.end - clip.start + 1, frames)


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


def extract_rgb_tokens(index: ClipIndex, root: Path, cfg: RGBConfig,
                       progress: bool = True) -> FeatureSet:
    """Tokens of every clip of every video of `index` that has an mp4, under `root`."""
    model, weights = build_mvit(cfg.weights, cfg.frames, cfg.size, cfg.seed)
    short = cfg.short_side or round(cfg.size * 256 / 224)
    settings = {"model": "mvit_v2_s", "weights": weights.label, "sha256": weights.sha256,
                "frames": cfg.frames, "size": cfg.size, "short_side": short,
                "sampling": "bin-centre", "tokens": "cls+temporal-mean", "format": 1}
    fs = FeatureSet.create(Path(root), "mvit_v2_s", settings)
    by_video: dict[str, list[Clip]] = {}
    for c in index.clips:
        by_video.setdefault(c.video, []).append(c)
    videos = sorted(v for v in by_video if v in index.videos)
    remove_stale_temps(fs, videos)
    todo = [v for v in videos if not _done(fs.video_path(v), by_video[v])]
    failed: dict[str, str] = {}
    bar = tqdm(total=sum(len(by_video[v]) for v in todo), desc="rgb tokens", unit="clip",
               disable=not progress)
    with bar, torch.inference_mode():
        for vid in todo:
            clips = by_video[vid]
            idx = [clip_frame_indices(c, cfg.frames) for c in clips]
            try:
                frames = read_frames_at(index.videos[vid], {int(i) for ii in idx for i in ii})
            except DecodeError as e:
                failed[vid] = str(e)
                bar.update(len(clips))
                continue
            out = []
            for b in range(0, len(clips), cfg.batch_size):
                batch = [resize_crop(torch.from_numpy(np.stack([frames[int(i)] for i in ii])),
                                     short, cfg.size) for ii in idx[b:b + cfg.batch_size]]
                out.append(model(mvit_input(torch.stack(batch))).float().numpy())
                bar.update(len(batch))
            _write(fs.video_path(vid), np.concatenate(out), clips, vid)
    update_failures(fs, [v for v in todo if v not in failed], failed)
    return fs


def load_rgb_tokens(fs: FeatureSet, clips: list[Clip]) -> dict[str, np.ndarray]:
    """{clip key: (1 + frames/2, 768) float32} of the clips whose video has tokens."""
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
