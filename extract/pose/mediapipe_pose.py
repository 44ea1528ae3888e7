"""BlazePose (mediapipe, 33 landmarks, the "full" landmark model) on plain videos.

Frames come from `extract.decode` at the feature set's fps (10), uncropped and at the source
size, so each landmark array already sits on the 10 fps grid and its pixels are the upright
source frame's. mediapipe's legacy solution `mediapipe.solutions.pose.Pose` runs in video mode
(detection once, then tracking from frame to frame), one tracker per video, with
`model_complexity=1`: the `pose_landmark_full.tflite` and `pose_detection.tflite` shipped in the
mediapipe wheel. Their sha256 (over both files) is the feature set's `weights_sha256`.

mediapipe is an optional extra (`pip install -e '.[pose]'`, mediapipe 0.10.14); importing this
module does not need it, building a `BlazePose` does.

Landmarks: x, y normalised to the frame's width and height, z, and visibility in [0, 1].
`blazepose_points` turns them into pixels with visibility as the confidence; a frame where
BlazePose finds nobody is all zeros (confidence 0). BlazePose always places all 33 landmarks of
a person it finds (off-screen ones with a low visibility), so its joints are missing only with
the whole person.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from extract.decode import DecodeResult, DecodeSettings, FrameStream
from extract.pose import PoseError
from extract.pose.joints import BLAZEPOSE_33
from extract.weights import file_sha256

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install -e '.[pose]'"
MODEL_FILES = ("modules/pose_detection/pose_detection.tflite",
               "modules/pose_landmark/pose_landmark_full.tflite")
NUM_LANDMARKS = len(BLAZEPOSE_33)
# One frame of landmarks, (33, 4) x, y (0-1), z, visibility, or None when nobody is found.
FrameFn = Callable[[np.ndarray], "np.ndarray | None"]


class PoseEstimator(Protocol):
    """What `video_points` needs: a name, settings, and a per-video landmark function."""

    weights: str
    weights_sha256: str

    def settings(self) -> dict[str, Any]: ...

    def tracker(self) -> AbstractContextManager[FrameFn]: ...


def blazepose_points(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 33, 4) landmarks (x, y in [0, 1] of the frame, z, visibility; a frame without a
    person all 0) -> (N, 33, 3) x, y in pixels of a `width` x `height` frame and visibility."""
    landmarks = np.asarray(landmarks, np.float32)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (NUM_LANDMARKS, 4):
        raise ValueError(f"BlazePose landmarks must be (N, {NUM_LANDMARKS}, 4), got "
                         f"{landmarks.shape}")
    out = np.zeros((*landmarks.shape[:2], 3), np.float32)
    out[..., 0] = landmarks[..., 0] * width
    out[..., 1] = landmarks[..., 1] * height
    out[..., 2] = np.clip(np.nan_to_num(landmarks[..., 3]), 0.0, 1.0)
    out[out[..., 2] <= 0] = 0
    return out


def frame_points(frames: Iterable[torch.Tensor], frame_fn: FrameFn) -> Iterator[np.ndarray]:
    """(33, 3) x, y pixels and visibility of each frame of the chunks (n, H, W, 3), as they come
    (all zeros where nobody is found)."""
    for chunk in frames:
        for frame in chunk.numpy():
            lm = frame_fn(np.ascontiguousarray(frame))
            lm = np.zeros((NUM_LANDMARKS, 4), np.float32) if lm is None else lm
            yield blazepose_points(np.asarray(lm, np.float32)[None], frame.shape[1],
                                   frame.shape[0])[0]


def source_size_frames(path: Path | str, fps: float) -> FrameStream:
    """`path` decoded at `fps`, uncropped, at the source size (BlazePose's input)."""
    # A chunk of 1080p frames is 100 MB, so keep few of them queued.
    return FrameStream(path, DecodeSettings(fps=fps, short_side=0, crop=0), chunk=8,
                       max_chunks=2)


def video_points(path: Path, fps: float, estimator: PoseEstimator
                 ) -> tuple[np.ndarray, DecodeResult]:
    """Decode `path` at `fps` and run `estimator` on every frame -> ((N, 33, 3) x, y pixels and
    visibility, the decoding result). DecodeError for a video that cannot be read."""
    stream = source_size_frames(path, fps)
    with estimator.tracker() as frame_fn, stream:
        rows = list(frame_points(stream, frame_fn))
    points = np.stack(rows) if rows else np.zeros((0, NUM_LANDMARKS, 3), np.float32)
    return points, stream.result


def _import_mediapipe() -> Any:
    try:
        import mediapipe
    except ImportError as e:
        raise PoseError(f"pose estimation on videos needs mediapipe ({INSTALL_HINT}): {e}"
                        ) from None
    return mediapipe


class BlazePose:
    """mediapipe's BlazePose full in video mode; `tracker()` gives one video's frame function."""

    weights = "mediapipe-blazepose-full"

    def __init__(self, min_detection: float = 0.5, min_tracking: float = 0.5) -> None:
        self.mp = _import_mediapipe()
        root = Path(self.mp.__file__).parent
        files = [root / f for f in MODEL_FILES]
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise PoseError(f"mediapipe {self.mp.__version__} lacks its BlazePose models "
                            f"({', '.join(absent)}); reinstall it: {INSTALL_HINT}")
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.name}:{file_sha256(f)}\n".encode())
        self.weights_sha256 = digest.hexdigest()
        self.min_detection = min_detection
        self.min_tracking = min_tracking

    def settings(self) -> dict[str, Any]:
        return {"mediapipe": self.mp.__version__, "model_complexity": 1,
                "smooth_landmarks": True, "min_detection_confidence": self.min_detection,
                "min_tracking_confidence": self.min_tracking}

    @contextmanager
    def tracker(self) -> Iterator[FrameFn]:
        """A fresh tracker (its state must not leak from one video into the next)."""
        pose = self.mp.solutions.pose.Pose(
            static_image_mode=False, model_complexity=1, smooth_landmarks=True,
            enable_segmentation=False, min_detection_confidence=self.min_detection,
            min_tracking_confidence=self.min_tracking)

        def frame_fn(frame: np.ndarray) -> np.ndarray | None:
            found = pose.process(frame).pose_landmarks
            if found is None:
                return None
            return np.array([[p.x, p.y, p.z, p.visibility] for p in found.landmark], np.float32)

        try:
            yield frame_fn
        finally:
            pose.close()
