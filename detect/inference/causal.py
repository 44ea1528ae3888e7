"""The causal (strictly online) mode: a detection is emitted within about D of its end and never
revised.

Every `every` feature steps, once step e-1 has arrived (e steps so far), one window of W steps
ending there runs: steps [max(0, e - W), e), padded at its end while fewer than W have arrived
(as offline's last window). Its decoded detections are clipped to the steps that arrived, so no
detection ends after e. The candidates of that decision are those ending within the last D
steps, (e - D, e]; older ones had their chance at earlier decisions. `Emitter` then applies the
emission rule:

1. keep the candidates scoring at least the emission threshold (tuned on val);
2. causal NMS: drop every candidate overlapping an already emitted detection of its class by
   tIoU > nms_iou (what was emitted wins: it cannot be withdrawn);
3. greedy per-class NMS among the rest (`merge_video`), and emit the survivors.

The emission time of a decision is the stream time of the last feature it used plus the
feature's half-span, e x stride / fps seconds: the time at which every frame of that feature
had arrived. A detection therefore never ends after the time it was emitted (tests check it).

`replay` runs the decisions of a whole recorded feature sequence in batches (each window only
reads the steps before its end, so batching changes nothing), `CausalDetector` runs them as
steps arrive; both give the same emissions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from detect.config import Config
from detect.data.windows import WindowDataset, horizon_steps, slice_padded
from detect.inference.detections import Detections, tiou
from detect.inference.online import StepBuffer
from detect.inference.postprocess import DecodeOptions, decode_outputs, merge_video
from extract.progress import progress as progress_bar


@dataclass(frozen=True)
class CausalSettings:
    """window: W steps per decision; horizon: D steps; every: steps between decisions;
    stride / fps: the features' time step."""

    window: int
    horizon: int
    every: int
    stride: int
    fps: float

    def __post_init__(self) -> None:
        if self.window < 1 or self.every < 1 or not 1 <= self.horizon <= self.window:
            raise ValueError(f"need window >= 1, every >= 1 and 1 <= horizon <= window, got "
                             f"window {self.window}, horizon {self.horizon}, every {self.every}")

    @property
    def step_seconds(self) -> float:
        return self.stride / self.fps

    def with_horizon_s(self, horizon_s: float) -> CausalSettings:
        """The same settings at another horizon (seconds, rounded to steps, at most W)."""
        h = min(self.window, horizon_steps(horizon_s, self.stride, self.fps))
        return CausalSettings(self.window, h, self.every, self.stride, self.fps)

    @classmethod
    def of(cls, cfg: Config, stride: int, fps: float, horizon_s: float | None = None,
           every: int | None = None) -> CausalSettings:
        """A run's settings ([online] and data.window), with optional overrides."""
        h = cfg.online.horizon_s if horizon_s is None else horizon_s
        return cls(cfg.data.window, min(cfg.data.window, horizon_steps(h, stride, fps)),
                   every or cfg.online.every, stride, fps)


def decision_ends(num_steps: int, every: int) -> list[int]:
    """The step counts e at which decisions run over a sequence of `num_steps` steps: every
    `every` steps, and once more at the end when the sequence stops between two."""
    ends = list(range(every, num_steps + 1, every))
    if num_steps and (not ends or ends[-1] != num_steps):
        ends.append(num_steps)
    return ends


def causal_window(end: int, window: int) -> tuple[int, int]:
    """(start, valid) of the window of a decision after `end` steps."""
    start = max(0, end - window)
    return start, end - start


def recent(dets: Detections, end: int, s: CausalSettings) -> Detections:
    """The detections of the decision after `end` steps that end within its last D steps."""
    sec = s.step_seconds
    # 1e-9: a boundary exactly D steps back belongs to the earlier decision.
    return dets.take(np.flatnonzero(dets.end > (end - s.horizon) * sec + 1e-9))


