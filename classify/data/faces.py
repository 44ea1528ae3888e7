"""Face crops from OpenPose keypoints: the face's box per frame, and the crop SwinFace sees.

The box is a square around the confident face points (OpenPose's 70, indices 25-94): centred on
their bounding box, side `margin` times its longer edge. Where the face points are missing (a
BODY_25-only or 35-point skeleton, or a frame OpenPose missed) the head's BODY_25 points (nose,
eyes, ears) stand in: side 2.2 times their spread, at least the nose-neck distance. Frames with
neither take the nearest frame's box (the earlier one on a tie). The crop is cut with zero padding
beyond the image, then resized to `size` (bilinear, antialiased). Faces are not aligned by
landmarks (SwinFace's own training crops are 5-point aligned); a box crop is what the keypoints
support without a face detector.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FACE = slice(25, 95)
HEAD = [0, 15, 16, 17, 18]  # BODY_25 nose, eyes, ears
NECK = 1


def face_boxes(keypoints: np.ndarray, min_conf: float = 0.1, margin: float = 1.4) -> np.ndarray:
    """(T, 137, 3) keypoints -> (T, 3) boxes (centre x, centre y, side), pixels.

    Raises ValueError when no frame has a face or head.
    """
    kp = np.asarray(keypoints, np.float64)
    t = len(kp)
    boxes = np.full((t, 3), np.nan)
    for i in range(t):
        face = kp[i, FACE]
        face = face[face[:, 2] > min_conf, :2]
        if len(face) >= 5:
            lo, hi = face.min(0), face.max(0)
            boxes[i] = [*(lo + hi) / 2, margin * max(hi[0] - lo[0], hi[1] - lo[1], 1.0)]
            continue
        head = kp[i, HEAD]
        head = head[head[:, 2] > min_conf, :2]
        if len(head) >= 2:
            spread = np.ptp(head, 0).max()
            side = 2.2 * spread
            if kp[i, NECK, 2] > min_conf and kp[i, 0, 2] > min_conf:
                side = max(side, float(np.linalg.norm(kp[i, 0, :2] - kp[i, NECK, :2])))
            boxes[i] = [*head.mean(0), max(side, 1.0)]
    ok = np.flatnonzero(~np.isnan(boxes[:, 0]))
    if len(ok) == 0:
        raise ValueError("no frame has face or head keypoints to crop a face from")
    nearest = ok[np.clip(np.searchsorted(ok, np.arange(t)), 0, len(ok) - 1)]
    before = ok[np.clip(np.searchsorted(ok, np.arange(t)) - 1, 0, len(ok) - 1)]
    pick = np.where(np.abs(before - np.arange(t)) <= np.abs(nearest - np.arange(t)), before,
                    nearest)
    return boxes[pick]


def crop_faces(frames: np.ndarray, boxes: np.ndarray, size: int = 112) -> torch.Tensor:
    """(N, H, W, 3) uint8 frames and (N, 3) boxes -> (N, size, size, 3) uint8 crops."""
    n, h, w, _ = frames.shape
    out = torch.empty((n, size, size, 3), dtype=torch.uint8)
    for i in range(n):
        cx, cy, side = boxes[i]
        half = max(int(round(side / 2)), 1)
        x0, y0 = int(round(cx)) - half, int(round(cy)) - half
        crop = np.zeros((2 * half, 2 * half, 3), np.uint8)  # zero beyond the image
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + 2 * half, w), min(y0 + 2 * half, h)
        if sx1 > sx0 and sy1 > sy0:
            crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = frames[i, sy0:sy1, sx0:sx1]
        x = torch.from_numpy(crop).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        out[i] = x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
    return out
