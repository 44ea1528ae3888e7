"""A second synthetic feature set, built independently of detect.synthetic.features (`synth
--generator envelope`), to judge detectors on data they were not tuned on.

Same outputs as `synth_feature_set` (annotations.json, a FeatureSet of HDF5 files), SMG's 17 class
names and frequencies, but every other choice differs:

- Durations: each class has its own log-normal, with a median drawn per class (log-uniform over
  0.4 .. 6 s, stratified so every seed spans the range) and its own spread, so some classes are
  systematically short and others long.
  Gaps come from a two-state Markov chain (burst: short exponential gaps; rest: long log-normal
  gaps); a few instances start inside the previous one (co-occurring gestures).
- Signal: an instance of class c at relative time r in [0, 1] plants
  env_c(r) * (cos(w_c r) a_c + sin(w_c r) b_c): a class-specific temporal envelope (rise-fall,
  plateau, ramp up, ramp down, double bump) riding on a trajectory that turns by w_c radians
  (0.2 pi .. pi) over the instance. a_c and b_c are part shared low-rank basis, part class-own,
  so classes are confusable. There are no onset / offset signatures: boundaries show only
  through the envelope. `amplitude` is the peak norm of a planted signal against white noise of
  standard deviation 1 per channel.
- Sampling: the signal is evaluated at SUBSTEPS points per feature step and averaged, so steps a
  boundary cuts carry a partial signal; no other temporal blur.
- Background: an AR(1) process in time (coefficient `background_rho`) in a rank-8 subspace shared
  by all videos, plus white noise; each video has a random gain and per-channel offset.
- Distractors: unlabelled movements (`distractors` per labelled instance) of the same family
  (random envelope, frequency and a trajectory in the shared basis plus a random part).

Everything is determined by `seed`; each video has its own generator (default_rng([seed, i])),
so videos do not shift each other. Annotations are on the source frame grid (`source_fps`).

Calibration of the default `amplitude` (AMPLITUDE, 4.25): the per-step linear probe (`python -m
detect baseline probe`, BaselineConfig defaults) scores test f1_strict about 0.35-0.40 (mean of
seeds 0-2) at the defaults (40 videos of 2-5 min, dim 256, distractors 0.5, rho 0.9; measured
with OMP_NUM_THREADS=1 and one torch thread):

    amplitude   seed 0   seed 1   seed 2   mean
    3.0         0.213    0.198    0.145    0.185
    4.0         0.328    0.340    0.360    0.343
    4.25        0.344    0.339    0.411    0.365
    4.5         0.386    0.392    0.442    0.407
    5.0         0.449    0.439    0.499    0.462
    6.0         0.539    0.542    0.550    0.544

Seeds 3 and 4 at 4.0 scored 0.359 and 0.567: a seed draws the class family too, so which
envelopes and durations the two dominant classes get still moves the score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detect.data.annotations import Annotations, VideoAnnotations, save_annotations
from detect.synthetic import smg_profile
from detect.synthetic.features import (
    _split,
    check_signal_and_lengths,
    video_length,
    write_synthetic_video,
)
from extract.cache import FeatureSet
from extract.progress import progress as progress_bar

AMPLITUDE = 4.25  # calibrated default, see the module docstring
SHAPES = ("rise-fall", "plateau", "ramp-up", "ramp-down", "double-bump")
SHARED_RANK = 6  # rank of the basis all trajectories share
SHARED = 0.6  # fraction of a trajectory vector's energy in the shared basis
# Radians a trajectory turns over an instance: up to a half turn, so no trajectory passes through
# its own opposite direction (which a per-step linear read-out could not see at all).
OMEGA_RANGE = (0.2 * math.pi, 1.0 * math.pi)
MEDIAN_RANGE_S = (0.4, 6.0)  # per-class median durations, drawn log-uniformly
SIGMA_RANGE = (0.3, 0.6)  # per-class log-normal spread of durations
INSTANCE_RANGE_S = (0.1, 20.0)  # clip of any duration (SMG: 3 .. 554 frames at 28 fps)
BURST_GAP_S = 0.7  # mean of the exponential gaps inside a burst
REST_GAP_S = (12.0, 0.9)  # median and log-spread of the gaps between bursts
STAY = (0.75, 0.45)  # chance to stay in the burst state, in the rest state
OVERLAP_PROB = 0.015  # chance that an instance starts inside the previous one
INSTANCE_GAIN = (0.7, 1.3)  # instances of a class are not all equally vivid
SUBSTEPS = 8  # signal samples per feature step
BACKGROUND_RANK = 8
BACKGROUND_SCALE = 2.0  # std of each AR(1) background component (white noise has std 1)
VIDEO_GAIN = (0.7, 1.4)
OFFSET_STD = 0.3


@dataclass(frozen=True)
class Family:
    """The set-wide structure every video shares (drawn from `seed`). C classes, D channels."""

    a: np.ndarray  # (C, D) unit trajectory vectors at r = 0
    b: np.ndarray  # (C, D) unit vectors orthogonal to a: the trajectory's turning direction
    shape: np.ndarray  # (C,) index into SHAPES
    omega: np.ndarray  # (C,) radians turned over an instance
    median_s: np.ndarray  # (C,) median duration
    sigma: np.ndarray  # (C,) log-normal spread of durations
    shared: np.ndarray  # (SHARED_RANK, D) orthonormal basis shared by all trajectories
    background: np.ndarray  # (BACKGROUND_RANK, D) orthonormal background subspace


@dataclass
class Events:
    """Planted movements in feature time. n events."""

    ft: np.ndarray  # (n, 2) start, end in feature steps
    gain: np.ndarray  # (n,)
    a: np.ndarray  # (n, D)
    b: np.ndarray  # (n, D)
    shape: np.ndarray  # (n,)
    omega: np.ndarray  # (n,)


def _orthonormal(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """(n, dim) orthonormal rows (unit rows, not orthogonal, when dim < n)."""
    g = rng.standard_normal((dim, n))
    if dim >= n:
        return np.linalg.qr(g)[0].T.copy()
    return (g / np.linalg.norm(g, axis=0)).T.copy()


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _trajectories(rng: np.random.Generator, shared: np.ndarray, n: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """n trajectory pairs (a, b), each (n, D): a fraction SHARED of each vector's energy in the
    shared basis, the rest its own; b orthogonal to a."""
    dim = shared.shape[1]

    def vec() -> np.ndarray:
        coef = _unit(rng.standard_normal((n, shared.shape[0])))
        own = _unit(rng.standard_normal((n, dim)))
        return math.sqrt(SHARED) * coef @ shared + math.sqrt(1 - SHARED) * own

    a = _unit(vec())
    b = vec()
    b = _unit(b - (b * a).sum(1, keepdims=True) * a)
    return a, b


def _stratified(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """(n,) draws in [lo, hi], one in each of n equal strata, in random order: every seed spans
    the whole range, so seeds differ less in how hard their classes are."""
    return lo + (hi - lo) * (rng.permutation(n) + rng.random(n)) / n


def make_family(rng: np.random.Generator, classes: int, dim: int) -> Family:
    """Draw the class trajectories, envelopes, frequencies and durations and the subspaces."""
    shared = _orthonormal(rng, SHARED_RANK, dim)
    background = _orthonormal(rng, BACKGROUND_RANK, dim)
    a, b = _trajectories(rng, shared, classes)
    # Every shape is used before any repeats, so no shape is missing from the 17 classes.
    shape = rng.permutation(np.arange(classes) % len(SHAPES))
    omega = _stratified(rng, classes, *OMEGA_RANGE)
    median_s = np.exp(_stratified(rng, classes, *np.log(MEDIAN_RANGE_S)))
    sigma = _stratified(rng, classes, *SIGMA_RANGE)
    return Family(a, b, shape, omega, median_s, sigma, shared, background)


def envelope(shape: int, r: np.ndarray) -> np.ndarray:
    """Envelope SHAPES[shape] at relative times r (any shape, in [0, 1]); peak 1."""
    if shape == 0:
        return np.sin(np.pi * r)
    if shape == 1:
        return np.clip(np.minimum(r, 1 - r) / 0.15, 0.0, 1.0)
    if shape == 2:
        return 0.15 + 0.85 * r
    if shape == 3:
        return 1.0 - 0.85 * r
    # Two bumps at r 0.27 and 0.73; the dip between them falls to about half the peak.
    return np.exp(-(((r - 0.27) / 0.2) ** 2)) + np.exp(-(((r - 0.73) / 0.2) ** 2))


def _durations(rng: np.random.Generator, fam: Family, labels: np.ndarray) -> np.ndarray:
    """(n,) seconds, each from its class's log-normal."""
    d = fam.median_s[labels] * np.exp(fam.sigma[labels] * rng.standard_normal(labels.size))
    return np.clip(d, *INSTANCE_RANGE_S)