class Decider:
    """The model side of the causal mode: windows ending at given step counts -> candidates.

    model: features (B, W, C) [, res4 (B, W, C4)] -> a detector's outputs, decoded by
    `decode_outputs` with `decode` (its window, stride and fps must be the settings')."""

    def __init__(self, model: torch.nn.Module, settings: CausalSettings, decode: DecodeOptions,
                 device: torch.device | None = None,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if (decode.window, decode.stride, decode.fps) != (
                settings.window, settings.stride, settings.fps):
            raise ValueError(f"decode options {decode} disagree with the causal settings "
                             f"{settings}")
        self.model = model.eval()
        self.s = settings
        self.decode = decode
        self.device = device or torch.device("cpu")
        self.on_batch = on_batch  # (decisions, seconds) per model call: for the bench

    def __call__(self, feats: np.ndarray, res4: np.ndarray | None, ends: list[int],
                 base: int = 0) -> list[Detections]:
        """feats (T, C) (res4 (T, C4)) hold global steps base .. base + T - 1; one candidate
        set per decision end (global step counts, each <= base + T)."""
        W = self.s.window
        xs, r4s, meta = [], [], []
        for e in ends:
            start, valid = causal_window(e, W)
            xs.append(slice_padded(feats[: e - base], start - base, W))
            if res4 is not None:
                r4s.append(slice_padded(res4[: e - base], start - base, W))
            meta.append((str(e), start, valid))
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.stack(xs).to(self.device)
            r4 = torch.stack(r4s).to(self.device) if r4s else None
            out = self.model(x, r4)
        decoded = decode_outputs(out, meta, self.decode)
        if self.on_batch is not None:
            self.on_batch(len(ends), time.perf_counter() - t0)
        return [recent(Detections.concat(decoded[str(e)]), e, self.s) for e in ends]


class Emitter:
    """The emission rule (module docstring, steps 1-3). `step` takes one decision's candidates
    and returns what it emits; emitted detections are remembered only while a later candidate
    can still overlap them (those ending within the last `memory_s` seconds)."""

    def __init__(self, threshold: float, nms_iou: float, memory_s: float) -> None:
        self.threshold, self.nms_iou, self.memory_s = threshold, nms_iou, memory_s
        self.emitted = Detections.empty()

    def step(self, now_s: float, cands: Detections) -> Detections:
        c = cands.take(np.flatnonzero(cands.score >= self.threshold))
        if len(c) and len(self.emitted):
            same = c.label[:, None] == self.emitted.label[None, :]
            over = same & (tiou(c.segments, self.emitted.segments) > self.nms_iou)
            c = c.take(np.flatnonzero(~over.any(axis=1)))
        out = merge_video(c, self.nms_iou, -math.inf, len(c))
        out = out.take(np.lexsort((-out.score, out.end)))  # by end time, as they happened
        self.emitted = Detections.concat([self.emitted, out])
        self.emitted = self.emitted.take(np.flatnonzero(self.emitted.end > now_s - self.memory_s))
        return out


@dataclass
class Emissions:
    """A video's emitted detections, in emission order, and when each was emitted (seconds of
    stream time, (n,))."""

    detections: Detections
    emitted_at: np.ndarray


def emit(decisions: list[tuple[int, Detections]], threshold: float, nms_iou: float,
         s: CausalSettings) -> Emissions:
    """Run the emission rule over a video's decisions (end step count, candidates), in order."""
    em = Emitter(threshold, nms_iou, memory_s=s.window * s.step_seconds)
    return emit_steps(em, [e for e, _ in decisions], [c for _, c in decisions], s.step_seconds)


def replay(decider: Decider, feats: np.ndarray, res4: np.ndarray | None = None,
           batch: int = 64) -> list[tuple[int, Detections]]:
    """Every decision over a recorded sequence (T, C), batched: [(end step count, candidates)]."""
    ends = decision_ends(len(feats), decider.s.every)
    out: list[tuple[int, Detections]] = []
    for i in range(0, len(ends), batch):
        part = ends[i : i + batch]
        out += list(zip(part, decider(feats, res4, part), strict=True))
    return out


class CausalDetector:
    """Feed feature steps as they come (`push`); get what each decision emitted. `finish` runs
    the last decision when the stream stopped between two. Holds at most W + one push of steps.

    After `push`/`finish`, `last_emitted_at` gives the emission time (seconds of stream time) of
    each detection returned."""

    def __init__(self, decider: Decider, threshold: float, nms_iou: float) -> None:
        self.decider = decider
        s = decider.s
        self.emitter = Emitter(threshold, nms_iou, memory_s=s.window * s.step_seconds)
        self.buf = StepBuffer()
        self.last_end = 0
        self.last_emitted_at = np.zeros(0)

    @property
    def s(self) -> CausalSettings:
        return self.decider.s

    @property
    def buffered_steps(self) -> int:
        return len(self.buf)

    @property
    def num_steps(self) -> int:
        return self.buf.num_steps

    def push(self, features: np.ndarray, res4: np.ndarray | None = None) -> Detections:
        """features (t, C) float32 (res4 (t, C4)) following the previous ones -> emitted now."""
        self.buf.append(features, res4)
        every = self.s.every
        ends = list(range(self.last_end + every, self.num_steps + 1, every))
        return self._decide(ends)

    def finish(self) -> Detections:
        """The stream ended: one more decision if steps arrived since the last one."""
        return self._decide([self.num_steps] if self.num_steps > self.last_end else [])

    def _decide(self, ends: list[int]) -> Detections:
        if not ends:
            self.last_emitted_at = np.zeros(0)
            return Detections.empty()
        assert self.buf.feats is not None
        cands = self.decider(self.buf.feats, self.buf.res4, ends, self.buf.base)
        em = emit_steps(self.emitter, ends, cands, self.s.step_seconds)
        self.last_end = ends[-1]
        # The next decision ends at last_end + 1 at the earliest (`finish`).
        keep_from = max(0, self.last_end + 1 - self.s.window)
        self.buf.trim(keep_from)
        self.last_emitted_at = em.emitted_at
        return em.detections


def emit_steps(emitter: Emitter, ends: list[int], cands: list[Detections], sec: float
               ) -> Emissions:
    """Decisions (ends, candidates) through one emitter, in order."""
    parts, times = [], []
    for e, c in zip(ends, cands, strict=True):
        out = emitter.step(e * sec, c)
        parts.append(out)
        times.append(np.full(len(out), e * sec))
    return Emissions(Detections.concat(parts), np.concatenate(times) if times else np.zeros(0))


Decisions = dict[str, list[tuple[int, Detections]]]


def causal_decisions(model: torch.nn.Module, dataset: WindowDataset, cfg: Config,
                     device: torch.device, settings: CausalSettings,
                     progress: bool = False) -> Decisions:
    """Every decision of every video of the dataset: video -> [(end step count, candidates)]."""
    decode = DecodeOptions.of(cfg, settings.stride, settings.fps, settings.window)
    decider = Decider(model, settings, decode, device)
    out: Decisions = {}
    for v in progress_bar(dataset.videos, desc=f"causal replay {dataset.subset}",
                          enabled=progress, leave=False):
        assert v.features is not None, "causal replay reads cached features"
        out[v.video_id] = replay(decider, v.features, v.res4, batch=cfg.train.batch_size * 8)
    return out


def with_horizon(decisions: Decisions, s: CausalSettings) -> Decisions:
    """Decisions replayed at a longer horizon, cut to `s.horizon` (the candidates of a shorter D
    are a subset of a longer one's)."""
    return {v: [(e, recent(c, e, s)) for e, c in dec] for v, dec in decisions.items()}


def emit_all(decisions: Decisions, threshold: float, nms_iou: float, s: CausalSettings
             ) -> dict[str, Emissions]:
    return {v: emit(dec, threshold, nms_iou, s) for v, dec in decisions.items()}
