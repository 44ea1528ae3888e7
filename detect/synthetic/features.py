"""Synthetic feature sets with planted micro-gestures, for tests, demos and sanity checks.

Each class c has three unit directions in feature space: a body signature u_c, added to every
feature step in proportion to how much of the step the instance covers (so sub-step boundaries
leave a trace), and onset / offset signatures added at the instance's first and last step (so
boundaries are learnable). On top: a per-video offset, slow background drift along two shared
directions (both scaled by min(1, noise)), and white noise of standard deviation `noise` per
channel.

Two timeline profiles:

- "basic" (default): SMG-like in outline; instance durations log-normal around 1.6 s clipped to
  [min_instance_s, 10 s]; gestures in bursts (half the gaps short, half long); long-tailed class
  frequencies (class i drawn with weight 1/(i+1)); occasional overlapping instances of another
  class. `noise=0` is its clean, easy preset: no noise, offset or drift, instances of at least 3
  feature steps, gaps of at least 2 steps, no overlaps.
- "smg": SMG's own statistics (detect.synthetic.smg_profile: duration and gap quantiles, correlated
  gaps for bursts, overlaps, SMG's 17 classes with their names and frequencies). What makes real
  micro-gestures hard is planted too: classes of one body part share half of their body signature,
  unlabelled distractor movements of a body part (half as many as the gestures, SMG durations) carry
  no label, and the signal is blurred over 3 steps as an I3D's receptive field blurs it.

`amplitude` scales every planted signal (body, edges, distractors) against the noise; at the
defaults (noise 1, dim 256) a per-step linear probe on the smg profile scores f1_strict about
0.4 at amplitude 0.75. Annotations are on the source frame grid (`source_fps`). Everything is
determined by `seed`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from detect.data.annotations import Annotations, VideoAnnotations, save_annotations
from detect.synthetic import smg_profile
from extract.cache import FeatureMeta, FeatureSet, feature_timestamps, write_video
from extract.progress import progress as progress_bar
from extract.provenance import mgdet_version

BODY_AMPLITUDE = 4.0
EDGE_AMPLITUDE = 3.0
DRIFT_AMPLITUDE = 1.0
PROFILES = ("basic", "smg")
# The SMG profile: fraction of a class signature's energy shared with its body-part group,
# unlabelled distractor movements per labelled instance, and the temporal blur of the signal.
SMG_SHARED = 0.5
SMG_DISTRACTORS = 0.5
SMG_BLUR = (0.25, 0.5, 0.25)
# The time scale the SMG profile's blur and noise are defined at: one I3D feature step at 10 fps,
# stride 4. At a finer stride the same seconds are covered (a real I3D's receptive field is fixed
# in frames, and features of overlapping clips share their nuisances), so a finer stride gains
# temporal resolution but no independent noise samples.
SMG_TIME_SCALE_S = 0.4


def smg_time_scale(step_s: float) -> tuple[np.ndarray, int]:
    """The SMG profile's temporal blur kernel and noise correlation length (steps) at a feature
    step of `step_s` seconds.

    The blur is binomial with the variance of SMG_BLUR at 0.4 s (0.5 steps^2 there), so its width
    in seconds does not change with the stride; the white noise is averaged over k steps (scaled
    by sqrt(k) to keep its variance) with k steps = 0.4 s. At stride 4 and 10 fps these are
    exactly SMG_BLUR and k = 1.
    """
    r = SMG_TIME_SCALE_S / step_s
    n = max(2, int(round(2 * r * r)))
    n += n % 2  # an even order: an odd, centred kernel
    kernel = np.array([math.comb(n, i) for i in range(n + 1)], np.float64) / 2.0**n
    return kernel, max(1, int(round(r)))


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


def _events(
    x: np.ndarray,
    ft: np.ndarray,
    gains: np.ndarray,
    body: np.ndarray,
    onset: np.ndarray | None,
    offset: np.ndarray | None,
    edge_gain: float = 0.0,
) -> None:
    """Add events `ft` (n, 2) in feature time to x (T, dim) in place: gains[i] * body[i] (n, dim)
    in proportion to each step's coverage, edge_gain * onset[i] / offset[i] at the first / last
    step."""
    num_steps = x.shape[0]
    for i, (a, b) in enumerate(ft):
        first = min(int(math.floor(a)), num_steps - 1)
        last = min(max(first, int(math.ceil(b)) - 1), num_steps - 1)
        steps = np.arange(first, last + 1)
        cover = np.clip(np.minimum(b, steps + 1) - np.maximum(a, steps), 0.0, 1.0)
        x[steps] += gains[i] * cover[:, None] * body[i][None, :]
        if onset is not None and offset is not None:
            x[first] += edge_gain * onset[i]
            x[last] += edge_gain * offset[i]


def _features(
    rng: np.random.Generator,
    num_steps: int,
    ft: np.ndarray,
    labels: np.ndarray,
    dirs: np.ndarray,
    classes: int,
    noise: float,
    amplitude: float = 1.0,
    body: np.ndarray | None = None,
    distractors: tuple[np.ndarray, np.ndarray] | None = None,
    blur: np.ndarray | None = None,
    noise_steps: int = 1,
) -> np.ndarray:
    """(T, dim) float32 features for instances `ft` (n, 2) in feature time.

    `body` (classes, dim) replaces the class body signatures (the SMG profile's shared group
    parts); `distractors` = (ft (m, 2), directions (m, dim)) adds unlabelled motion without edge
    signatures; `blur` (odd length) smooths the signal over time, as an I3D's receptive field of
    several feature steps does, before nuisances and noise are added; `noise_steps` > 1 makes
    the white noise a moving average over that many steps (same variance).
    """
    dim = dirs.shape[1]
    body = dirs[:classes] if body is None else body
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
    signal = np.zeros((num_steps, dim))
    # Instances of a class are not all equally vivid.
    gains = amplitude * BODY_AMPLITUDE * rng.uniform(0.8, 1.2, size=len(ft))
    _events(signal, ft, gains, body[labels], onset[labels], offset[labels],
            amplitude * EDGE_AMPLITUDE)
    if distractors is not None:
        dft, ddirs = distractors
        dgains = amplitude * BODY_AMPLITUDE * rng.uniform(0.8, 1.2, size=len(dft))
        _events(signal, dft, dgains, ddirs, None, None)
    if blur is not None:
        pad = len(blur) // 2
        padded = np.pad(signal, ((pad, pad), (0, 0)), mode="edge")
        signal = sum(w * padded[k : k + num_steps] for k, w in enumerate(blur))
    x += signal
    if noise > 0:
        white = rng.standard_normal((num_steps + noise_steps - 1, dim))
        if noise_steps > 1:
            c = np.concatenate([np.zeros((1, dim)), np.cumsum(white, axis=0)])
            white = (c[noise_steps:] - c[:-noise_steps]) / math.sqrt(noise_steps)
        x += noise * white
    return x.astype(np.float32)


def _split(rng: np.random.Generator, n: int, fractions: tuple[float, float, float]) -> list[str]:
    n_val = max(1, round(fractions[1] * n)) if n >= 3 else 0
    n_test = max(1, round(fractions[2] * n)) if n >= 3 else 0
    subsets = ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    return [subsets[i] for i in rng.permutation(n)]


def _num_directions(classes: int, smg: bool) -> int:
    """Signature directions a set draws first from its seed: body, onset, offset per class, two
    drift directions, and the SMG profile's body-part groups."""
    return 3 * classes + 2 + (len(smg_profile.GROUPS) if smg else 0)


