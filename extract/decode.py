"""Decode a video at exactly `fps` (10) frames per second, resized and centre-cropped, as uint8.

Sampling rule (by timestamp, never by frame index): let t0 be the pts of the first decoded frame
and t_last that of the last one. Output frame k shows the source frame on screen at
t_k = k / fps (seconds after t0), i.e. the last source frame with pts - t0 <= t_k. There is one
output frame for every t_k <= t_last, so

    num_frames = floor((t_last - t0) * fps) + 1

(a 30 fps clip of 30 frames gives 10 frames; a lone frame gives 1). Times are compared as exact
fractions, so a source frame whose pts lands exactly on t_k is the one chosen for t_k.

Frames are streamed: a background thread decodes (PyAV, `thread_type="AUTO"`), applies the
display rotation, resizes the short side (bilinear, `torch.nn.functional.interpolate` without
antialias, as pytorchvideo's `short_side_scale`), centre-crops and rounds back to uint8, and puts
chunks of frames into a bounded queue. Memory is therefore bounded whatever the video length.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F

VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
    ".mts", ".3gp", ".ogv",
)
MEAN = 0.45
STD = 0.225


class DecodeError(RuntimeError):
    """A video cannot be decoded; the message names the file (and frame where known)."""


@dataclass
class DecodeSettings:
    """Everything in decoding that changes the numbers.

    fps: output frame rate; short_side: resize target of the shorter side (0 keeps the size);
    crop: centre-crop size (0 keeps the whole resized frame).
    """

    fps: float = 10.0
    short_side: int = 256
    crop: int = 224

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.short_side < 0 or self.crop < 0:
            raise ValueError(f"short_side and crop must be >= 0, got {self.short_side}, "
                             f"{self.crop}")
        if self.crop and self.short_side and self.crop > self.short_side:
            raise ValueError(f"crop {self.crop} is larger than the short side {self.short_side}")


@dataclass
class DecodeResult:
    """What decoding one video found, filled in as the stream ends.

    chosen_pts: (num_frames,) seconds after t0 of the source frame shown by each output frame
    (not kept with `track_pts=False`, so a stream of any length holds constant memory).
    """

    path: Path | str
    fps: float = 10.0
    num_frames: int = 0
    duration: float = 0.0
    source_fps: float = 0.0
    source_frames: int = 0
    width: int = 0
    height: int = 0
    codec: str = ""
    pix_fmt: str = ""
    rotation: int = 0
    dropped_frames: int = 0
    chosen_pts: list[float] = field(default_factory=list)
    track_pts: bool = True

    def chosen(self, t: Fraction) -> None:
        """The next output frame shows the source frame at `t` (kept when tracking pts)."""
        if self.track_pts:
            self.chosen_pts.append(float(t))

    def stats(self) -> dict[str, Any]:
        """JSON-friendly summary of the sampling (how far chosen frames lag their target times)."""
        pts = np.asarray(self.chosen_pts, dtype=np.float64)
        out: dict[str, Any] = {
            "source_frames": self.source_frames,
            "source_width": self.width,
            "source_height": self.height,
            "codec": self.codec,
            "pix_fmt": self.pix_fmt,
            "rotation": self.rotation,
            "dropped_nonmonotonic_frames": self.dropped_frames,
        }
        if pts.size:
            target = np.arange(pts.size, dtype=np.float64) / self.fps
            lag = target - pts
            out.update(
                chosen_pts_first=float(pts[0]),
                chosen_pts_last=float(pts[-1]),
                chosen_lag_mean=float(lag.mean()),
                chosen_lag_max=float(lag.max()),
                repeated_source_frames=int(np.sum(np.diff(pts) == 0)),
            )
        return out


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Output (height, width) of pytorchvideo's `short_side_scale` (floor of the long side)."""
    if short_side == 0:
        return height, width
    if width < height:
        return int(math.floor(height / width * short_side)), short_side
    return short_side, int(math.floor(width / height * short_side))


