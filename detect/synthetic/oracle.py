"""What an SMG-profile feature set carries: a decoder that knows the generator.

The generator (detect.synthetic.features, profile "smg") plants each instance as known vectors
along known time profiles, in white noise of standard deviation `noise` per channel:

    gesture of class c: x[t] += g * (blur * cover)[t] * body_c + e * blur[t - first] * onset_c
                                + e * blur[t - last] * offset_c
    distractor of body-part group j: x[t] += g * (blur * cover)[t] * (group_j + r) / sqrt(2)

(cover: the fraction of step t the instance covers; g, e: the body and edge gains; blur: the
profile's temporal kernel; r: a random unit direction, not modelled here). For a candidate (a
gesture of class c or a distractor of group j, start a, length d in steps) the log-likelihood ratio
of "this instance" against "noise only" is (<x, m> - |m|^2 / 2) / noise^2, with m the planted
signal at the mean gain (`oracle_scores`). Adding the log prior of its start, class and length
gives its log-odds against background.

`oracle_detections` decodes a whole video as the most likely segmentation into background steps,
gestures and distractors (a semi-Markov Viterbi pass over starts on a quarter-step grid and
lengths on a geometric grid; each step belongs to one instance at most), and reports its
gestures scored by their log-odds.

It is a reference, not a model: it is told the signatures, gains, blur and timeline statistics
that a trained detector must learn from a few dozen videos, so it estimates how much of the score
the data allows at a given amplitude (bench/accuracy.py --models oracle). It is not a strict
bound: it ignores overlapping instances, the distractors' random part, the drift and the spread of
the gains, and corrects the blur's overlap of touching instances only as if both covered their
boundary steps fully.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detect.config import EvalConfig
from detect.data.annotations import load_annotations
from detect.evaluation.evaluate import score_detections
from detect.inference.detections import Detections, save_predictions
from detect.inference.postprocess import apply_threshold
from detect.synthetic import smg_profile
from detect.synthetic.features import (
    BODY_AMPLITUDE,
    EDGE_AMPLITUDE,
    SMG_DISTRACTORS,
    smg_signatures,
    smg_time_scale,
)
from extract.cache import FeatureSet
from extract.io import atomic_write_json
from extract.progress import progress as progress_bar
from extract.provenance import versions

PHASES = 4  # starts on a quarter-step grid
MAX_LENGTH_STEPS = 50.0  # longer than SMG's longest instance (554 frames at 28 fps, stride 4)


@dataclass
class Planted:
    """What the generator planted for one SMG-profile set: class signatures (C, dim), group
    directions (G, dim), mean gains, blur kernel (n,) (odd n), the step in seconds, class and
    group priors (C,), (G,), gestures started per step, distractors per gesture, and the white
    noise's standard deviation per channel."""

    body: np.ndarray
    onset: np.ndarray
    offset: np.ndarray
    groups: np.ndarray
    gain: float
    edge_gain: float
    blur: np.ndarray
    step_s: float
    prior: np.ndarray
    group_prior: np.ndarray
    start_rate: float
    distractors: float = SMG_DISTRACTORS
    noise: float = 1.0

    @classmethod
    def of_set(cls, seed: int, amplitude: float, stride: int = 4, fps: float = 10.0,
               dim: int = 256, noise: float = 1.0, distractors: float = SMG_DISTRACTORS
               ) -> Planted:
        """The planted model of `synth_feature_set(profile="smg", seed=..., ...)`."""
        body, onset, offset, groups = smg_signatures(seed, dim)
        step_s = stride / fps
        blur, noise_steps = smg_time_scale(step_s)
        if noise_steps != 1:
            raise ValueError(f"the oracle assumes white noise per step (stride 4 at 10 fps), "
                             f"got a step of {step_s} s")
        if noise <= 0:
            raise ValueError(f"the oracle needs noise > 0, got {noise}")
        prior = smg_profile.class_probabilities()
        group_prior = np.bincount(smg_profile.class_groups(), weights=prior,
                                  minlength=len(groups))
        return cls(body, onset, offset, groups, amplitude * BODY_AMPLITUDE,
                   amplitude * EDGE_AMPLITUDE, blur, step_s, prior, group_prior,
                   gesture_rate(step_s), distractors, noise)


