"""Fixed-length windows over cached feature sequences, with window-normalised targets.

Time conventions (shared with `extract.cache`): feature i covers the feature-time interval
[i, i+1), i.e. seconds [i*stride/fps, (i+1)*stride/fps). A time t in seconds is t*fps/stride in
feature time. A window of W steps starting at feature s covers feature time [s, s+W); window time
u in [0, 1] is feature time s + u*W.

Ground truth per window:
- set targets (for matching): the instances lying entirely inside the window,
  start >= s and end <= s+W in feature time, normalised to [0, 1];
- dense targets (W, C) multi-hot: step j (feature-time interval [s+j, s+j+1)) is positive for a
  class when an instance of that class overlaps the step with positive length, i.e. steps
  floor(a) .. ceil(b)-1 for an instance [a, b) in feature time. A zero-length instance marks the
  step holding its time, floor(a). Every overlapping instance counts, including those crossing the
  window border (the step does contain the gesture). Padded steps (j >= valid) are never positive.

Instances are first clipped to the video's feature extent [0, T] (the last partial stride has no
feature); instances starting at or after T are dropped as unseen (zero-length ones exactly at T
belong to the last step).

End-to-end mode (`frames=FrameOptions(...)`): instead of cached features an item carries the
window's stored 10 fps frames with `halo` context frames each side, cut exactly as the chunked
extractor cuts a chunk (core frames [s*stride, (s+valid)*stride), input clipped to the video), so
the backbone's features of the core equal the cached ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from detect.config import AugmentConfig, Config, DataConfig
from detect.data.annotations import Annotations
from detect.data.augment import WindowAugment, centre, crop_flip, sample_augment
from extract.cache import CacheError, FeatureSet, read_frames, read_frames_info, read_meta
from extract.config import ConfigError
from extract.progress import progress as progress_bar


def window_step(window: int, overlap: float) -> int:
    """Steps between the starts of consecutive windows of `window` steps overlapping by
    `overlap` (at least 1): offline evaluation's hop, and `detect stream`'s default one."""
    return max(1, int(round(window * (1.0 - overlap))))


def plan_windows(num_steps: int, window: int, overlap: float, tail: bool = True) -> list[int]:
    """Start positions of windows of `window` steps over a sequence of `num_steps` steps.

    Starts are i * step with step = round(window * (1 - overlap)) (at least 1), for every window
    that fits; with `tail`, one more window ends exactly at the sequence end unless the last
    regular one already does. A sequence shorter than `window` gets one window at 0 (padded).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if num_steps <= window:
        return [0]
    step = window_step(window, overlap)
    starts = list(range(0, num_steps - window + 1, step))
    if tail and starts[-1] != num_steps - window:
        starts.append(num_steps - window)
    return starts


