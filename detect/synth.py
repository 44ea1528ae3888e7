"""Synthetic feature sets with planted micro-gestures, for tests, demos and sanity checks.

Each class c has three unit directions in feature space: a body signature u_c, added to every
feature step in proportion to how much of the step the instance covers (so sub-step boundaries
leave a trace), and onset / offset signatures added at the instance's first and last step (so
boundaries are learnable). On top: a per-video offset, slow background drift along two shared
directions (both scaled by min(1, noise)), and white noise of standard deviation `noise` per
channel.

Timelines imitate SMG (reference note smg-timeline-stats.md): instance durations log-normal
around 1.6 s clipped to [min_instance_s, 10 s]; gestures in bursts (half the gaps short, half
long); long-tailed class frequencies (class i drawn with weight 1/(i+1)); occasional overlapping
instances of another class. Annotations are on the source frame grid (`source_fps`).

`noise=0` is the clean, easy preset: no noise, offset or drift, instances of at least 3 feature
steps, gaps of at least 2 steps, no overlaps. Everything is determined by `seed`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detect.annotations import Annotations, VideoAnnotations, save_annotations
from extract.cache import FeatureMeta, FeatureSet, feature_timestamps, write_video
from extract.provenance import mgdet_version

BODY_AMPLITUDE = 4.0
EDGE_AMPLITUDE = 3.0
DRIFT_AMPLITUDE = 1.0


def _directions(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """(n, dim) unit vectors, orthonormal when dim >= n."""
    g = rng.standard_normal((dim, n))
    if dim >= n:
        q, _ = np.linalg.qr(g)
        return q.T.copy()
    return (g / np.linalg.norm(g, axis=0)).T.copy()


def _timeline(
    rng: np.random.Generator,
    length_s: float,
    class_p: np.ndarray,
    min_inst: float,
    max_inst: float,
    min_gap: float,
    overlap_prob: float,
    source_fps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Instances (n, 2) seconds on the source frame grid, inside [0, length_s]; labels (n,)."""
    median = max(1.6, 1.5 * min_inst)
    segs, labels = [], []
    t = rng.exponential(3.0)
    while True:
        dur = float(np.clip(median * math.exp(0.6 * rng.standard_normal()), min_inst, max_inst))
        if segs and rng.random() < overlap_prob:
            # Start inside the previous instance, with another class (co-occurring gestures).
            ps, pe = segs[-1]
            start = ps + rng.uniform(0.2, 0.8) * (pe - ps)
            c = int(rng.choice(len(class_p), p=class_p))
            if c == labels[-1]:
                c = (c + 1) % len(class_p)
        else:
            start = t
            c = int(rng.choice(len(class_p), p=class_p))
        s = math.ceil(start * source_fps) / source_fps
        e = math.floor((s + dur) * source_fps) / source_fps
        if e > length_s:
            break
        segs.append((s, e))
        labels.append(c)
        gap = rng.exponential(0.6) if rng.random() < 0.5 else rng.exponential(15.0)
        t = max(t, e) + min_gap + gap
    return np.array(segs, np.float64).reshape(-1, 2), np.array(labels, np.int64)


def _features(
    rng: np.random.Generator,
    num_steps: int,
    ft: np.ndarray,
    labels: np.ndarray,
    dirs: np.ndarray,
    classes: int,
    noise: float,
) -> np.ndarray:
    """(T, dim) float32 features for instances `ft` (n, 2) in feature time."""
    dim = dirs.shape[1]
    body = dirs[:classes]
    onset = dirs[classes : 2 * classes]
    offset = dirs[2 * classes : 3 * classes]
    drift_dirs = dirs[3 * classes : 3 * classes + 2]
    t = np.arange(num_steps, dtype=np.float64)
    # Nuisances (per-video offset, drift) grow with the noise knob up to full size at noise 1,
    # so the clean preset is exactly signal.
    nuisance = min(1.0, noise)
    video_offset = nuisance * rng.standard_normal(dim) / math.sqrt(dim)
    x = np.tile(video_offset, (num_steps, 1))
    for d in drift_dirs:
        period = rng.uniform(200.0, 2000.0)
        wave = DRIFT_AMPLITUDE * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
        x += nuisance * wave[:, None] * d[None, :]
    for (a, b), c in zip(ft, labels, strict=True):
        first = int(math.floor(a))
        last = min(max(first, int(math.ceil(b)) - 1), num_steps - 1)
        steps = np.arange(first, last + 1)
        cover = np.minimum(b, steps + 1) - np.maximum(a, steps)
        gain = rng.uniform(0.8, 1.2)  # instances of a class are not all equally vivid
        x[steps] += gain * BODY_AMPLITUDE * cover[:, None] * body[c][None, :]
        x[first] += EDGE_AMPLITUDE * onset[c]
        x[last] += EDGE_AMPLITUDE * offset[c]
    if noise > 0:
        x += noise * rng.standard_normal(x.shape)
    return x.astype(np.float32)