def gesture_rate(step_s: float, videos: int = 40, length_s: float = 300.0) -> float:
    """Gestures started per step of `step_s` seconds on SMG-profile timelines (a fixed sample)."""
    rng = np.random.default_rng(0)
    n = sum(len(smg_profile.timeline(rng, length_s)[1]) for _ in range(videos))
    return n / (videos * length_s / step_s)


def lengths_grid(max_steps: float = MAX_LENGTH_STEPS) -> np.ndarray:
    """Candidate lengths in steps: quarter steps up to 2, then about 8% apart."""
    fine = np.arange(1, 9) / PHASES
    coarse = np.round(np.geomspace(2.0, max_steps, 42) * PHASES) / PHASES
    return np.unique(np.concatenate([fine, coarse]))


def length_log_prior(lengths: np.ndarray, step_s: float) -> np.ndarray:
    """(L,) log probability of each grid length's cell (bounded by the midpoints to its
    neighbours) under SMG's duration distribution."""
    q = np.array([k[0] for k in smg_profile.DURATION_KNOTS])
    frames = np.log(np.array([k[1] for k in smg_profile.DURATION_KNOTS], np.float64))
    edges = np.concatenate([[0.0], (lengths[1:] + lengths[:-1]) / 2, [np.inf]])
    log_frames = np.log(np.maximum(edges * step_s * smg_profile.SOURCE_FPS, 1e-12))
    mass = np.diff(np.interp(log_frames, frames, q, left=0.0, right=1.0))
    return np.log(np.maximum(mass, 1e-12))


