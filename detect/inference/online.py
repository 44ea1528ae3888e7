"""Stage two on a growing feature sequence: sliding windows -> final detections, never revised.

Windows of W steps start at 0, hop, 2 hop, ... and each runs as soon as its last step has
arrived; when the sequence ends, one more window ends exactly at its end (unless the last regular
one does), so the windows are `plan_windows(n, W, 1 - hop/W)`'s, the ones offline prediction
uses at that overlap.

Merging is offline's (`merge_video`: greedy per-class NMS by descending score, then the score
threshold), decided early. A window's segments are clamped to the window, so after the window
at s has run, no later regular window can add a segment that overlaps anything ending at or
before the frontier F = s + hop. Walking one class's candidates by descending score, as greedy
NMS does:

- c is dropped for good when a higher-ranked candidate that overlaps it by tIoU > nms_iou is kept
  for good;
- c is kept for good when it ends at or before F and every higher-ranked candidate overlapping it
  is dropped for good;
- otherwise c waits (its fate hangs on a candidate that later windows may still change).

What is kept for good is emitted once and never revised; with the same windows the emitted set is
exactly offline's, except for two things offline does per whole video: the tail window (which
starts before F and may overlap what was already emitted: there, what was emitted wins) and the
`max_per_video` cap (a stream has no end to rank against).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from detect.data.windows import slice_padded
from detect.inference.detections import Detections, tiou
from detect.inference.postprocess import DecodeOptions, decode_outputs

KEPT, DROPPED, OPEN_KEPT, OPEN_DROPPED = 0, 1, 2, 3


class OnlineMerger:
    """Per-class greedy NMS over candidates that arrive in window order; see the module
    docstring. `add` returns the candidates that became final (kept), by end time."""

    def __init__(self, nms_iou: float, threshold: float) -> None:
        self.nms_iou = nms_iou
        self.threshold = threshold
        self.pool = Detections.empty()
        self.emitted = np.zeros(0, bool)
        self.seq = np.zeros(0, np.int64)  # arrival order: the tie-break offline NMS uses
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self.pool)

    def add(self, dets: Detections, frontier: float, keep_after: float = -np.inf) -> Detections:
        """Candidates of the windows that just ran (in window order) -> newly final detections.

        frontier: no later candidate overlaps anything ending at or before it (inf at the end).
        keep_after: emitted detections ending at or before it can no longer meet a candidate and
        are forgotten (constant memory)."""
        dets = dets.take(np.flatnonzero(dets.score >= self.threshold))
        n_new = len(dets)
        self.pool = Detections.concat([self.pool, dets])
        self.emitted = np.concatenate([self.emitted, np.zeros(n_new, bool)])
        self.seq = np.concatenate([self.seq, self._next_seq + np.arange(n_new)])
        self._next_seq += n_new
        status = self._status(frontier)
        new = np.flatnonzero((status == KEPT) & ~self.emitted)
        new = new[np.lexsort((-self.pool.score[new], self.pool.end[new]))]
        out = self.pool.take(new)
        self.emitted[new] = True
        waiting = (status == OPEN_KEPT) | (status == OPEN_DROPPED)
        if waiting.any():  # a waiting candidate may still meet an emitted one
            keep_after = min(keep_after, float(self.pool.start[waiting].min()))
        keep = (status != DROPPED) & ~((status == KEPT) & (self.pool.end <= keep_after))
        self.pool, self.emitted, self.seq = self.pool.take(keep), self.emitted[keep], self.seq[keep]
        return out

    def _status(self, frontier: float) -> np.ndarray:
        d = self.pool
        status = np.full(len(d), OPEN_DROPPED, np.int64)
        for c in np.unique(d.label):
            idx = np.flatnonzero(d.label == c)
            # Emitted ones first: they are final (only a tail window can outrank them).
            idx = idx[np.lexsort((self.seq[idx], -d.score[idx], ~self.emitted[idx]))]
            over = tiou(d.segments[idx], d.segments[idx]) > self.nms_iou
            st = np.empty(len(idx), np.int64)
            for i in range(len(idx)):
                if self.emitted[idx[i]]:
                    st[i] = KEPT
                    continue
                higher = st[:i][over[i, :i]]
                if np.any(higher == KEPT):
                    st[i] = DROPPED
                elif np.any(higher == OPEN_KEPT):
                    st[i] = OPEN_DROPPED
                elif d.end[idx[i]] <= frontier and np.all(higher == DROPPED):
                    st[i] = KEPT
                else:
                    st[i] = OPEN_KEPT
            status[idx] = st
        return status


@dataclass
class WindowSettings:
    """window: W feature steps per window; hop: steps between window starts; stride / fps: the
    features' time step (stride / fps seconds)."""

    window: int
    hop: int
    stride: int
    fps: float

    def __post_init__(self) -> None:
        if self.window < 1 or not 1 <= self.hop <= self.window:
            raise ValueError(f"need window >= 1 and 1 <= hop <= window, got window "
                             f"{self.window}, hop {self.hop}")


