"""`python -m detect stream SOURCE --run runs/NAME`: detections while the video plays.

SOURCE is a video file, a camera (`/dev/video0`, through FFmpeg's v4l2) or any URL FFmpeg opens
(rtsp://, http://, udp://, ...); `--realtime` paces a file at its own speed, as a camera would.

- Stage one is offline's (`ChunkedExtractor.iter_steps`: the same chunks and halos), run on the
  frames as they arrive, with the run's extraction settings, backbone (i3d_r50 or inception_i3d,
  the feature set's) and weights; the features equal the feature set's (tests/test_stream.py)
  and memory does not grow with the stream.
- Stage two runs windows of `--window` steps every `--hop` steps (`detect/inference/online.py`); a
  detection is written once it is final (no later window can change it) and never revised. The
  default hop is offline evaluation's, window x (1 - the run's data.eval_overlap), so a file
  streamed gives the detections `predict` and `eval` give; a smaller `--hop` emits sooner, with
  other (more overlapping) windows and so possibly other detections.
- Output: one JSON line per detection on stdout and in `--out` (default
  RUN/stream/<source>-<UTC time>.jsonl): class, label, start, end, score, emitted_at,
  source_time (FIELDS below). Next to it, `<same name>.json` records the run, source, settings,
  versions, outcome and latency figures, among them real_time_factor.

Exit codes:
  0    the source ended; everything was final and written
  2    usage error, or a run this command cannot use (not a run, e2e run, weights missing)
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

Latency: a detection ending at t is final once the window starting after t - hop has run, i.e.
about W - hop steps later, plus stage one's chunk and halo (`--chunk-frames` + 18 frames for
i3d_r50, + 40 for inception_i3d).
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
from typing import IO, Any

import numpy as np
import torch

from detect.apps.predict import RunFeatures, backbone_for, run_features
from detect.data.windows import window_step
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


@dataclass
class StreamOptions:
    """window / hop in feature steps (default: the run's window, and offline evaluation's hop,
    window x (1 - data.eval_overlap));
    chunk_frames: stage one's core frames per chunk (lower: less latency, more halo overhead);
    threshold: default the run's."""

    window: int | None = None
    hop: int | None = None
    realtime: bool = False
    chunk_frames: int = 32
    threshold: float | None = None
    device: str = "auto"


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
    windows: str = ""  # which windows ran, against offline evaluation's


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


@dataclass
class _Setup:
    """A run made ready to stream: its two stages and the settings the record names."""

    cfg: Any
    ecfg: Any
    features: RunFeatures
    extractor: Any
    online_settings: WindowSettings
    model: torch.nn.Module
    ck: dict[str, Any]
    threshold: float
    device: torch.device


def _prepare(run: Path, opts: StreamOptions) -> _Setup:
    """Stage one with the run's extraction settings and weights (built once), stage two with its
    best checkpoint; RunError for a run this command cannot use."""
    cfg, info = read_run(run)
    if cfg.mode != "features":
        raise RunError(f"{run}: an end-to-end run; streaming needs a run trained on cached "
                       "features (its I3D is the feature set's)")
    apply_threads(cfg.train.threads)
    device = resolve_device(opts.device)
    model, ck = load_run_model(run, device)
    threshold = opts.threshold if opts.threshold is not None else score_threshold(cfg, ck, run)
    features = run_features(run, info)
    ecfg, backbone = backbone_for(features)
    window = opts.window or cfg.data.window
    hop = opts.hop or window_step(window, cfg.data.eval_overlap)
    try:
        settings = WindowSettings(window, hop, ecfg.stride, ecfg.fps)
        extractor = ChunkedExtractor(backbone, ecfg.stride, device,
                                     RunOptions(chunk_frames=opts.chunk_frames))
    except ValueError as e:
        raise RunError(f"{e} (--window, --hop, --chunk-frames)") from e
    return _Setup(cfg, ecfg, features, extractor, settings, model, ck, float(threshold), device)


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


def _pump(s: _Setup, frames_src: FrameStream, frames: _Frames, online: OnlineDetector,
          write: _Writer, bar: ProgressBar, result: StreamResult) -> None:
    """Frames -> features -> online detections until the source ends, fails or is interrupted;
    sets the result's exit code and message."""
    cache_dtype = np.dtype(s.features.settings["dtype"])
    try:
        frames_src.start()
        for r5, r4 in s.extractor.iter_steps(frames, progress=bar.update):
            r5 = r5.astype(cache_dtype).astype(np.float32)  # as the cache stores them
            if r4 is not None:
                r4 = r4.astype(cache_dtype).astype(np.float32)
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
    }


def stream(source: str, run: Path, out: Path | None = None,
           options: StreamOptions | None = None, progress: bool = True,
           echo: bool = True) -> StreamResult:
    """Stream `source` through a trained run; see the module docstring. Each detection also
    goes to stdout when `echo`. Raises RunError (exit 2) for a run it cannot use, before the
    source is opened."""
    opts = options or StreamOptions()
    run = Path(run)
    s = _prepare(run, opts)
    out = Path(out) if out is not None else default_out(run, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    record_path = out.with_suffix(".json")
    record: dict[str, Any] = {
        "source": source, "live": is_live(source), "run": str(run.resolve()),
        "checkpoint_epoch": s.ck["best_epoch"], "feature_set": s.features.where,
        "options": asdict(opts), "window": s.online_settings.window,
        "hop": s.online_settings.hop, "threshold": s.threshold,
        "nms_iou": s.cfg.eval.nms_iou, "device": str(s.device), "detections_file": out.name,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running", "versions": versions(),
    }
    atomic_write_json(record_path, record)

    ecfg, cfg = s.ecfg, s.cfg
    result = StreamResult(1, "stopped by an unexpected error (see the traceback)", out,
                          windows=windows_note(s.online_settings, cfg.data.eval_overlap))
    decode = DecodeSettings(ecfg.fps, ecfg.short_side, ecfg.crop)
    frames_src = FrameStream(source, decode, chunk=ecfg.stride, track_pts=False)
    frames = _Frames(paced(frames_src, ecfg.fps) if opts.realtime else frames_src)
    ws = s.online_settings
    online = OnlineDetector(s.model, ws, cfg.eval.nms_iou, s.threshold,
                            decode=DecodeOptions.of(cfg, ws.stride, ws.fps, ws.window),
                            device=s.device,
                            on_window=lambda n, sec: result.stage_two.append((n, sec)))
    bar = progress_bar(desc=f"stream {source}", unit="frame", enabled=progress, leave=False)
    t_start = time.monotonic()
    try:
        with open(out, "w") as f:
            write = _Writer(f, sys.stdout if echo else None, list(s.ck["classes"]), ecfg.fps,
                            frames, result)
            _pump(s, frames_src, frames, online, write, bar, result)
    finally:
        frames_src.close()
        bar.close()
        result.frames = frames.count
        result.seconds = time.monotonic() - t_start
        record.update(_closing_record(result, ecfg.fps))
        atomic_write_json(record_path, record)
    return result
