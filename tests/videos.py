"""Write small test videos with PyAV. Each frame shows its own index as big black/white blocks
(a 4x4 grid of bits) that survive H.264 and chroma subsampling, so a test can tell which source
frame a decoder returned."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

TIME_BASE = Fraction(1, 90000)
GRID = 4  # 4x4 blocks -> 16 bits


def code_image(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    """(height, width, 3) uint8 frame spelling `index` in binary blocks (row-major, MSB first)."""
    img = np.zeros((height, width, 3), np.uint8)
    bh, bw = height // GRID, width // GRID
    for b in range(GRID * GRID):
        if (index >> (GRID * GRID - 1 - b)) & 1:
            r, c = divmod(b, GRID)
            img[r * bh:(r + 1) * bh, c * bw:(c + 1) * bw] = 255
    return img


def read_code(img: np.ndarray) -> int:
    """Inverse of `code_image` for an upright (height, width, 3) frame: sample each block centre."""
    h, w = img.shape[:2]
    bh, bw = h / GRID, w / GRID
    value = 0
    for b in range(GRID * GRID):
        r, c = divmod(b, GRID)
        y, x = int((r + 0.5) * bh), int((c + 0.5) * bw)
        value = (value << 1) | int(img[y, x].mean() > 127)
    return value


def cfr_times(fps: Fraction | float, count: int) -> list[Fraction]:
    """Presentation times (s) of `count` frames at a constant rate, e.g. Fraction(30000, 1001)."""
    rate = Fraction(fps).limit_denominator(100_000)
    return [Fraction(i) / rate for i in range(count)]


def vfr_times(seed: int = 0) -> list[Fraction]:
    """A variable-rate timeline (about 4.5 s): 30 fps, 15 fps, jittered 20-50 ms steps, a 0.7 s
    gap, then 24 fps. Every time is a whole number of TIME_BASE ticks."""
    rng = np.random.default_rng(seed)
    ticks = [0]
    for step in [3000] * 20 + [6000] * 8:
        ticks.append(ticks[-1] + step)
    for _ in range(25):
        ticks.append(ticks[-1] + int(rng.integers(1800, 4500)))
    ticks.append(ticks[-1] + 63000)
    for _ in range(20):
        ticks.append(ticks[-1] + 3750)
    return [Fraction(t) * TIME_BASE for t in ticks]


def write_video(
    path: Path,
    times: Sequence[Fraction],
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    images: Sequence[np.ndarray] | None = None,
) -> Path:
    """Encode one frame per entry of `times` (seconds, multiples of 1/90000) into `path`.

    Frame i shows `code_image(i)` unless `images` is given. `rotation` (counter-clockwise degrees)
    is stored as display-matrix metadata. libx264 runs lossless (qp 0).
    """
    path = Path(path)
    container = av.open(str(path), mode="w")
    rate = Fraction(len(times) - 1) / times[-1] if len(times) > 1 and times[-1] > 0 else 25
    stream = container.add_stream(codec, rate=Fraction(rate).limit_denominator(1000) or 25)
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    stream.time_base = TIME_BASE
    stream.codec_context.time_base = TIME_BASE
    if codec == "libx264":
        stream.options = {"qp": "0", "preset": "ultrafast"}
    if rotation:
        stream.set_display_rotation(rotation)
    for i, t in enumerate(times):
        img = code_image(i, width, height) if images is None else images[i]
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        if pix_fmt != "yuv420p":
            frame = frame.reformat(format=pix_fmt)
        frame.pts = int(Fraction(t) / TIME_BASE)
        frame.time_base = TIME_BASE
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def write_noise_video(path: Path, seconds: float, fps: int = 10, width: int = 64,
                      height: int = 48, seed: int = 0) -> Path:
    """A CFR video of smooth random content (realistic enough for features to differ per frame)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    base = rng.integers(0, 256, size=(height // 8, width // 8, 3)).astype(np.float32)
    images = []
    for i in range(n):
        drift = np.roll(base, i, axis=1) * 0.7 + rng.integers(0, 60, size=base.shape) * 0.5
        img = np.kron(np.clip(drift, 0, 255), np.ones((8, 8, 1))).astype(np.uint8)
        images.append(img)
    return write_video(path, cfr_times(fps, n), width, height, images=images)


def write_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """A WAV file with a sine tone and no video stream."""
    container = av.open(str(path), mode="w")
    stream = container.add_stream("pcm_s16le", rate=8000)
    samples = (np.sin(np.arange(int(8000 * seconds)) / 5.0) * 3000).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
    frame.sample_rate = 8000
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def moving_frames(n: int, size: int = 32, seed: int = 2) -> torch.Tensor:
    """(n, size, size, 3) uint8 frames of smoothly moving content plus noise, so features change
    along time (the I3D chunking and receptive-field tests)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, size, size, 3, generator=g)
    t = torch.arange(n).float()[:, None, None, None]
    x = 255 * (0.5 * base + 0.3 * torch.sin(t / 5 + base * 6) ** 2 + 0.2 * torch.rand(
        n, size, size, 3, generator=g))
    return x.clamp(0, 255).to(torch.uint8)