class OnlineDetector:
    """Feed feature steps as they come (`push`), get the detections that became final; `finish`
    runs the tail window and returns the rest.

    model: features (B, W, C) [, res4 (B, W, C4)] -> a detector's outputs (`Detector` or
    `PyramidDetector`), decoded by `decode_outputs`. Holds at most about W + hop + one push of
    steps.
    """

    def __init__(self, model: torch.nn.Module, settings: WindowSettings, nms_iou: float,
                 threshold: float, decode: DecodeOptions | None = None,
                 device: torch.device | None = None,
                 on_window: Callable[[int, float], None] | None = None) -> None:
        """decode: how outputs become detections (a run's `DecodeOptions.of`); its window,
        stride and fps must be the settings'. Default: the query-point detector's defaults."""
        self.model = model.eval()
        self.s = settings
        self.decode = decode or DecodeOptions(settings.window, settings.stride, settings.fps)
        if (self.decode.window, self.decode.stride, self.decode.fps) != (
                settings.window, settings.stride, settings.fps):
            raise ValueError(f"decode options {self.decode} disagree with the window settings "
                             f"{settings}")
        self.device = device or torch.device("cpu")
        self.merger = OnlineMerger(nms_iou, threshold)
        self.on_window = on_window  # (windows, seconds) per model call: for the bench
        self.buf = StepBuffer()
        self.next_start = 0
        self.last_start: int | None = None

    @property
    def num_steps(self) -> int:
        return self.buf.num_steps

    @property
    def step_seconds(self) -> float:
        return self.s.stride / self.s.fps

    def push(self, features: np.ndarray, res4: np.ndarray | None = None) -> Detections:
        """features (t, C) float32 (res4 (t, C4)) following the previous ones -> newly final."""
        self.buf.append(features, res4)
        W, hop = self.s.window, self.s.hop
        starts = []
        while self.next_start + W <= self.num_steps:
            starts.append(self.next_start)
            self.next_start += hop
        if not starts:
            return Detections.empty()
        dets = self._run(starts)
        # Later windows (the tail one included) start at or after starts[-1].
        out = self.merger.add(dets, (starts[-1] + hop) * self.step_seconds,
                              keep_after=starts[-1] * self.step_seconds)
        self.buf.trim(min(self.next_start, self.num_steps - W))
        return out

    def finish(self) -> Detections:
        """The stream ended: the tail window (as `plan_windows`), then everything left."""
        n, W = self.num_steps, self.s.window
        starts = []
        if n and self.last_start is None:
            starts = [0]  # shorter than a window: one padded window, as offline
        elif n and self.last_start is not None and self.last_start != n - W:
            starts = [n - W]
        dets = self._run(starts) if starts else Detections.empty()
        return self.merger.add(dets, np.inf)

    def _run(self, starts: list[int]) -> Detections:
        W = self.s.window
        feats, r4 = self.buf.feats, self.buf.res4
        assert feats is not None
        meta = []
        xs, r4s = [], []
        for s in starts:
            valid = min(W, self.num_steps - s)
            meta.append(("stream", s, valid))
            xs.append(slice_padded(feats, s - self.buf.base, W))
            if r4 is not None:
                r4s.append(slice_padded(r4, s - self.buf.base, W))
        t0 = time.perf_counter()
        with torch.inference_mode():
            x = torch.stack(xs).to(self.device)
            res4 = torch.stack(r4s).to(self.device) if r4s else None
            out = self.model(x, res4)
        decoded = decode_outputs(out, meta, self.decode)
        self.last_start = starts[-1]
        if self.on_window is not None:
            self.on_window(len(starts), time.perf_counter() - t0)
        return Detections.concat(decoded.get("stream", []))

    @property
    def buffered_steps(self) -> int:
        return len(self.buf)


class StepBuffer:
    """The feature steps a streaming detector still needs: `feats` (buffered, C) and `res4`
    (buffered, C4) or None hold global steps `base` .. `num_steps` - 1."""

    def __init__(self) -> None:
        self.feats: np.ndarray | None = None
        self.res4: np.ndarray | None = None
        self.base = 0
        self.num_steps = 0

    def __len__(self) -> int:
        return 0 if self.feats is None else len(self.feats)

    def append(self, features: np.ndarray, res4: np.ndarray | None = None) -> None:
        if not len(features):
            return
        self.feats = _append(self.feats, features)
        if res4 is not None:
            self.res4 = _append(self.res4, res4)
        self.num_steps += len(features)

    def trim(self, keep_from: int) -> None:
        """Drop buffered steps before global step `keep_from`."""
        cut = max(0, keep_from - self.base)
        if not cut or self.feats is None:
            return
        # Views: the next append copies what is left into a new array, freeing the old one.
        self.feats = self.feats[cut:]
        if self.res4 is not None:
            self.res4 = self.res4[cut:]
        self.base += cut


def _append(buf: np.ndarray | None, new: np.ndarray) -> np.ndarray:
    new = np.asarray(new, np.float32)
    return new.copy() if buf is None else np.concatenate([buf, new])