def resize_crop(frames: torch.Tensor, short_side: int, crop: int) -> torch.Tensor:
    """Resize the short side and centre-crop a chunk of frames.

    frames: (n, H, W, 3) uint8 -> (n, h, w, 3) uint8 (bilinear in float32, then rounded).
    """
    n, h, w, _ = frames.shape
    x = frames.permute(0, 3, 1, 2)
    nh, nw = short_side_size(h, w, short_side)
    if (nh, nw) != (h, w):
        x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False,
                          antialias=False)
    if crop:
        y0, x0 = center_crop_offsets(nh, nw, crop)
        x = x[:, :, y0:y0 + crop, x0:x0 + crop]
    if x.dtype != torch.uint8:
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous()


def center_crop_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
    """(y0, x0) of the centre crop: pytorchvideo's offsets (ceil of half the excess)."""
    if crop > min(height, width):
        raise ValueError(f"crop {crop} is larger than the resized frame {height}x{width}")
    return int(math.ceil((height - crop) / 2)), int(math.ceil((width - crop) / 2))


def center_crop(frames: torch.Tensor, crop: int) -> torch.Tensor:
    """(n, h, w, 3) -> (n, crop, crop, 3), contiguous; crop 0 keeps the frame.

    `resize_crop(x, s, c)` equals `center_crop(resize_crop(x, s, 0), c)` exactly (rounding to
    uint8 is per pixel), which is what lets stored uncropped frames reproduce the features.
    """
    if not crop:
        return frames
    y0, x0 = center_crop_offsets(frames.shape[1], frames.shape[2], crop)
    return frames[:, y0:y0 + crop, x0:x0 + crop].contiguous()


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """(n, h, w, 3) uint8 frames -> (1, 3, n, h, w) float32 model input in channels_last_3d.

    The permuted view of (n, h, w, 3) memory already is the channels_last_3d layout of
    (1, 3, n, h, w), so no copy is needed for the layout.
    """
    x = frames.permute(3, 0, 1, 2).unsqueeze(0).float()
    return x.div_(255.0).sub_(MEAN).div_(STD)


def _rotation_of(frame: av.VideoFrame, stream: Any) -> int:
    """Counter-clockwise display rotation in degrees (a multiple of 90)."""
    rot = int(getattr(frame, "rotation", 0) or 0)
    if rot == 0:
        # Old files: the `rotate` tag means "rotate clockwise by this much for display".
        tag = stream.metadata.get("rotate") if stream.metadata else None
        if tag:
            try:
                rot = -int(float(tag))
            except ValueError:
                rot = 0
    return int(round(rot / 90.0)) * 90 % 360


def _to_rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


