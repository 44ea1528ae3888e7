"""`python -m detect stream SOURCE --run runs/NAME`: detections while the video plays.

SOURCE is a video file, a camera (`/dev/video0`, through FFmpeg's v4l2) or any URL FFmpeg opens
(rtsp://, http://, udp://, ...); `--realtime` paces a file at its own speed, as a camera would.

- Stage one is offline's (`ChunkedExtractor.iter_steps`: the same chunks and halos), run on the
  frames as they arrive, with the run's extraction settings, backbone (i3d_r50 or inception_i3d,
  the feature set's) and weights; the features equal the feature set's (tests/test_stream.py)
  and memory does not grow with the stream.
- Stage two runs in one of two modes (`--mode`; by default causal for a run trained for it,
  `online.causal`, else window-final). Either way a written detection is never revised.
  - causal (`detect/inference/causal.py`): every `--every` steps (default the run's
    online.every) one window of `--window` steps ending at the newest step runs; the gestures it
    finds that ended within the last D = online.horizon_s seconds are written once they score
    at least the emission threshold and overlap nothing written before. A file streamed gives
    the detections `predict` and `eval` give for such a run (its causal replay).
  - window-final (`detect/inference/online.py`): windows of `--window` steps every `--hop`
    steps; a detection is written once it is final (no later window can change it). The default
    hop is offline evaluation's, window x (1 - the run's data.eval_overlap), so a file streamed
    gives the detections `predict` and `eval` give for a run trained on windows. A detection
    is final about W - hop steps after its end, so a smaller `--hop` emits later, not sooner
    (bench/results/online-cpu.md: median 17.7 s at hop W/2, 24.7 s at hop W/16); only the
    causal mode reports within seconds.
- A run on RGB + pose (`train --features RGB --features POSE`) gets its pose steps beside the
  RGB ones from a video file: the SMG skeleton beside it or BlazePose on it, through the causal
  pose features (detect/apps/pose_feed.py); a live source is refused for such a run.
- Output: one JSON line per detection on stdout and in `--out` (default
  RUN/stream/<source>-<UTC time>.jsonl): class, label, start, end, score, emitted_at,
  source_time (FIELDS below). Next to it, `<same name>.json` records the run, source, mode and
  its settings, versions, outcome and latency figures, among them real_time_factor, and one
  entry per detection written ("emissions": its end, emitted_at and source_time).

Exit codes:
  0    the source ended; everything was final and written
  2    usage error (among them --hop in causal mode, --every in window-final), or a run
       this command cannot use (not a run, e2e run, weights missing)
  3    the source could not be opened or sent no frame
  4    the source failed mid-stream: detections up to the failure are final and written
  130  interrupted (Ctrl-C): what was final is written, nothing after it

FIELDS (all times in seconds):
  start, end         the gesture, in video time: 0 is the source's first frame
  emitted_at         wall-clock time since the first frame arrived when the line was written;
                     on a live or --realtime source, emitted_at - end is the delay a viewer sees
  source_time        video time received when the line was written (frames so far / fps);
                     source_time - end is the delay in video time, whatever the speed
  real_time_factor   (run record) wall-clock seconds of the stream / seconds of video: below 1
                     keeps up with a live source, above 1 falls behind it

Latency, after a gesture's end, on top of stage one's chunk and halo (`--chunk-frames` + 18
frames for i3d_r50, + 40 for inception_i3d) which every step waits for:
  causal        within about D (and `--every` steps): its end falls in the last D steps of the
                decisions that follow it, and the first one that scores it high enough writes
                it (or none does: a gesture found later than D is never reported)
  window-final  about W - hop steps: it is final once the window starting after t - hop has run
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import torch

from detect.apps.pose_feed import PoseFeed, join_steps, pose_feeds
from detect.apps.predict import RunFeatures, backbone_for, run_features
from detect.data.windows import horizon_steps, window_step
from detect.inference.causal import CausalDetector, CausalSettings, Decider
from detect.inference.detections import Detections
from detect.inference.online import OnlineDetector, WindowSettings
from detect.inference.postprocess import DecodeOptions
from detect.inference.predictor import load_run_model
from detect.runs import read_run, score_threshold
from extract.decode import DecodeError, DecodeSettings, FrameStream, is_live
from extract.i3d import ChunkedExtractor, RunOptions
from extract.io import RunError, atomic_write_json
from extract.progress import ProgressBar
from extract.progress import progress as progress_bar
from extract.provenance import versions
from extract.runtime import resolve_device
from extract.threads import apply_threads

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_UNREADABLE = 3
EXIT_SOURCE_FAILED = 4
EXIT_INTERRUPTED = 130

CAUSAL, WINDOW_FINAL = "causal", "window-final"
MODES = (CAUSAL, WINDOW_FINAL)


@dataclass
class StreamOptions:
    """mode: "causal" or "window-final" (None: causal iff the run was trained for it,
    online.causal);
    window in feature steps (default: the run's data.window);
    hop (window-final only) in feature steps (default: offline evaluation's,
    window x (1 - data.eval_overlap));
    every (causal only): feature steps between decisions (default: the run's online.every);
    chunk_frames: stage one's core frames per chunk (lower: less latency, more halo overhead);
    threshold: default the run's (causal: online.threshold when >= 0, else the tuned one)."""

    window: int | None = None
    hop: int | None = None
    realtime: bool = False
    chunk_frames: int = 32
    threshold: float | None = None
    device: str = "auto"
    mode: str | None = None
    every: int | None = None


@dataclass
class StreamResult:
    exit_code: int
    message: str
    out: Path
    detections: int = 0
    frames: int = 0
    seconds: float = 0.0
    latency: list[float] = field(default_factory=list)  # emitted_at - end, per detection
    source_latency: list[float] = field(default_factory=list)  # source_time - end
    stage_two: list[tuple[int, float]] = field(default_factory=list)  # (windows, s) per call
    windows: str = ""  # what stage two ran (mode, windows), against offline evaluation's
    emissions: list[dict[str, float]] = field(default_factory=list)  # end, emitted_at, source_time


def paced(chunks: Iterable[torch.Tensor], fps: float,
          clock: Callable[[], float] = time.monotonic) -> Iterator[torch.Tensor]:
    """Hold each chunk of frames until its last frame's time has come (frame k at k / fps after
    the first one): a file played as a camera would send it."""
    t0: float | None = None
    k = 0
    for chunk in chunks:
        if t0 is None:
            t0 = clock()
        k += len(chunk)
        wait = t0 + (k - 1) / fps - clock()
        if wait > 0:
            time.sleep(wait)
        yield chunk


def _spread(values: list[float]) -> dict[str, float] | None:
    v = np.asarray(values, np.float64)
    if not v.size:
        return None
    return {"median": float(np.median(v)), "p95": float(np.percentile(v, 95)),
            "max": float(v.max())}


def default_out(run: Path, source: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source.rstrip("/")).stem or "source")[:60]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(run) / "stream" / f"{name}-{stamp}.jsonl"


class _Frames:
    """The decoder's chunks, counted; a decoding error ends the iteration (kept in `error`), so
    stage one finishes on the frames that did arrive, as it would on a shorter video."""

    def __init__(self, chunks: Iterable[torch.Tensor]) -> None:
        self.chunks = chunks
        self.count = 0
        self.first_at: float | None = None
        self.error: DecodeError | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        try:
            for c in self.chunks:
                if self.first_at is None:
                    self.first_at = time.monotonic()
                self.count += len(c)
                yield c
        except DecodeError as e:
            self.error = e


class _Detector(Protocol):
    """Stage two as the stream drives it: `OnlineDetector` (window-final) or `CausalDetector`."""

    def push(self, features: np.ndarray, res4: np.ndarray | None = None) -> Detections: ...

    def finish(self) -> Detections: ...


@dataclass
class _Setup:
    """A run made ready to stream: its two stages and the settings the record names."""

    cfg: Any
    ecfg: Any
    features: RunFeatures
    extractor: Any
    settings: WindowSettings | CausalSettings  # by mode: window-final's or causal's
    model: torch.nn.Module
    ck: dict[str, Any]
    threshold: float
    device: torch.device
    pose: list[PoseFeed] = field(default_factory=list)  # an RGB + pose run's pose streams

    @property
    def mode(self) -> str:
        return CAUSAL if isinstance(self.settings, CausalSettings) else WINDOW_FINAL


def stream_mode(cfg: Any, opts: StreamOptions) -> str:
    """The mode to run (`StreamOptions.mode`, else the run's); RunError for options that belong
    to the other mode, before anything is loaded."""
    mode = opts.mode or (CAUSAL if cfg.online.causal else WINDOW_FINAL)
    if mode not in MODES:
        raise RunError(f"unknown mode {mode!r}: causal or window-final")
    if mode == CAUSAL and opts.hop:
        # Refused rather than reused: a hop between windows and the steps between causal
        # decisions change different things (which windows vs how soon), so silently mapping
        # one onto the other would hide which was meant.
        raise RunError("--hop sets the window-final mode's windows; the causal mode runs "
                       "a decision every --every steps (use --every, or --mode window-final)")
    if mode == WINDOW_FINAL and opts.every:
        raise RunError("--every sets the causal mode's decisions; the window-final mode runs "
                       "windows every --hop steps (use --hop, or --mode causal)")
    return mode


def _stage_two_settings(cfg: Any, mode: str, opts: StreamOptions, stride: int, fps: float
                        ) -> WindowSettings | CausalSettings:
    window = opts.window or cfg.data.window
    if mode == CAUSAL:
        # horizon_s is the run's (its training targets were cut at it); at most the window.
        h = min(window, horizon_steps(cfg.online.horizon_s, stride, fps))
        return CausalSettings(window, h, opts.every or cfg.online.every, stride, fps)
    hop = opts.hop or window_step(window, cfg.data.eval_overlap)
    return WindowSettings(window, hop, stride, fps)


def _threshold(cfg: Any, ck: dict[str, Any], run: Path, mode: str, opts: StreamOptions
               ) -> float:
    """--threshold, else the mode's: causal uses online.threshold when set (>= 0); otherwise
    (and in window-final) the run's own, which for a causal run is its val-tuned emission
    threshold."""
    if opts.threshold is not None:
        return float(opts.threshold)
    if mode == CAUSAL and cfg.online.threshold >= 0:
        return float(cfg.online.threshold)
    return float(score_threshold(cfg, ck, run))


def _prepare(run: Path, opts: StreamOptions, source: str) -> _Setup:
    """Stage one with the run's extraction settings and weights (built once), the pose streams
    of an RGB + pose run (detect/apps/pose_feed.py), stage two with its best checkpoint in the
    chosen mode; RunError for a run, source or options this command cannot use."""
    cfg, info = read_run(run)
    if cfg.mode != "features":
        raise RunError(f"{run}: an end-to-end run; streaming needs a run trained on cached "
                       "features (its I3D is the feature set's)")
    mode = stream_mode(cfg, opts)
    apply_threads(cfg.train.threads)
    device = resolve_device(opts.device)
    model, ck = load_run_model(run, device)
    threshold = _threshold(cfg, ck, run, mode, opts)
    features = run_features(run, info)
    ecfg, backbone = backbone_for(features)
    try:
        settings = _stage_two_settings(cfg, mode, opts, ecfg.stride, ecfg.fps)
        extractor = ChunkedExtractor(backbone, ecfg.stride, device,
                                     RunOptions(chunk_frames=opts.chunk_frames))
    except ValueError as e:
        flags = "--every" if mode == CAUSAL else "--hop"
        raise RunError(f"{e} (--window, {flags}, --chunk-frames)") from e
    pose = pose_feeds(run, info, source)
    return _Setup(cfg, ecfg, features, extractor, settings, model, ck, threshold, device, pose)


def _detector(s: _Setup, result: StreamResult) -> _Detector:
    """Stage two for the setup's mode; each model call's (windows, seconds) goes to the
    result."""
    st = s.settings
    decode = DecodeOptions.of(s.cfg, st.stride, st.fps, st.window)

    def timed(n: int, sec: float) -> None:
        result.stage_two.append((n, sec))

    if isinstance(st, CausalSettings):
        decider = Decider(s.model, st, decode, s.device, on_batch=timed)
        return CausalDetector(decider, s.threshold, s.cfg.eval.nms_iou)
    return OnlineDetector(s.model, st, s.cfg.eval.nms_iou, s.threshold, decode=decode,
                          device=s.device, on_window=timed)


class _Writer:
    """Writes each final detection as a JSON line (to the file, and to stdout when echoing) and
    keeps the latency figures of the result."""

    def __init__(self, f: IO[str], stdout: IO[str] | None, classes: list[str], fps: float,
                 frames: _Frames, result: StreamResult) -> None:
        self.f, self.stdout, self.classes, self.fps = f, stdout, classes, fps
        self.frames, self.result = frames, result

    def __call__(self, dets: Detections) -> None:
        now = time.monotonic()
        since = now - (self.frames.first_at or now)
        received = self.frames.count / self.fps
        for i in range(len(dets)):
            line = json.dumps({
                "class": self.classes[int(dets.label[i])], "label": int(dets.label[i]),
                "start": round(float(dets.start[i]), 4), "end": round(float(dets.end[i]), 4),
                "score": round(float(dets.score[i]), 5), "emitted_at": round(since, 3),
                "source_time": round(received, 3)})
            self.f.write(line + "\n")
            # Counted before it is shown: a Ctrl-C right after a printed line keeps the count.
            self.result.detections += 1
            self.result.latency.append(since - float(dets.end[i]))
            self.result.source_latency.append(received - float(dets.end[i]))
            self.result.emissions.append({"end": round(float(dets.end[i]), 4),
                                          "emitted_at": round(since, 3),
                                          "source_time": round(received, 3)})
            if self.stdout is not None:
                self.stdout.write(line + "\n")
        if len(dets):
            self.f.flush()
            if self.stdout is not None:
                self.stdout.flush()


def _outcome(frames: _Frames, fps: float) -> tuple[int, str]:
    """Exit code and message once the source has ended or failed."""
    seconds = f"{frames.count} frames ({frames.count / fps:.1f} s)"
    if frames.error is not None and frames.count == 0:
        return EXIT_UNREADABLE, f"cannot read the source: {frames.error}"
    if frames.error is not None:
        return EXIT_SOURCE_FAILED, (f"the source failed after {seconds}: {frames.error}; the "
                                    "detections up to there are final and written")
    return EXIT_OK, f"the source ended after {seconds}"


def _pump(s: _Setup, frames_src: FrameStream, frames: _Frames, online: _Detector,
          write: _Writer, bar: ProgressBar, result: StreamResult) -> None:
    """Frames -> features -> online detections (either mode) until the source ends, fails or is
    interrupted; sets the result's exit code and message."""
    cache_dtype = np.dtype(s.features.settings["dtype"])
    try:
        frames_src.start()
        for r5, r4 in s.extractor.iter_steps(frames, progress=bar.update):
            r5 = r5.astype(cache_dtype).astype(np.float32)  # as the cache stores them
            if r4 is not None:
                r4 = r4.astype(cache_dtype).astype(np.float32)
            if s.pose:  # the same steps of each pose stream, in the run's stream order
                r5 = join_steps(r5, s.pose)
            write(online.push(r5, r4 if s.cfg.data.use_res4 else None))
            bar.set_postfix(detections=result.detections, refresh=False)
        result.exit_code, result.message = _outcome(frames, s.ecfg.fps)
        if result.exit_code != EXIT_UNREADABLE:
            write(online.finish())
    except KeyboardInterrupt:
        result.exit_code = EXIT_INTERRUPTED
        result.message = (f"interrupted after {frames.count} frames "
                          f"({frames.count / s.ecfg.fps:.1f} s): the detections final by "
                          "then are written, later ones are not")


def windows_note(settings: WindowSettings, eval_overlap: float) -> str:
    """Which windows ran, and whether they are offline evaluation's (then the detections equal
    `predict`'s and `eval`'s on the same file)."""
    offline = window_step(settings.window, eval_overlap)
    note = f"windows of {settings.window} steps every {settings.hop}"
    if settings.hop == offline:
        return note + ", as offline evaluation"
    return (note + f"; offline evaluation (predict, eval) hops {offline}, so its detections may "
            f"differ (--hop {offline} gives the same)")


def causal_note(settings: CausalSettings) -> str:
    """What the causal mode ran, for people: how often, over which windows, how far back."""
    every = f"{settings.every} step" + ("s" if settings.every != 1 else "")
    return (f"causal decisions every {every} over windows of {settings.window} steps, reporting "
            f"gestures that ended within the last {settings.horizon * settings.step_seconds:g} s")


def _note(s: _Setup) -> str:
    st = s.settings
    if isinstance(st, CausalSettings):
        return causal_note(st)
    if s.cfg.online.causal:
        # Not "as offline evaluation": predict and eval report such a run's causal replay.
        return (f"window-final: windows of {st.window} steps every {st.hop}, on a run trained "
                "for the causal mode (predict and eval give its causal replay: --mode causal)")
    return windows_note(st, s.cfg.data.eval_overlap)


def _settings_record(s: _Setup) -> dict[str, Any]:
    """The record's mode and the settings of stage two that it names."""
    st = s.settings
    if isinstance(st, CausalSettings):
        return {"mode": CAUSAL, "window": st.window, "every": st.every,
                "horizon_s": round(st.horizon * st.step_seconds, 6), "horizon_steps": st.horizon}
    return {"mode": WINDOW_FINAL, "window": st.window, "hop": st.hop}


def _closing_record(result: StreamResult, fps: float) -> dict[str, Any]:
    """What the run record adds once the stream is over."""
    video_s = result.frames / fps
    return {
        "status": {EXIT_OK: "ended", EXIT_UNREADABLE: "unreadable",
                   EXIT_SOURCE_FAILED: "source failed",
                   EXIT_INTERRUPTED: "interrupted"}.get(result.exit_code, "error"),
        "exit_code": result.exit_code, "message": result.message,
        "frames": result.frames, "video_seconds": video_s, "wall_seconds": result.seconds,
        "real_time_factor": result.seconds / video_s if video_s else None,
        "detections": result.detections,
        # Wall-clock delay (a live or paced source) and delay in video time received.
        "latency_s": _spread(result.latency),
        "source_latency_s": _spread(result.source_latency),
        "stage_two_s_per_window": _spread([sec / n for n, sec in result.stage_two]),
        "emissions": result.emissions,
    }


def stream(source: str, run: Path, out: Path | None = None,
           options: StreamOptions | None = None, progress: bool = True,
           echo: bool = True) -> StreamResult:
    """Stream `source` through a trained run; see the module docstring. Each detection also
    goes to stdout when `echo`. Raises RunError (exit 2) for a run it cannot use, before the
    source is opened."""
    opts = options or StreamOptions()
    run = Path(run)
    s = _prepare(run, opts, source)
    out = Path(out) if out is not None else default_out(run, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    record_path = out.with_suffix(".json")
    record: dict[str, Any] = {
        "source": source, "live": is_live(source), "run": str(run.resolve()),
        "checkpoint_epoch": s.ck["best_epoch"], "feature_set": s.features.where,
        "options": asdict(opts), **_settings_record(s), "threshold": s.threshold,
        "nms_iou": s.cfg.eval.nms_iou, "device": str(s.device), "detections_file": out.name,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running", "versions": versions(),
    }
    atomic_write_json(record_path, record)

    ecfg = s.ecfg
    result = StreamResult(1, "stopped by an unexpected error (see the traceback)", out,
                          windows=_note(s))
    decode = DecodeSettings(ecfg.fps, ecfg.short_side, ecfg.crop)
    frames_src = FrameStream(source, decode, chunk=ecfg.stride, track_pts=False)
    frames = _Frames(paced(frames_src, ecfg.fps) if opts.realtime else frames_src)
    online = _detector(s, result)
    bar = progress_bar(desc=f"stream {source}", unit="frame", enabled=progress, leave=False)
    t_start = time.monotonic()
    try:
        with open(out, "w") as f:
            write = _Writer(f, sys.stdout if echo else None, list(s.ck["classes"]), ecfg.fps,
                            frames, result)
            _pump(s, frames_src, frames, online, write, bar, result)
    finally:
        frames_src.close()
        for feed in s.pose:
            feed.close()
        bar.close()
        result.frames = frames.count
        result.seconds = time.monotonic() - t_start
        record.update(_closing_record(result, ecfg.fps))
        if s.pose:
            record["pose_streams"] = [feed.record() for feed in s.pose]
        atomic_write_json(record_path, record)
    return result
