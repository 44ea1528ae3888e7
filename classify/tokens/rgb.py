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

from pathlib import Path

import numpy as np
import torch

from classify.config import RGBConfig
from classify.data.clips import Clip, ClipIndex
from classify.data.skeleton import sample_frames
from classify.model.mvit import build_mvit, mvit_input
from classify.tokens.cache import cache_clip_tokens, load_clip_tokens
from extract.cache import FeatureSet
from extract.decode import resize_crop
from extract.progress import ProgressBar


def clip_frame_indices(clip: Clip, frames: int) -> np.ndarray:
    """Source frame numbers (frames,) sampled from a clip's inclusive span."""
    return clip.start + sample_frames(clip.end - clip.start + 1, frames)


def extract_rgb_tokens(index: ClipIndex, root: Path, cfg: RGBConfig,
                       progress: bool = True) -> FeatureSet:
    """Tokens of every clip of every video of `index` that has an mp4, under `root`."""
    model, weights = build_mvit(cfg.weights, cfg.frames, cfg.size, cfg.seed)
    short = cfg.short_side or round(cfg.size * 256 / 224)
    settings = {"model": "mvit_v2_s", "weights": weights.label, "sha256": weights.sha256,
                "frames": cfg.frames, "size": cfg.size, "short_side": short,
                "sampling": "bin-centre", "tokens": "cls+temporal-mean", "format": 1}
    fs = FeatureSet.create(Path(root), "mvit_v2_s", settings)

    @torch.inference_mode()
    def embed(vid: str, clips: list[Clip], idx: list[np.ndarray], frames: dict[int, np.ndarray],
              bar: ProgressBar) -> np.ndarray:
        out = []
        for b in range(0, len(clips), cfg.batch_size):
            batch = [resize_crop(torch.from_numpy(np.stack([frames[int(i)] for i in ii])),
                                 short, cfg.size) for ii in idx[b:b + cfg.batch_size]]
            out.append(model(mvit_input(torch.stack(batch))).float().numpy())
            bar.update(len(batch))
        return np.concatenate(out)

    return cache_clip_tokens(index, fs, lambda c: clip_frame_indices(c, cfg.frames), embed,
                             "rgb tokens", progress)


def load_rgb_tokens(fs: FeatureSet, clips: list[Clip]) -> dict[str, np.ndarray]:
    """{clip key: (1 + frames/2, 768) float32} of the clips whose video has tokens."""
    return load_clip_tokens(fs, clips)
