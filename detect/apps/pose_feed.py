"""The pose streams of an RGB + pose run, step by step beside stage one's RGB steps (`detect
stream`).

Each recorded pose stream gets its source as `predict` does (`predict.pose_source`: the SMG
skeleton beside the video, or BlazePose on it, checked against the run's feature-set key before
anything is decoded), and its ticks go through the causal pose features (`PoseFeaturizer`) as the
RGB steps come, so the stream's pose steps are the ones `predict` extracts, and no later frame
changes an earlier step.

- SMG skeletons: the `SampleXXXX_skeleton.csv` beside a file source is the recording's skeleton
  track; it is read once, and its ticks are used only as the video's frames reach them.
- BlazePose: the file is decoded a second time at its own size (BlazePose's input; stage one's
  frames are resized and cropped), frame by frame beside stage one. A live source cannot be
  opened twice, so BlazePose runs are refused on live sources.

If the pose source has fewer ticks than the video, the missing ones are nobody (confidence 0),
counted in `padded_ticks`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from detect.apps.predict import pose_records, pose_source
from extract.decode import is_live
from extract.io import RunError
from extract.pipeline import video_id_from_path
from extract.pose.features import PoseFeaturizer
from extract.pose.joints import COMMON_JOINTS, to_common

J = len(COMMON_JOINTS)


class PoseFeed:
    """One pose stream: ticks (n, J, 3) in batches -> pose steps on demand."""

    def __init__(self, index: int, key: str, model: str, ticks: Iterator[np.ndarray],
                 stride: int) -> None:
        self.index = index  # its place in the run's stream order
        self.key, self.model = key, model
        self.ticks = ticks
        self.featurizer = PoseFeaturizer(stride)
        self.padded_ticks = 0
        self._steps = np.zeros((0, 5 * J), np.float32)

    def take(self, n: int) -> np.ndarray:
        """(n, 5J) float32: the next n pose steps."""
        while len(self._steps) < n:
            batch = next(self.ticks, None)
            if batch is None:  # the source ended first: nobody in the ticks it lacks
                lack = (n - len(self._steps)) * self.featurizer.stride
                batch = np.zeros((lack, J, 3))
                self.padded_ticks += lack
            self._steps = np.concatenate([self._steps, self.featurizer.push(batch)])
        out, self._steps = self._steps[:n], self._steps[n:]
        return out

    def close(self) -> None:
        close = getattr(self.ticks, "close", None)
        if close is not None:
            close()

    def record(self) -> dict[str, Any]:
        return {"key": self.key, "model": self.model, "padded_ticks": self.padded_ticks,
                "pose": self.featurizer.counts()}


def _array_ticks(points: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(points), batch):
        yield points[i : i + batch]


def _blazepose_ticks(path: Path, fps: float, estimator: Any, layout: Any
                     ) -> Iterator[np.ndarray]:
    from extract.pose.mediapipe_pose import frame_points, source_size_frames

    stream = source_size_frames(path, fps)
    with estimator.tracker() as frame_fn, stream:
        for pts in frame_points(stream, frame_fn):
            yield to_common(pts[None], layout)


def pose_feeds(run: Path, info: dict[str, Any], source: str) -> list[PoseFeed]:
    """The feeds of a run's pose streams (none for an RGB-only run) for `source`; RunError,
    before the source is opened, for a source or a pose model they cannot come from."""
    records = pose_records(info)
    if not records:
        return []
    path = Path(source)
    if is_live(source) or not path.is_file():
        raise RunError(f"{source}: the run also reads a pose stream, which comes from the SMG "
                       "skeleton beside a video file or from BlazePose on the file; a live "
                       "source gives neither")
    vid = video_id_from_path(path)
    feeds = []
    for index, rec in records:
        src = pose_source(run, rec, {vid: path})
        fps, stride = float(rec["settings"]["fps"]), int(rec["settings"]["stride"])
        if rec["settings"].get("model") == "kinect-v2-25":
            csv = src.find()[vid]
            try:
                pose = src.read(vid, csv, fps)
            except (ValueError, OSError) as e:  # PoseError: a malformed file, named with its row
                raise RunError(f"cannot read the skeleton beside {path}: {e}") from e
            ticks: Iterator[np.ndarray] = _array_ticks(pose.points, stride)
        else:
            ticks = _blazepose_ticks(path, fps, src.estimator, src.layout)
        feeds.append(PoseFeed(index, rec["key"], str(rec["settings"].get("model")), ticks,
                              stride))
    return feeds


def join_steps(rgb: np.ndarray, feeds: list[PoseFeed]) -> np.ndarray:
    """(t, C) RGB steps and the same t steps of each pose feed, joined along channels in the
    run's stream order (t, C + 5J per feed)."""
    parts = {f.index: f.take(len(rgb)) for f in feeds}
    rgb_at = next(i for i in range(len(feeds) + 1) if i not in parts)
    parts[rgb_at] = rgb
    return np.concatenate([parts[i] for i in sorted(parts)], axis=1)