def profiles(phase: float, length: float, blur: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The time profiles of an instance over [phase, phase + length) (steps, phase in [0, 1)):
    blurred body coverage (n,) starting at step `-pad`, and the blurred edge kernel (the blur)
    centred on the first step (0) and on the last step (returned: last, pad)."""
    a, b = phase, phase + length
    last = max(0, math.ceil(b) - 1)
    steps = np.arange(0, last + 1)
    cover = np.clip(np.minimum(b, steps + 1) - np.maximum(a, steps), 0.0, 1.0)
    return np.convolve(cover, blur), blur, last, len(blur) // 2


@dataclass
class _Projections:
    """x projected on the signatures: class bodies, onsets, offsets (T, C), groups (T, G), and
    ones (T, 1) (for the signal's energy inside the video); each zero-padded by `room` steps on
    both sides, once for all the candidate shapes."""

    body: np.ndarray
    onset: np.ndarray
    offset: np.ndarray
    group: np.ndarray
    inside: np.ndarray
    room: int
    steps: int

    @classmethod
    def of(cls, x: np.ndarray, planted: Planted, max_length: float) -> _Projections:
        """`max_length`: the longest candidate (steps) the projections must make room for."""
        room = math.ceil(1 + max_length) + 2 * len(planted.blur) + 1

        def padded(v: np.ndarray) -> np.ndarray:
            return np.pad(v, ((room, room), (0, 0)))

        parts = [x @ s.T for s in (planted.body, planted.onset, planted.offset, planted.groups)]
        return cls(*map(padded, parts), padded(np.ones((len(x), 1))), room, len(x))

    def summed(self, v: np.ndarray, taps: np.ndarray, offset: int) -> np.ndarray:
        """sum_j taps[j] * v[k + offset + j] for every step k; v one of the padded arrays."""
        n, out = self.steps, np.zeros((self.steps, v.shape[1]))
        for j, w in enumerate(taps):
            lo = self.room + offset + j
            out += w * v[lo : lo + n]
        return out


def oracle_scores(x: np.ndarray, planted: Planted, phase: float, length: float) -> np.ndarray:
    """(T, C + G) log-likelihood ratios of a gesture of each class, then a distractor of each
    group, starting at step k + phase with `length` steps, for every k (-inf where it would run
    past the end); x (T, dim) features."""
    return _scores(_Projections.of(x, planted, length), planted, phase, length)


def _scores(xp: _Projections, planted: Planted, phase: float, length: float) -> np.ndarray:
    body_k, edge_k, last, pad = profiles(phase, length, planted.blur)
    n, summed = xp.steps, xp.summed
    g, e = planted.gain, planted.edge_gain
    gesture = (g * summed(xp.body, body_k, -pad) + e * summed(xp.onset, edge_k, -pad)
               + e * summed(xp.offset, edge_k, last - pad))
    # The distractor's known part: its group direction at 1/sqrt(2) of its gain.
    distractor = g * math.sqrt(0.5) * summed(xp.group, body_k, -pad)
    # |m|^2 over the video's steps (a candidate at an end loses the part outside); the
    # signatures are orthonormal, so a gesture's three parts add, also when its first and last
    # step are one.
    body_e = summed(xp.inside, body_k**2, -pad)
    gesture -= 0.5 * (g * g * body_e + e * e * (summed(xp.inside, edge_k**2, -pad)
                                                + summed(xp.inside, edge_k**2, last - pad)))
    distractor -= 0.5 * 0.5 * g * g * body_e
    s = np.concatenate([gesture, distractor], axis=1) / planted.noise**2
    # No planted instance runs past the video's end.
    s[np.arange(n) + phase + length > n] = -np.inf
    return s


@dataclass
class _Segments:
    """The best candidate per (start step k, steps claimed n, hypothesis h): its log-odds against
    background (T, N + 1, H), its phase and its length in steps (T, N + 1, H)."""

    score: np.ndarray
    phase: np.ndarray
    length: np.ndarray


def _segment_table(x: np.ndarray, planted: Planted, lengths: np.ndarray) -> _Segments:
    xp = _Projections.of(x, planted, float(lengths.max()))
    T = x.shape[0]
    n_max = math.ceil((PHASES - 1) / PHASES + lengths.max())
    log_rate = np.log(planted.start_rate / PHASES * np.concatenate(
        [planted.prior, planted.distractors * planted.group_prior]))
    shape = (T, n_max + 1, log_rate.size)
    table = _Segments(np.full(shape, -np.inf), np.zeros(shape), np.zeros(shape))
    for d, log_len in zip(lengths, length_log_prior(lengths, planted.step_s), strict=True):
        for p in range(PHASES):
            n = math.ceil(p / PHASES + d)
            s = _scores(xp, planted, p / PHASES, float(d)) + log_len + log_rate[None, :]
            better = s > table.score[:, n]
            table.score[:, n][better] = s[better]
            table.phase[:, n][better] = p / PHASES
            table.length[:, n][better] = d
    return table


def _touch_cost(planted: Planted) -> np.ndarray:
    """(H, H) what two touching instances' evidence overlaps by, <m_i, m_j> / noise^2: the blur
    spreads each one's body into the other's first / last steps (for the (1, 2, 1) / 4 blur the
    blurred covers overlap by 2 x 0.75 x 0.25), along directions that share body_i . body_j (1
    for one class, 1/2 for one body-part group); edges are orthogonal to everything else."""
    u = np.concatenate([planted.body, planted.groups / math.sqrt(2.0)])
    # Two covers meeting at a step boundary, each as wide as the blur, blurred.
    w = len(planted.blur)
    left = np.convolve(np.r_[np.ones(w), np.zeros(w)], planted.blur)
    right = np.convolve(np.r_[np.zeros(w), np.ones(w)], planted.blur)
    return planted.gain**2 * float(left @ right) * (u @ u.T) / planted.noise**2


def _viterbi(score: np.ndarray, touch: np.ndarray) -> list[tuple[int, int, int]]:
    """The most likely segmentation's instances (start step, steps claimed, hypothesis), by
    start, from the segment log-odds (T, N + 1, H) and the touching cost (H, H).

    Each step belongs to one instance at most. Two touching instances both count the blur's
    spill across their boundary, so their sum is corrected by their evidence's overlap (without
    it a long instance scores more cut into pieces). bg[t] is the best log-odds of steps [0, t)
    ending in background; inst[t, h] ending in an instance of h."""
    T, n_max, H = score.shape[0], score.shape[1] - 1, score.shape[2]
    bg = np.full(T + 1, -np.inf)
    inst = np.full((T + 1, H), -np.inf)
    bg[0] = 0.0
    back = np.zeros((T + 1, H, 2), np.int64)  # (steps n, previous hypothesis or -1: background)
    for t in range(1, T + 1):
        bg[t] = max(bg[t - 1], inst[t - 1].max())
        ns = np.arange(1, min(t, n_max) + 1)
        # (n, H', H): a previous instance of h' touching this one of h
        after_inst = inst[t - ns][:, :, None] - touch[None]
        prev = after_inst.argmax(1)  # (n, H)
        best_prev = np.take_along_axis(after_inst, prev[:, None, :], 1)[:, 0]
        from_bg = bg[t - ns][:, None] >= best_prev
        vals = np.where(from_bg, bg[t - ns][:, None], best_prev) + score[t - ns, ns, :]
        i = vals.argmax(0)  # (H,)
        inst[t] = vals[i, np.arange(H)]
        back[t, :, 0] = ns[i]
        back[t, :, 1] = np.where(from_bg[i, np.arange(H)], -1, prev[i, np.arange(H)])
    out = []
    t = T
    h = -1 if bg[T] >= inst[T].max() else int(inst[T].argmax())
    while t > 0:
        if h < 0:
            # background at step t - 1: where did [0, t - 1) end?
            t -= 1
            h = -1 if bg[t] >= inst[t].max() else int(inst[t].argmax())
            continue
        n, prev = (int(v) for v in back[t, h])
        out.append((t - n, n, h))
        t, h = t - n, prev
    return out[::-1]


def oracle_detections(x: np.ndarray, planted: Planted, max_per_video: int = 2000,
                      lengths: np.ndarray | None = None) -> Detections:
    """One video's detections (seconds) from features x (T, dim): the gestures of the most
    likely segmentation, each scored by its log-odds against background."""
    lengths = lengths_grid() if lengths is None else lengths
    table = _segment_table(np.asarray(x, np.float64), planted, lengths)
    C = planted.prior.size
    rows = [(k, n, h) for k, n, h in _viterbi(table.score, _touch_cost(planted)) if h < C]
    if not rows:
        return Detections.empty()
    k, n, h = (np.array(v) for v in zip(*rows, strict=True))
    a = (k + table.phase[k, n, h]) * planted.step_s
    d = Detections(a, a + table.length[k, n, h] * planted.step_s, h, table.score[k, n, h])
    order = np.argsort(-d.score, kind="stable")[:max_per_video]
    return d.take(np.sort(order))


def run_oracle(features: Path, annotations: Path, out: Path, progress: bool = True
               ) -> dict[str, Any]:
    """The oracle on a stride-4 SMG-profile set (its seed, amplitude and dim read from the set's
    settings), scored as the baselines are: threshold tuned on `val`, metrics of `test`; writes
    out/metrics.json (with "fit_seconds": the decoding time of both subsets) and
    out/predictions.json (test, thresholded)."""
    fs = FeatureSet.open(Path(features))
    ann = load_annotations(Path(annotations), feature_set=fs)
    st = fs.settings
    if st.get("model") != "synthetic" or st.get("profile") != "smg" or "noise_steps" in st:
        raise ValueError(f"{fs.path}: the oracle knows only the generator's stride-4 SMG-profile "
                         "sets (detect.synthetic.features, profile smg)")
    seed, amplitude = int(st["seed"]), float(st.get("amplitude", 1.0))
    planted = Planted.of_set(seed, amplitude, fs.stride, fs.fps, dim=int(st["dim"]),
                             noise=float(st["noise"]),
                             distractors=float(st.get("distractors", SMG_DISTRACTORS)))
    cfg = EvalConfig()
    t0 = time.time()

    def decode(subset: str) -> dict[str, Detections]:
        vids = ann.subset(subset).video_ids()
        return {v: oracle_detections(fs.load(v).features, planted, cfg.max_per_video)
                for v in progress_bar(vids, desc=f"oracle {subset}", enabled=progress)}

    val = score_detections(decode("val"), ann, "val", cfg, None)
    test_preds = decode("test")
    metrics = score_detections(test_preds, ann, "test", cfg, val["threshold"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_predictions(out / "predictions.json", apply_threshold(test_preds, metrics["threshold"]),
                     ann.classes)
    metrics.update(subset="test", oracle={"seed": seed, "amplitude": amplitude},
                   fit_seconds=round(time.time() - t0, 3),
                   val={k: val[k] for k in ("f1_miga", "f1_strict", "map")},
                   feature_set={"path": str(fs.path), "key": fs.key},
                   annotations=str(annotations), versions=versions())
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