def _gap(rng: np.random.Generator, burst: bool) -> float:
    if burst:
        return float(rng.exponential(BURST_GAP_S))
    return float(REST_GAP_S[0] * math.exp(REST_GAP_S[1] * rng.standard_normal()))


def timeline(rng: np.random.Generator, length_s: float, fam: Family, class_p: np.ndarray,
             source_fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Instances (n, 2) in seconds on the source frame grid inside [0, length_s], sorted by
    start; labels (n,)."""
    segs: list[tuple[float, float]] = []
    labs: list[int] = []
    t = float(rng.uniform(0.0, 5.0))
    burst = bool(rng.random() < 0.5)
    while True:
        c = int(rng.choice(len(class_p), p=class_p))
        dur = float(_durations(rng, fam, np.array([c]))[0])
        start = t
        if segs and rng.random() < OVERLAP_PROB:
            # Starts inside the previous instance, with another class (co-occurring gestures).
            ps, pe = segs[-1]
            start = ps + rng.uniform(0.2, 0.8) * (pe - ps)
            c = c if c != labs[-1] else (c + 1) % len(class_p)
        s = math.ceil(start * source_fps - 1e-9) / source_fps
        e = max(s + 1 / source_fps, math.floor((s + dur) * source_fps + 1e-9) / source_fps)
        if e > length_s:
            break
        segs.append((s, e))
        labs.append(c)
        t = max(t, e) + _gap(rng, burst)
        burst = bool(rng.random() < (STAY[0] if burst else 1 - STAY[1]))
    order = np.argsort([s for s, _ in segs], kind="stable")
    return (np.array(segs, np.float64).reshape(-1, 2)[order],
            np.array(labs, np.int64)[order])


def render(x: np.ndarray, ev: Events) -> None:
    """Add events to x (T, D) in place, each sampled at SUBSTEPS points per step and averaged."""
    num_steps = x.shape[0]
    offsets = (np.arange(SUBSTEPS) + 0.5) / SUBSTEPS
    for i, (s, e) in enumerate(ev.ft):
        first, last = max(0, math.floor(s)), min(num_steps - 1, math.ceil(e) - 1)
        if last < first:
            continue
        steps = np.arange(first, last + 1)
        r = (steps[:, None] + offsets[None, :] - s) / max(e - s, 1e-9)  # (m, SUBSTEPS)
        inside = (r >= 0) & (r <= 1)
        rc = np.clip(r, 0.0, 1.0)
        env = np.where(inside, envelope(int(ev.shape[i]), rc), 0.0)
        p = (env * np.cos(ev.omega[i] * rc)).mean(1)
        q = (env * np.sin(ev.omega[i] * rc)).mean(1)
        x[steps] += ev.gain[i] * (p[:, None] * ev.a[i] + q[:, None] * ev.b[i])


def background(rng: np.random.Generator, num_steps: int, basis: np.ndarray, rho: float
               ) -> np.ndarray:
    """(T, D) stationary AR(1) process with coefficient rho in the rows of basis (R, D)."""
    rank = basis.shape[0]
    innov = math.sqrt(1 - rho * rho) * rng.standard_normal((num_steps, rank))
    z = np.empty((num_steps, rank))
    prev = rng.standard_normal(rank)
    for t in range(num_steps):
        prev = rho * prev + innov[t]
        z[t] = prev
    return BACKGROUND_SCALE * z @ basis


def _distractors(rng: np.random.Generator, n: int, num_steps: int, fam: Family,
                 class_p: np.ndarray, step_s: float, amplitude: float) -> Events:
    """n unlabelled movements of the classes' family, placed uniformly, with the durations of
    a class drawn by frequency."""
    c = rng.choice(len(class_p), size=n, p=class_p)
    dur = _durations(rng, fam, c) / step_s
    starts = rng.uniform(0, max(num_steps - 1, 1), size=n)
    a, b = _trajectories(rng, fam.shared, n)
    return Events(
        ft=np.stack([starts, starts + dur], 1),
        gain=amplitude * rng.uniform(*INSTANCE_GAIN, size=n),
        a=a, b=b,
        shape=rng.integers(len(SHAPES), size=n),
        omega=rng.uniform(*OMEGA_RANGE, size=n),
    )


def video_features(rng: np.random.Generator, num_steps: int, ft: np.ndarray, labels: np.ndarray,
                   fam: Family, class_p: np.ndarray, step_s: float, amplitude: float,
                   distractors: float, rho: float) -> np.ndarray:
    """(T, D) float32 features of one video with instances ft (n, 2) in feature time."""
    dim = fam.a.shape[1]
    x = np.zeros((num_steps, dim))
    gains = amplitude * rng.uniform(*INSTANCE_GAIN, size=len(ft))
    render(x, Events(ft, gains, fam.a[labels], fam.b[labels], fam.shape[labels],
                     fam.omega[labels]))
    m = int(round(distractors * len(ft)))
    render(x, _distractors(rng, m, num_steps, fam, class_p, step_s, amplitude))
    x += background(rng, num_steps, fam.background, rho)
    x += rng.standard_normal(x.shape)
    # A video's camera and person scale and shift every channel.
    x = rng.uniform(*VIDEO_GAIN) * x + OFFSET_STD * rng.standard_normal(dim)
    return x.astype(np.float32)


def _check(videos: int, amplitude: float, dim: int, min_duration_s: float,
           max_duration_s: float, distractors: float, background_rho: float) -> None:
    """ValueError for settings no set can have."""
    if videos < 1 or dim < 1:
        raise ValueError(f"need at least one video and one channel, got {videos} and {dim}")
    check_signal_and_lengths(amplitude, min_duration_s, max_duration_s)
    if distractors < 0:
        raise ValueError(f"distractors must be >= 0, got {distractors}")
    if not -1 < background_rho < 1:
        raise ValueError(f"background_rho must be in (-1, 1), got {background_rho}")


def synth_envelope_set(
    out: Path | str,
    videos: int = 40,
    seed: int = 0,
    amplitude: float = AMPLITUDE,
    dim: int = 256,
    fps: float = 10.0,
    stride: int = 4,
    min_duration_s: float = 120.0,
    max_duration_s: float = 300.0,
    source_fps: float = 30.0,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    distractors: float = 0.5,
    background_rho: float = 0.9,
) -> tuple[FeatureSet, Path]:
    """Write `out/annotations.json` and a feature set under `out/features/<key>/` (see the module
    docstring). `amplitude` scales every planted signal (gestures and distractors) against the
    unit white noise; `distractors` is the number of unlabelled movements per labelled instance;
    `background_rho` the AR(1) coefficient of the background. Returns the feature set and the
    annotation path."""
    _check(videos, amplitude, dim, min_duration_s, max_duration_s, distractors, background_rho)
    out = Path(out)
    classes = len(smg_profile.CLASSES)
    settings = {
        "model": "synthetic", "generator": "envelope", "fps": fps, "stride": stride,
        "dim": dim, "seed": seed, "videos": videos, "classes": classes,
        "amplitude": amplitude, "min_duration_s": min_duration_s,
        "max_duration_s": max_duration_s, "source_fps": source_fps, "split": list(split),
        "distractors": distractors, "background_rho": background_rho,
        "shared_rank": SHARED_RANK, "shared": SHARED, "background_rank": BACKGROUND_RANK,
        "background_scale": BACKGROUND_SCALE, "substeps": SUBSTEPS,
    }
    fs = FeatureSet.create(out / "features", "synthetic", settings)
    rng = np.random.default_rng(seed)
    fam = make_family(rng, classes, dim)
    class_p = smg_profile.class_probabilities()
    subsets = _split(rng, videos, split)
    step_s = stride / fps
    entries: dict[str, VideoAnnotations] = {}
    for i in progress_bar(range(videos), desc="synthetic videos", leave=False):
        vid = f"synth{i:04d}"
        vrng = np.random.default_rng([seed, i])  # per video, so videos do not shift each other
        duration, num_frames, num_steps = video_length(vrng, min_duration_s, max_duration_s,
                                                       source_fps, fps, stride)
        segs, labels = timeline(vrng, num_steps * step_s, fam, class_p, source_fps)
        feats = video_features(vrng, num_steps, segs / step_s, labels, fam, class_p, step_s,
                               amplitude, distractors, background_rho)
        write_synthetic_video(fs, vid, feats, duration, num_frames, source_fps,
                              {"seed": seed, "generator": "envelope", "amplitude": amplitude,
                               "distractors": distractors, "background_rho": background_rho})
        entries[vid] = VideoAnnotations(subsets[i], duration, source_fps, segs, labels)
    ann_path = out / "annotations.json"
    save_annotations(ann_path, Annotations(classes=smg_profile.class_names(), videos=entries))
    return fs, ann_path