def _declared_duration(container: Any, stream: Any) -> float:
    """The video's duration as the container states it (0 when unknown)."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    # Matroska states only the file's duration; it is the video's when no other stream exists.
    if container.duration and all(s.type == "video" for s in container.streams):
        return container.duration / 1_000_000
    return 0.0


LIVE_TIMEOUT_S = 10.0  # a live source that sends nothing this long has stopped


def is_live(source: Path | str) -> bool:
    """A camera device (/dev/video0) or a URL FFmpeg opens (rtsp://, http://, udp://, ...)."""
    s = str(source)
    return "://" in s or s.startswith("/dev/video")


def _open_live(source: str) -> Any:
    if source.startswith("/dev/") and not Path(source).exists():
        raise DecodeError(f"{source}: no such camera device")
    fmt = "v4l2" if source.startswith("/dev/video") else None
    # RTSP over TCP: UDP drops packets on most networks and shows as corrupt frames.
    options = {"rtsp_transport": "tcp"} if source.startswith("rtsp") else {}
    try:
        return av.open(source, mode="r", format=fmt, options=options,
                       timeout=(LIVE_TIMEOUT_S, LIVE_TIMEOUT_S))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DecodeError(f"{source}: cannot open this source ({e})") from e


def _open_file(path: Path) -> Any:
    if not path.exists():
        raise DecodeError(f"{path}: file does not exist")
    if not path.is_file():
        raise DecodeError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: file is empty (0 bytes)")
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DecodeError(f"{path}: not a video FFmpeg can read ({e})") from e


def open_video(path: Path | str) -> tuple[Any, Any]:
    """Open a file, camera or URL (`is_live`) and return (container, video stream), with a clear
    error for bad input."""
    container = _open_live(str(path)) if is_live(path) else _open_file(Path(path))
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        container.close()
        raise DecodeError(f"{path}: no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return container, stream


def _upright_rgb(frame: av.VideoFrame, stream: Any, result: DecodeResult) -> np.ndarray:
    """The frame as upright RGB (H, W, 3) uint8; its rotation and size go into `result`."""
    rot = _rotation_of(frame, stream)
    result.rotation = rot
    rgb = _to_rgb(frame, rot)
    result.height, result.width = rgb.shape[:2]
    return rgb


def iter_sampled(
    path: Path | str, fps: float, result: DecodeResult
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (k, rgb (H, W, 3) uint8) for every output frame k, streaming; fills `result`.

    Only the chosen source frames are converted to RGB (a 30 fps source converts 1 in 3).
    """
    rate = Fraction(fps).limit_denominator(1_000_000)
    container, stream = open_video(path)
    result.codec = stream.codec_context.name
    declared = _declared_duration(container, stream)
    result.source_fps = float(stream.average_rate) if stream.average_rate else 0.0
    k = 0
    n_src = 0
    prev: av.VideoFrame | None = None
    prev_t = Fraction(0)
    prev_rgb: np.ndarray | None = None
    last_step = Fraction(0)
    pts0: int | None = None
    tb = stream.time_base

    def emit_prev() -> np.ndarray:
        nonlocal prev_rgb
        if prev_rgb is None:  # converted once, however many output frames repeat it
            prev_rgb = _upright_rgb(prev, stream, result)
        result.chosen(prev_t)
        return prev_rgb

    try:
        for frame in container.decode(stream):
            if frame.pts is None:
                raise DecodeError(f"{path}: frame {n_src} has no timestamp")
            if pts0 is None:
                pts0 = frame.pts
                tb = frame.time_base or stream.time_base
                result.pix_fmt = frame.format.name
            t = Fraction(frame.pts - pts0) * tb
            if prev is not None and t <= prev_t:
                result.dropped_frames += 1  # pts not increasing: a broken stream; keep the first
                continue
            n_src += 1
            while prev is not None and Fraction(k) / rate < t:
                yield k, emit_prev()
                k += 1
            if prev is not None:
                last_step = t - prev_t
            prev, prev_t, prev_rgb = frame, t, None
        if prev is None:
            raise DecodeError(f"{path}: the video stream holds no decodable frame")
        while Fraction(k) / rate <= prev_t:
            yield k, emit_prev()
            k += 1
    except av.FFmpegError as e:
        raise DecodeError(f"{path}: decoding failed at source frame {n_src} ({e})") from e
    finally:
        container.close()
    last_len = Fraction(prev.duration) * tb if prev.duration else last_step
    _finish(path, result, k, n_src, prev_t, last_len, declared)


def _finish(path: Path | str, result: DecodeResult, frames: int, n_src: int, last_t: Fraction,
            last_len: Fraction, declared: float) -> None:
    """Counts and duration once the last source frame (at `last_t`, lasting `last_len`) is
    decoded; DecodeError when the video ends well before what its container declares."""
    if not last_len and result.source_fps:
        last_len = 1 / Fraction(result.source_fps).limit_denominator(1_000_000)
    result.num_frames = frames
    result.source_frames = n_src
    result.duration = float(last_t + last_len)
    if declared and result.duration < declared - max(0.5, 0.05 * declared):
        # FFmpeg conceals damaged or missing data by skipping it; a video that ends early would
        # silently shift every later label, so treat it as broken.
        raise DecodeError(
            f"{path}: truncated or corrupt: decoded {result.duration:.2f} s of the "
            f"{declared:.2f} s the container declares (last good source frame {n_src - 1})"
        )
    if not result.source_fps and last_t > 0:
        result.source_fps = float((n_src - 1) / last_t)


class FrameStream:
    """Decode one video in a background thread into a bounded queue of frame chunks.

    Iterating yields (n, h, w, 3) uint8 tensors of consecutive 10 fps frames (n <= chunk);
    `result` is complete once iteration ends. A decoding error is raised in the iterating thread,
    naming the file and frame. At most `max_chunks` chunks wait in the queue.

    keep_short_side: also make an uncropped copy of every chunk, resized to this short side
    (0: the source size), and hand it to `on_kept` in the iterating thread just before the
    chunk itself is yielded (`--save-frames`). When it equals `settings.short_side`, the model's
    chunk is the centre crop of the kept one, so the resize runs once.
    """

    def __init__(
        self,
        path: Path | str,
        settings: DecodeSettings,
        chunk: int = 16,
        max_chunks: int = 8,
        keep_short_side: int | None = None,
        on_kept: Callable[[torch.Tensor], None] | None = None,
        track_pts: bool = True,
    ) -> None:
        if (keep_short_side is None) != (on_kept is None):
            raise ValueError("keep_short_side and on_kept go together")
        self.path = str(path) if is_live(path) else Path(path)
        self.settings = settings
        self.keep = keep_short_side
        self.on_kept = on_kept
        self.chunk = chunk
        self.result = DecodeResult(path=self.path, fps=settings.fps, track_pts=track_pts)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_chunks)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"decode:{self.path}",
                                        daemon=True)
        self._started = False
        self._done = False

    def start(self) -> FrameStream:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _flush(self, pending: list[np.ndarray]) -> bool:
        batch = torch.from_numpy(np.stack(pending))
        pending.clear()
        s = self.settings
        if self.keep is None:
            return self._put(resize_crop(batch, s.short_side, s.crop))
        kept = resize_crop(batch, self.keep, 0)
        if self.keep == s.short_side:
            out = center_crop(kept, s.crop)
        else:
            out = resize_crop(batch, s.short_side, s.crop)
        return self._put((out, kept))

    def _run(self) -> None:
        pending: list[np.ndarray] = []
        k = -1
        try:
            for k, rgb in iter_sampled(self.path, self.settings.fps, self.result):
                if pending and rgb.shape != pending[0].shape:
                    raise DecodeError(
                        f"{self.path}: frame size changed from {pending[0].shape[:2]} to "
                        f"{rgb.shape[:2]} at output frame {k}"
                    )
                pending.append(rgb)
                if len(pending) >= self.chunk and not self._flush(pending):
                    return
                if self._stop.is_set():
                    return
            if pending and not self._flush(pending):
                return
            self._put(None)
        except DecodeError as e:
            self._put(e)
        except Exception as e:  # anything else still names the file and frame
            self._put(DecodeError(f"{self.path}: failed at output frame {k + 1}: "
                                  f"{type(e).__name__}: {e}"))

    def __iter__(self) -> Iterator[torch.Tensor]:
        self.start()
        while True:
            item = self._queue.get()
            if item is None:
                self._done = True
                return
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if isinstance(item, tuple):
                item, kept = item
                assert self.on_kept is not None
                self.on_kept(kept)
            yield item

    def close(self) -> None:
        """Stop the decoder thread (it may be blocked on a full queue) and wait for it."""
        self._stop.set()
        if self._started:
            while self._thread.is_alive():
                try:
                    self._queue.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()

    def __enter__(self) -> FrameStream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_all(path: Path, settings: DecodeSettings) -> tuple[torch.Tensor, DecodeResult]:
    """Decode a whole (short) video into memory: (num_frames, h, w, 3) uint8. For tests/bench."""
    with FrameStream(path, settings) as stream:
        chunks = list(stream)
    if not chunks:
        raise DecodeError(f"{path}: no frames")
    return torch.cat(chunks), stream.result