def _smg_bodies(own: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(17, dim) class bodies: a class's own direction plus its body-part group's."""
    member = smg_profile.class_groups()
    return math.sqrt(1 - SMG_SHARED) * own + math.sqrt(SMG_SHARED) * groups[member]


def smg_signatures(seed: int, dim: int = 256
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The planted signatures of the SMG-profile set made with `seed` and `dim`: class body,
    onset and offset, each (17, dim), and the body-part group directions (G, dim), all unit rows
    (orthonormal apart from a body's share of its group when dim >= 58). For references that know
    the generator (detect.synthetic.oracle); a model never sees them."""
    classes = len(smg_profile.CLASSES)
    dirs = _directions(np.random.default_rng(seed), _num_directions(classes, True), dim)
    groups = dirs[3 * classes + 2 :].copy()
    body = _smg_bodies(dirs[:classes], groups)
    return body, dirs[classes : 2 * classes].copy(), dirs[2 * classes : 3 * classes].copy(), groups


def _smg_extras(
    rng: np.random.Generator,
    num_steps: int,
    ft: np.ndarray,
    own: np.ndarray,
    groups: np.ndarray,
    step_s: float,
    distractors: float = SMG_DISTRACTORS,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The SMG profile's class bodies (17, dim) and distractors (ft (m, 2), directions (m, dim)).

    A class body is its own direction plus its body-part group's (a fraction SMG_SHARED of the
    energy), so gestures of one body part look alike; distractors are unlabelled movements of a
    body part (its group direction plus a random part), `distractors` per labelled instance,
    placed uniformly over the video with SMG's durations.
    """
    dim = own.shape[1]
    member = smg_profile.class_groups()
    body = _smg_bodies(own, groups)
    m = int(round(distractors * len(ft)))
    frames = smg_profile.quantile_sample(rng.random(m), smg_profile.DURATION_KNOTS)
    dur_steps = frames / smg_profile.SOURCE_FPS / step_s
    starts = rng.uniform(0, max(num_steps - 1, 1), size=m)
    # Body parts move as often as their gestures happen.
    p_group = np.bincount(member, weights=smg_profile.class_probabilities(),
                          minlength=len(groups))
    g = rng.choice(len(groups), size=m, p=p_group / p_group.sum())
    rand = rng.standard_normal((m, dim))
    rand /= np.linalg.norm(rand, axis=1, keepdims=True)
    dirs = math.sqrt(0.5) * groups[g] + math.sqrt(0.5) * rand
    return body, (np.stack([starts, starts + dur_steps], 1), dirs)


def video_length(rng: np.random.Generator, min_duration_s: float, max_duration_s: float,
                 source_fps: float, fps: float, stride: int) -> tuple[float, int, int]:
    """A synthetic video's duration (s, on the source frame grid), frames at `fps` and feature
    steps."""
    duration = round(rng.uniform(min_duration_s, max_duration_s) * source_fps) / source_fps
    num_frames = int(math.floor(duration * fps + 1e-9))
    return duration, num_frames, num_frames // stride


def write_synthetic_video(fs: FeatureSet, vid: str, feats: np.ndarray, duration: float,
                          num_frames: int, source_fps: float, extra: dict) -> None:
    """One synthetic video's features (T, dim) into the feature set, with their timestamps and
    the metadata a real extraction writes (`extra`: the generator's settings)."""
    meta = FeatureMeta(
        video_id=vid,
        fps=fs.fps,
        stride=fs.stride,
        source_path=f"synthetic://{vid}",
        source_fps=source_fps,
        duration=duration,
        num_frames=num_frames,
        model="synthetic",
        weights="synthetic",
        weights_sha256="",
        layers=["synthetic"],
        mgdet_version=mgdet_version(),
        extra=extra,
    )
    write_video(fs.video_path(vid), feats, feature_timestamps(len(feats), fs.stride, fs.fps), meta)


def _check_settings(profile: str, videos: int, classes: int | None, noise: float,
                    amplitude: float, min_duration_s: float, max_duration_s: float) -> int:
    """ValueError for settings no set can have; the number of classes."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    smg = profile == "smg"
    n_smg = len(smg_profile.CLASSES)
    if smg and classes not in (None, n_smg):
        raise ValueError(f"profile smg has SMG's {n_smg} classes, got classes={classes}")
    classes = (n_smg if smg else 8) if classes is None else classes
    if videos < 1 or classes < 1:
        raise ValueError(f"need at least one video and one class, got {videos} and {classes}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    check_signal_and_lengths(amplitude, min_duration_s, max_duration_s)
    return classes


def check_signal_and_lengths(amplitude: float, min_duration_s: float, max_duration_s: float
                             ) -> None:
    """ValueError for an amplitude or video lengths no set can have (every generator's rule)."""
    if amplitude <= 0:
        raise ValueError(f"amplitude must be > 0, got {amplitude}")
    if not 0 < min_duration_s <= max_duration_s:
        raise ValueError(
            f"need 0 < min_duration_s <= max_duration_s, got {min_duration_s}, {max_duration_s}"
        )


def synth_feature_set(
    out: Path | str,
    videos: int,
    classes: int | None = None,
    seed: int = 0,
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
    profile: str = "basic",
    amplitude: float = 1.0,
    distractors: float = SMG_DISTRACTORS,
) -> tuple[FeatureSet, Path]:
    """Write `out/annotations.json` and a feature set under `out/features/<key>/`.

    profile "basic": `classes` (default 8) generic classes, timelines as in the module docstring.
    `min_instance_s` defaults to 0.3 s, or 3 feature steps for the clean preset (`noise=0`);
    `overlap_prob` (chance that an instance starts inside the previous one) to 0.02, or 0 when
    clean.

    profile "smg": SMG's 17 classes, names and frequencies, durations, bursty gaps and overlaps
    (detect.synthetic.smg_profile; the instance-length and overlap arguments do not apply), class
    signatures shared within a body-part group, unlabelled distractor movements and an I3D-like
    temporal blur; `distractors` unlabelled movements per labelled instance. `amplitude` scales
    every planted signal against the noise (both profiles).
    Returns the feature set and the annotation path.
    """
    smg = profile == "smg"
    classes = _check_settings(profile, videos, classes, noise, amplitude, min_duration_s,
                              max_duration_s)
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
    if smg:
        for k in ("min_instance_s", "max_instance_s", "overlap_prob"):
            del settings[k]
        kernel, noise_steps = smg_time_scale(step_s)
        settings.update(profile="smg", shared=SMG_SHARED, distractors=distractors,
                        blur=[float(w) for w in kernel])
        if noise_steps > 1:  # so the stride-4 sets keep their keys
            settings["noise_steps"] = noise_steps
    if amplitude != 1.0:  # so the default sets keep their keys
        settings["amplitude"] = amplitude
    fs = FeatureSet.create(out / "features", "synthetic", settings)
    rng = np.random.default_rng(seed)
    dirs = _directions(rng, _num_directions(classes, smg), dim)
    if smg:
        class_p = smg_profile.class_probabilities()
        names = smg_profile.class_names()
    else:
        weights = 1.0 / np.arange(1, classes + 1)
        class_p = weights / weights.sum()
        names = [f"gesture{c:02d}" for c in range(classes)]
    subsets = _split(rng, videos, split)
    entries: dict[str, VideoAnnotations] = {}
    for i in progress_bar(range(videos), desc="synthetic videos", leave=False):
        vid = f"synth{i:04d}"
        vrng = np.random.default_rng([seed, i])  # per video, so videos do not shift each other
        duration, num_frames, num_steps = video_length(vrng, min_duration_s, max_duration_s,
                                                       source_fps, fps, stride)
        extras: dict = {}
        if smg:
            segs, labels = smg_profile.timeline(vrng, num_steps * step_s, source_fps)
            body, moves = _smg_extras(vrng, num_steps, segs / step_s, dirs[:classes],
                                      dirs[3 * classes + 2 :], step_s, distractors)
            extras = dict(body=body, distractors=moves, blur=kernel, noise_steps=noise_steps)
        else:
            segs, labels = _timeline(vrng, num_steps * step_s, class_p, min_inst,
                                     max_instance_s, min_gap, overlap, source_fps)
        feats = _features(vrng, num_steps, segs / step_s, labels, dirs, classes, noise,
                          amplitude, **extras)
        write_synthetic_video(fs, vid, feats, duration, num_frames, source_fps,
                              {"seed": seed, "noise": noise, "profile": profile,
                               "amplitude": amplitude})
        entries[vid] = VideoAnnotations(subsets[i], duration, source_fps, segs, labels)
    ann_path = out / "annotations.json"
    save_annotations(ann_path, Annotations(classes=names, videos=entries))
    return fs, ann_path