def _split(rng: np.random.Generator, n: int, fractions: tuple[float, float, float]) -> list[str]:
    n_val = max(1, round(fractions[1] * n)) if n >= 3 else 0
    n_test = max(1, round(fractions[2] * n)) if n >= 3 else 0
    subsets = ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    return [subsets[i] for i in rng.permutation(n)]


def synth_feature_set(
    out: Path | str,
    videos: int,
    classes: int,
    seed: int,
    noise: float = 1.0,
    dim: int = 256,
    fps: float = 10.0,
    stride: int = 4,
    min_duration_s: float = 120.0,
    max_duration_s: float = 300.0,
    min_instance_s: float | None = None,
    max_instance_s: float = 10.0,
    overlap_prob: float | None = None,
    source_fps: float = 30.0,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> tuple[FeatureSet, Path]:
    """Write `out/annotations.json` and a feature set under `out/features/<key>/`.

    `min_instance_s` defaults to 0.3 s, or 3 feature steps for the clean preset (`noise=0`);
    `overlap_prob` (chance that an instance starts inside the previous one) to 0.02, or 0 when
    clean. Returns the feature set and the annotation path.
    """
    if videos < 1 or classes < 1:
        raise ValueError(f"need at least one video and one class, got {videos} and {classes}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if not 0 < min_duration_s <= max_duration_s:
        raise ValueError(
            f"need 0 < min_duration_s <= max_duration_s, got {min_duration_s}, {max_duration_s}"
        )
    clean = noise == 0
    step_s = stride / fps
    min_inst = min_instance_s if min_instance_s is not None else (3 * step_s if clean else 0.3)
    overlap = overlap_prob if overlap_prob is not None else (0.0 if clean else 0.02)
    min_gap = 2 * step_s if clean else 0.0
    if not 0 < min_inst <= max_instance_s:
        raise ValueError(
            f"need 0 < min_instance_s <= max_instance_s, got {min_inst}, {max_instance_s}"
        )
    out = Path(out)
    settings = {
        "model": "synthetic",
        "fps": fps,
        "stride": stride,
        "dim": dim,
        "seed": seed,
        "noise": noise,
        "videos": videos,
        "classes": classes,
        "min_duration_s": min_duration_s,
        "max_duration_s": max_duration_s,
        "min_instance_s": min_inst,
        "max_instance_s": max_instance_s,
        "overlap_prob": overlap,
        "source_fps": source_fps,
        "split": list(split),
    }
    fs = FeatureSet.create(out / "features", "synthetic", settings)
    rng = np.random.default_rng(seed)
    dirs = _directions(rng, 3 * classes + 2, dim)
    weights = 1.0 / np.arange(1, classes + 1)
    class_p = weights / weights.sum()
    subsets = _split(rng, videos, split)
    names = [f"gesture{c:02d}" for c in range(classes)]
    entries: dict[str, VideoAnnotations] = {}
    for i in tqdm(range(videos), desc="synthetic videos", leave=False):
        vid = f"synth{i:04d}"
        vrng = np.random.default_rng([seed, i])  # per video, so videos do not shift each other
        duration = round(vrng.uniform(min_duration_s, max_duration_s) * source_fps) / source_fps
        num_frames = int(math.floor(duration * fps + 1e-9))
        num_steps = num_frames // stride
        segs, labels = _timeline(
            vrng,
            num_steps * step_s,
            class_p,
            min_inst,
            max_instance_s,
            min_gap,
            overlap,
            source_fps,
        )
        feats = _features(vrng, num_steps, segs / step_s, labels, dirs, classes, noise)
        meta = FeatureMeta(
            video_id=vid,
            fps=fps,
            stride=stride,
            source_path=f"synthetic://{vid}",
            source_fps=source_fps,
            duration=duration,
            num_frames=num_frames,
            model="synthetic",
            weights="synthetic",
            weights_sha256="",
            layers=["synthetic"],
            mgdet_version=mgdet_version(),
            extra={"seed": seed, "noise": noise},
        )
        write_video(fs.video_path(vid), feats, feature_timestamps(num_steps, stride, fps), meta)
        entries[vid] = VideoAnnotations(subsets[i], duration, source_fps, segs, labels)
    ann_path = out / "annotations.json"
    save_annotations(ann_path, Annotations(classes=names, videos=entries))
    return fs, ann_path
