"""Window-consistent augmentation of stored frames for end-to-end training.

One set of parameters is drawn per training window and applied identically to every frame of it:
a per-frame draw would turn a still scene into flicker that a video network reads as motion. The
crop and flip run on the CPU where the window is read (they shrink what is sent to the device);
the photometric part runs on the device, on the cropped frames, through `photometric`.

Evaluation windows get the centre crop (`extract.decode.center_crop_offsets`, the extractor's)
and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from detect.config import AugmentConfig
from extract.decode import center_crop_offsets

# (brightness delta, contrast factor, saturation factor, hue degrees) that change nothing.
JITTER_IDENTITY = (0.0, 1.0, 1.0, 0.0)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as the Y of YIQ
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]])


@dataclass
class WindowAugment:
    """One window's augmentation: crop box (y0, x0, crop), flip, and the photometric jitter."""

    y0: int
    x0: int
    crop: int
    flip: bool = False
    jitter: tuple[float, float, float, float] = JITTER_IDENTITY


def centre(height: int, width: int, crop: int) -> WindowAugment:
    """The evaluation transform: centre crop, no flip, no jitter."""
    y0, x0 = center_crop_offsets(height, width, crop)
    return WindowAugment(y0, x0, crop)


def sample_augment(gen: torch.Generator, height: int, width: int, crop: int,
                   cfg: AugmentConfig | None) -> WindowAugment:
    """Draw one window's augmentation from `gen` (always the same number of draws, so the
    parameters of a window depend only on the generator's seed)."""
    u = torch.rand(12, generator=gen, dtype=torch.float64).tolist()
    if cfg is None or not cfg.enabled:
        return centre(height, width, crop)
    aug = centre(height, width, crop)
    if cfg.random_crop:
        aug.y0 = min(int(u[0] * (height - crop + 1)), height - crop)
        aug.x0 = min(int(u[1] * (width - crop + 1)), width - crop)
    aug.flip = cfg.flip and u[2] < 0.5
    if cfg.photometric and u[3] < cfg.photometric_p:
        def part(p: float, r: float, lo: float, hi: float, off: float) -> float:
            return lo + r * (hi - lo) if p < 0.5 else off

        aug.jitter = (
            part(u[4], u[5], -cfg.brightness, cfg.brightness, 0.0),
            part(u[6], u[7], 1 - cfg.contrast, 1 + cfg.contrast, 1.0),
            part(u[8], u[9], 1 - cfg.saturation, 1 + cfg.saturation, 1.0),
            part(u[10], u[11], -cfg.hue, cfg.hue, 0.0),
        )
    return aug


def crop_flip(frames: torch.Tensor, aug: WindowAugment) -> torch.Tensor:
    """(n, H, W, 3) -> (n, crop, crop, 3) contiguous: the window's crop box, then its flip."""
    n, h, w, _ = frames.shape
    if aug.y0 + aug.crop > h or aug.x0 + aug.crop > w or min(aug.y0, aug.x0) < 0:
        raise ValueError(f"crop box ({aug.y0}, {aug.x0}, {aug.crop}) does not fit {h}x{w} frames")
    out = frames[:, aug.y0:aug.y0 + aug.crop, aug.x0:aug.x0 + aug.crop]
    if aug.flip:
        out = out.flip(2)
    return out.contiguous()


def hue_matrix(degrees: float) -> np.ndarray:
    """(3, 3) float64 matrix rotating the chroma plane of YIQ by `degrees`, acting on RGB rows."""
    a = math.radians(degrees)
    rot = np.array([[1.0, 0.0, 0.0],
                    [0.0, math.cos(a), -math.sin(a)],
                    [0.0, math.sin(a), math.cos(a)]])
    return np.linalg.inv(_RGB_TO_YIQ) @ rot @ _RGB_TO_YIQ


def photometric(frames: torch.Tensor, jitter: torch.Tensor | tuple[float, ...]) -> torch.Tensor:
    """Brightness, contrast, saturation, hue, in that order, the same for every frame.

    frames: (n, h, w, 3) uint8 on any device; jitter: (4,) (delta, contrast, saturation, hue
    degrees). Returns (n, h, w, 3) uint8 (clamped and rounded); the identity jitter returns
    `frames` itself, so an unaugmented window is bit-identical to the extractor's input.
    Contrast pivots on the window's mean luma (one pivot for the whole window).
    """
    b, c, s, h = (float(v) for v in (jitter.tolist() if torch.is_tensor(jitter) else jitter))
    if (b, c, s, h) == JITTER_IDENTITY:
        return frames
    luma = torch.tensor(LUMA, dtype=torch.float32, device=frames.device)
    x = frames.float()
    if b:
        x = x + b
    if c != 1.0:
        m = (x @ luma).mean()
        x = (x - m) * c + m
    if s != 1.0:
        g = (x @ luma).unsqueeze(-1)
        x = (x - g) * s + g
    if h:
        m3 = torch.as_tensor(hue_matrix(h), dtype=torch.float32, device=frames.device)
        x = x @ m3.T
    return x.clamp_(0, 255).round_().to(torch.uint8)
