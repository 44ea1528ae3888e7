"""SMG's ground-truth timeline statistics, and timelines drawn from them (`synth --profile smg`).

The figures are those of the reference note smg-timeline-stats.md (3,089 instances in SMG
Sample0001-0035, source frames at about 28 fps). Durations and gaps are drawn by inverse-CDF
sampling of the empirical quantile function, interpolated log-linearly between the quantiles the
note gives, so the synthetic quantiles match the real ones at every knot. Successive gaps are
correlated (a Gaussian copula with AR(1) coefficient `GAP_CORRELATION`), so short gaps cluster
into bursts as they do in SMG rather than being independent draws.

Classes carry SMG's names, label order and relative frequencies (two classes, moving legs and
arms akimbo, hold 64% of the instances), and a body-part group each; the feature generator makes
classes of one group share part of their signature and adds unlabelled "distractor" motion along
the group directions, which is what makes a per-step linear probe confuse them.
"""

from __future__ import annotations

import math

import numpy as np

SOURCE_FPS = 28.0

# (quantile, frames) knots at SOURCE_FPS; min and max are the 0 and 1 knots.
DURATION_KNOTS = ((0.0, 3), (0.05, 15), (0.25, 28), (0.5, 44), (0.75, 69), (0.95, 127),
                  (1.0, 554))
# Gap between consecutive instances (frames); the lower tail below p5 goes to 1 frame (zero gaps
# would make touching instances that an annotator would have merged), the upper tail to 3x p95.
GAP_KNOTS = ((0.0, 1), (0.05, 1), (0.25, 5), (0.5, 31), (0.75, 180), (0.95, 1014), (1.0, 3042))
OVERLAP_PROB = 40 / 3054  # consecutive pairs that overlap
GAP_CORRELATION = 0.5

# (name, instances in Sample0001-0035, body-part group), in SMG's label order (label id - 1, as
# detect.datasets.smg.SMG_CLASSES), so a model trained on the profile maps to SMG's ids.
CLASSES: tuple[tuple[str, int, str], ...] = (
    ("turtling neck and shoulder", 43, "head"),
    ("rubbing eyes and forehead", 48, "head"),
    ("folding arms", 182, "arms"),
    ("touching or covering suprasternal notch", 9, "head"),
    ("moving legs", 1104, "legs"),
    ("touching or scratching neck", 23, "head"),
    ("folding arms behind body", 123, "arms"),
    ("rubbing hands and crossing fingers", 255, "hands"),
    ("arms akimbo", 880, "arms"),
    ("crossing legs", 16, "legs"),
    ("scratching some other body part", 16, "body"),
    ("scratching or touching facial parts other than eyes", 190, "head"),
    ("playing with or adjusting hair", 60, "head"),
    ("holding arms", 64, "arms"),
    ("pulling shirt collar", 11, "head"),
    ("playing with jewellery or manipulating objects", 21, "hands"),
    ("illustrative hand gestures", 44, "hands"),
)
GROUPS: tuple[str, ...] = ("legs", "arms", "hands", "head", "body")


def class_names() -> list[str]:
    return [name for name, _, _ in CLASSES]


def class_probabilities() -> np.ndarray:
    """(17,) relative frequencies of the classes, in CLASSES order."""
    counts = np.array([n for _, n, _ in CLASSES], np.float64)
    return counts / counts.sum()


def class_groups() -> np.ndarray:
    """(17,) index into GROUPS of each class's body-part group."""
    return np.array([GROUPS.index(g) for _, _, g in CLASSES], np.int64)


def quantile_sample(u: np.ndarray, knots: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Values at uniform draws `u` (any shape, in [0, 1]) of the log-linearly interpolated
    quantile function through `knots` ((q, value) pairs, q ascending from 0 to 1)."""
    q = np.array([k[0] for k in knots])
    v = np.log(np.array([k[1] for k in knots], np.float64))
    return np.exp(np.interp(u, q, v))


def _std_normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


def correlated_uniforms(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    """(n,) uniforms whose normal scores follow an AR(1) process with coefficient rho."""
    z = np.empty(n)
    prev = rng.standard_normal()
    for i in range(n):
        prev = rho * prev + math.sqrt(1.0 - rho * rho) * rng.standard_normal()
        z[i] = prev
    return _std_normal_cdf(z) if n else z


def timeline(
    rng: np.random.Generator, length_s: float, source_fps: float = SOURCE_FPS
) -> tuple[np.ndarray, np.ndarray]:
    """One SMG-like timeline: instances (n, 2) in seconds on the source frame grid, inside
    [0, length_s], sorted by start; labels (n,) into CLASSES.

    Frame counts are drawn at SMG's 28 fps and converted to seconds, so the statistics hold in
    seconds whatever `source_fps` the annotations use.
    """
    p = class_probabilities()
    # Enough draws for the longest timeline: the mean instance plus gap is about 10 s.
    n_max = int(length_s / 0.5) + 8
    durs = quantile_sample(rng.random(n_max), DURATION_KNOTS) / SOURCE_FPS
    gaps = quantile_sample(correlated_uniforms(rng, n_max, GAP_CORRELATION), GAP_KNOTS) / SOURCE_FPS
    overlap = rng.random(n_max) < OVERLAP_PROB
    labels = rng.choice(len(p), size=n_max, p=p)
    segs, labs = [], []
    t = float(rng.uniform(0.0, 10.0))
    for i in range(n_max):
        if segs and overlap[i]:
            # Starts inside the previous instance, with another class (co-occurring gestures).
            ps, pe = segs[-1]
            start = ps + rng.uniform(0.2, 0.8) * (pe - ps)
            c = int(labels[i]) if labels[i] != labs[-1] else (int(labels[i]) + 1) % len(p)
        else:
            start, c = t, int(labels[i])
        s = math.ceil(start * source_fps - 1e-9) / source_fps
        e = max(s + 1 / source_fps, math.floor((s + durs[i]) * source_fps + 1e-9) / source_fps)
        if e > length_s:
            break
        segs.append((s, e))
        labs.append(c)
        t = max(t, e) + gaps[i]
    order = np.argsort([s for s, _ in segs], kind="stable")
    out = np.array(segs, np.float64).reshape(-1, 2)[order]
    return out, np.array(labs, np.int64)[order]