def instances_in_feature_time(
    segments: np.ndarray, labels: np.ndarray, num_steps: int, stride: int, fps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds (n, 2) -> feature time (m, 2) float64, clipped to [0, num_steps]; labels (m,).

    Instances that start at or after the last feature's end are dropped (no feature sees them),
    except zero-length ones exactly at the end.
    """
    ft = np.asarray(segments, np.float64).reshape(-1, 2) * (fps / stride)
    # Snap float noise from the seconds round trip (4.8 s -> 12.000000000000002 steps), which
    # would otherwise flip containment and ceil() at exact step boundaries.
    ft = np.round(ft, 6)
    labels = np.asarray(labels, np.int64).reshape(-1)
    keep = (ft[:, 0] < num_steps) | ((ft[:, 0] == num_steps) & (ft[:, 1] == ft[:, 0]))
    keep &= num_steps > 0
    return np.clip(ft[keep], 0.0, float(num_steps)), labels[keep]


def dense_targets(
    ft: np.ndarray,
    labels: np.ndarray,
    start: int,
    window: int,
    num_steps: int,
    num_classes: int,
) -> np.ndarray:
    """Multi-hot (W, C) float32 for the window [start, start+W) (see the module docstring).

    ft: (n, 2) instances in feature time, clipped to [0, num_steps]; labels: (n,); the video has
    `num_steps` features, so steps past it (padding) stay negative.
    """
    dense = np.zeros((window, num_classes), np.float32)
    if ft.shape[0] == 0 or num_steps <= 0:
        return dense
    # A zero-length instance exactly at the video end belongs to the last real step.
    first = np.minimum(np.floor(ft[:, 0]).astype(np.int64), num_steps - 1)
    last = np.maximum(first, np.ceil(ft[:, 1]).astype(np.int64) - 1)
    last = np.minimum(last, num_steps - 1)
    lo = np.maximum(first, start) - start
    hi = np.minimum(last, start + window - 1) - start  # inclusive
    for a, b, c in zip(lo, hi, labels, strict=True):
        if b >= a:
            dense[a : b + 1, c] = 1.0
    return dense


@dataclass
class FrameOptions:
    """How end-to-end windows read stored frames.

    crop: square crop side; halo: context frames each side (>= the backbone's reach, even);
    augment: training augmentation (None: centre crop only); seed: base of the per-window draws.
    """

    crop: int
    halo: int
    augment: AugmentConfig | None = None
    seed: int = 0


@dataclass
class _Video:
    video_id: str
    features: np.ndarray | None  # (T, C) float32; None in frames mode
    res4: np.ndarray | None  # (T, C4) float32
    ft: np.ndarray  # (n, 2) instances in feature time
    labels: np.ndarray  # (n,)
    num_steps: int = 0
    num_frames: int = 0
    path: str = ""
    size: tuple[int, int] = (0, 0)  # stored frame (height, width)


@dataclass
class _Window:
    video: int
    start: int
    valid: int
    inside: np.ndarray  # indices of the instances that are targets (entirely inside the window)
    # Causal windows: instances complete earlier than the last D steps, which the pyramid
    # detector's loss ignores (neither positive nor negative)
    ignore: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def horizon_steps(horizon_s: float, stride: int, fps: float) -> int:
    """The causal mode's D in feature steps: horizon_s rounded to whole steps, at least 1."""
    return max(1, int(round(horizon_s * fps / stride)))


@dataclass(frozen=True)
class CausalTargets:
    """Causal training windows (`online.causal`): windows of W steps ending every `hop` steps
    (and at the video's end), whose targets are the instances inside the window that ended
    within its last `horizon` steps."""

    horizon: int
    hop: int


def causal_windows(ft: np.ndarray, num_steps: int, window: int, c: CausalTargets,
                   video: int = 0) -> list[_Window]:
    """The causal training windows of one video (instances `ft` (n, 2) in feature time).

    The window ending after e steps is [max(0, e - W), e) with e valid steps (padded at its end
    while e < W, as at the start of a stream). Targets: instances with start >= the window's
    start and e - horizon < end <= e. Ignored: instances inside the window that ended at or
    before e - horizon (reported by earlier decisions). Instances still running at e are
    neither: the model must learn not to report a gesture before it has ended.
    """
    out = []
    ends = list(range(c.hop, num_steps + 1, c.hop))
    if num_steps and (not ends or ends[-1] != num_steps):
        ends.append(num_steps)
    for e in ends:
        start = max(0, e - window)
        inside = (ft[:, 0] >= start) & (ft[:, 1] <= e)
        fresh = ft[:, 1] > e - c.horizon
        out.append(_Window(video, start, e - start, np.flatnonzero(inside & fresh),
                           np.flatnonzero(inside & ~fresh)))
    return out


def slice_padded(x: np.ndarray, start: int, window: int) -> torch.Tensor:
    """(W, C) rows start..start+W, the last row repeated past the end (a view when no padding)."""
    part = x[start : start + window]
    if part.shape[0] == window:
        return torch.from_numpy(part)
    pad = np.repeat(x[-1:], window - part.shape[0], axis=0)
    return torch.from_numpy(np.concatenate([part, pad], axis=0))


class WindowDataset(Dataset):
    """Windows of one subset, features of every video held in memory once (float32).

    Training windows overlap by `data_cfg.train_overlap` and are kept only when they hold a
    complete instance (unless `keep_background`), each shifted every epoch with
    `data_cfg.train_jitter`; evaluation windows overlap by
    `data_cfg.eval_overlap` (default 0: back to back), plus a tail window ending at the video end.
    Each item is a dict: `features` (W, C) float32 tensor (a view into the video's array unless
    padded), `res4` (W, C4) or None, `labels` (n,) int64, `segments` (n, 2) float32 normalised
    (start, end), `dense` (W, C) float32, `meta`
    (video_id, start, valid).
    """

    def __init__(
        self,
        feature_set: FeatureSet,
        annotations: Annotations,
        subset: str,
        data_cfg: DataConfig,
        train: bool,
        frames: FrameOptions | None = None,
        seed: int = 0,
        causal: CausalTargets | None = None,
    ) -> None:
        cfg = data_cfg
        if not math.isclose(feature_set.fps, cfg.fps) or feature_set.stride != cfg.stride:
            raise ValueError(
                f"{feature_set.path}: feature set has fps {feature_set.fps}, stride "
                f"{feature_set.stride}; the config expects fps {cfg.fps}, stride {cfg.stride}"
            )
        if cfg.feature_key and cfg.feature_key != feature_set.key:
            raise ValueError(
                f"{feature_set.path}: feature set key {feature_set.key!r} is not the "
                f"configured data.feature_key {cfg.feature_key!r}"
            )
        ann = annotations.subset(subset)
        if not ann.videos:
            raise ValueError(f"no videos in subset {subset!r}")
        self.subset = subset
        self.video_ids = ann.video_ids()
        self.window = cfg.window
        self.num_classes = ann.num_classes
        self.classes = list(ann.classes)
        self.stride = feature_set.stride
        self.fps = feature_set.fps
        self.train = train
        self.frames = frames
        self.epoch = 0
        self.seed = seed
        step = max(1, int(round(self.window * (1.0 - cfg.train_overlap))))
        self.jitter = step // 2 if train and cfg.train_jitter and causal is None else 0
        self.videos: list[_Video] = []
        self.items: list[_Window] = []
        overlap = cfg.train_overlap if train else cfg.eval_overlap
        what = "indexing {} frames" if frames is not None else "loading {} features"
        for vid in progress_bar(ann.video_ids(), desc=what.format(subset), leave=False):
            v = self._load(feature_set, vid, cfg.use_res4)
            if v.num_steps == 0:
                raise ValueError(f"{feature_set.video_path(vid)}: video {vid!r} has no features")
            va = ann.videos[vid]
            v.ft, v.labels = instances_in_feature_time(
                va.segments, va.labels, v.num_steps, self.stride, self.fps
            )
            self.videos.append(v)
            if train and causal is not None:
                self.items += causal_windows(v.ft, v.num_steps, self.window, causal,
                                             len(self.videos) - 1)
                continue
            ft = v.ft
            for s in plan_windows(v.num_steps, self.window, overlap, tail=True):
                valid = min(self.window, v.num_steps - s)
                inside = np.nonzero((ft[:, 0] >= s) & (ft[:, 1] <= s + self.window))[0]
                if train and inside.size == 0 and not cfg.keep_background:
                    continue
                self.items.append(_Window(len(self.videos) - 1, s, valid, inside))
        if not self.items:
            raise ValueError(
                f"subset {subset!r}: no window holds a complete instance "
                f"(window {self.window} steps); set data.keep_background or a longer window"
            )

    def _load(self, fs: FeatureSet, vid: str, use_res4: bool) -> _Video:
        empty = np.zeros((0, 2), np.float64), np.zeros(0, np.int64)
        if self.frames is None:
            v = fs.load(vid, with_res4=use_res4)
            return _Video(vid, v.features, v.res4, *empty, num_steps=v.num_steps)
        path = fs.video_path(vid)
        if not path.is_file():
            raise CacheError(f"{fs.path}: no features for video {vid!r}")
        meta = read_meta(path)
        info = read_frames_info(path)
        if info is None:
            raise CacheError(
                f"{path}: no stored frames; end-to-end training reads frames, not videos: "
                f"re-run `python -m extract features ... --save-frames` into {fs.path.parent}"
            )
        if info.num_frames != meta.num_frames:
            raise CacheError(f"{path}: {info.num_frames} stored frames != num_frames "
                             f"{meta.num_frames}")
        if self.frames.crop > min(info.height, info.width):
            raise CacheError(
                f"{path}: crop {self.frames.crop} does not fit the stored {info.height}x"
                f"{info.width} frames (short side {info.short_side}); lower backbone.crop or "
                "store larger frames (--frames-short-side)"
            )
        return _Video(vid, None, None, *empty, num_steps=meta.num_frames // self.stride,
                      num_frames=meta.num_frames, path=str(path), size=(info.height, info.width))

    def set_epoch(self, epoch: int) -> None:
        """Training augmentation draws depend on (seed, epoch, index) only, so resume repeats
        them exactly."""
        self.epoch = epoch

    def augmentation(self, index: int) -> WindowAugment:
        """The crop, flip and jitter of item `index` this epoch (centre crop at eval)."""
        assert self.frames is not None
        h, w = self.videos[self.items[index].video].size
        if not self.train or self.frames.augment is None:
            return centre(h, w, self.frames.crop)
        gen = torch.Generator().manual_seed(
            (self.frames.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        return sample_augment(gen, h, w, self.frames.crop, self.frames.augment)

    def window_at(self, index: int) -> _Window:
        """Item `index`'s window this epoch: as planned, or shifted by the epoch's jitter."""
        w = self.items[index]
        if not self.jitter:
            return w
        gen = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
        shift = int(torch.randint(-self.jitter, self.jitter + 1, (1,), generator=gen))
        v = self.videos[w.video]
        start = min(max(0, w.start + shift), max(0, v.num_steps - self.window))
        if start == w.start:
            return w
        valid = min(self.window, v.num_steps - start)
        inside = np.nonzero((v.ft[:, 0] >= start) & (v.ft[:, 1] <= start + self.window))[0]
        return _Window(w.video, start, valid, inside)

    def frame_span(self, index: int) -> tuple[int, int, int]:
        """(first, stop, core offset) of the frames item `index` reads: its core frames
        [start*stride, (start+valid)*stride) with `halo` frames each side, clipped to the video."""
        assert self.frames is not None
        w = self.window_at(index)
        v = self.videos[w.video]
        c0, c1 = w.start * self.stride, (w.start + w.valid) * self.stride
        f0, f1 = max(0, c0 - self.frames.halo), min(v.num_frames, c1 + self.frames.halo)
        return f0, f1, c0 - f0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        w = self.window_at(index)
        v = self.videos[w.video]
        W = self.window
        seg = (v.ft[w.inside] - w.start) / W
        item: dict[str, Any] = {
            "labels": torch.from_numpy(v.labels[w.inside].copy()),
            "segments": torch.from_numpy(seg.astype(np.float32)),
            "ignore": torch.from_numpy(((v.ft[w.ignore] - w.start) / W).astype(np.float32)),
            "dense": torch.from_numpy(
                dense_targets(v.ft, v.labels, w.start, W, v.num_steps, self.num_classes)
            ),
            "meta": (v.video_id, w.start, w.valid),
        }
        if self.frames is None:
            assert v.features is not None
            item["features"] = slice_padded(v.features, w.start, W)
            item["res4"] = None if v.res4 is None else slice_padded(v.res4, w.start, W)
            return item
        f0, f1, offset = self.frame_span(index)
        aug = self.augmentation(index)
        item["frames"] = crop_flip(torch.from_numpy(read_frames(Path(v.path), f0, f1)), aug)
        item["offset"] = offset
        item["jitter"] = torch.tensor(aug.jitter, dtype=torch.float64)
        return item


def collate_windows(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch items: `features` (B, W, C), `res4` (B, W, C4) or None, `targets` (list of dicts
    with `labels` (n,) int64 and `segments` (n, 2) float32), `dense` (B, W, C), `meta` (list of
    (video_id, start, valid)).

    Frame windows (end-to-end) instead give `frames` (list of B (n_i, h, w, 3) uint8: lengths
    differ at video edges), `offsets` (list of B core offsets in frames) and `jitter` (B, 4).
    """
    if not items:
        raise ValueError("collate_windows needs at least one window")
    targets = [{"labels": it["labels"], "segments": it["segments"]} for it in items]
    for t, it in zip(targets, items, strict=True):
        if len(it.get("ignore", ())):
            t["ignore"] = it["ignore"]
    common = {
        "targets": targets,
        "dense": torch.stack([it["dense"] for it in items]),
        "meta": [it["meta"] for it in items],
    }
    if "frames" in items[0]:
        return {
            "frames": [it["frames"] for it in items],
            "offsets": [int(it["offset"]) for it in items],
            "jitter": torch.stack([it["jitter"] for it in items]),
            **common,
        }
    has_res4 = [it["res4"] is not None for it in items]
    if any(has_res4) and not all(has_res4):
        raise ValueError("some windows have res4 features and some do not")
    return {
        "features": torch.stack([it["features"] for it in items]),
        "res4": torch.stack([it["res4"] for it in items]) if all(has_res4) else None,
        **common,
    }


def crop_size(cfg: Config, fs: FeatureSet) -> int:
    """backbone.crop, or the feature set's crop when it is 0."""
    crop = cfg.backbone.crop or int(fs.settings.get("crop", 0))
    if crop <= 0:
        raise ConfigError(f"{fs.path}: the feature set has no crop (whole frames); set "
                          "backbone.crop")
    return crop


def window_dataset(cfg: Config, fs: FeatureSet, ann: Any, subset: str, train: bool,
                   halo: int = 0) -> WindowDataset:
    """The subset's windows for `cfg.mode`: cached features, or stored frames with `halo` context
    frames (augmented when training and `backbone.augment.enabled`)."""
    if cfg.mode != "e2e":
        causal = None
        if cfg.online.causal:
            causal = CausalTargets(
                min(cfg.data.window, horizon_steps(cfg.online.horizon_s, fs.stride, fs.fps)),
                cfg.online.train_hop)
        return WindowDataset(fs, ann, subset, cfg.data, train=train, seed=cfg.train.seed,
                             causal=causal)
    aug = cfg.backbone.augment if train and cfg.backbone.augment.enabled else None
    opts = FrameOptions(crop=crop_size(cfg, fs), halo=halo, augment=aug, seed=cfg.train.seed)
    return WindowDataset(fs, ann, subset, cfg.data, train=train, frames=opts,
                         seed=cfg.train.seed)
