"""`python -m extract pose`: many skeletons (or videos) into one pose feature set, resumably.

The same contract as the I3D sets (`extract.cache`, `extract.pipeline`): a key hashing every
setting that changes the numbers, one HDF5 file per video written atomically with `features`
(T, 5J) float32, `timestamps` (T,) from `feature_timestamps` and `source_pts` (N,) (the source
frame time shown at each 10 fps tick); a re-run skips the videos whose source (the keypoint
file, or folder of per-frame JSON files; not a file that only gives the frame rate) has not
changed; every source that fails is listed with its reason in the summary and in
`failures.json` while the others are still done. Under torchrun the sorted list is split between
ranks, as for features.

Three sources (`PoseSource`): `KinectSource` (SMG), `OpenPoseSource` (iMiGUE) and
`VideoSource` (BlazePose on plain videos). Each video's counts of what was missing (ticks
without a person, ticks whose centre was carried, missing ticks per joint, source frames without
a person) go into its file's attributes (`extra["pose"]`) and the run record.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from extract.cache import FeatureMeta, FeatureSet, VideoWriter, feature_timestamps
from extract.decode import DecodeError
from extract.io import file_lock
from extract.pipeline import (
    RunSummary,
    assign_ids,
    find_videos,
    is_done,
    record_failure,
    remove_stale_temps,
    remove_stale_temps_if_free,
    source_stamp,
    update_failures,
    video_id_from_path,
    video_lock_path,
    write_run_record,
)
from extract.pose import PoseError
from extract.pose.features import BLOCKS, step_features, tick_indices
from extract.pose.joints import (
    BLAZEPOSE,
    COMMON_JOINTS,
    COMMON_NAME,
    KINECT,
    OPENPOSE,
    Layout,
    to_common,
)
from extract.pose.kinect import (
    data_csv_for,
    find_smg_skeletons,
    read_kinect_csv,
    read_smg_data,
    smg_sample_id,
)
from extract.pose.mediapipe_pose import PoseEstimator, video_points
from extract.pose.openpose import find_imigue_keypoints, read_keypoints, video_beside, video_fps
from extract.progress import progress as progress_bar
from extract.provenance import mgdet_version
from extract.runtime import dist_rank

# Bump when the features computed from the same joints change: the key changes with it.
FEATURES_VERSION = 2
IMIGUE_FPS = 25.0
JOINT_SETS = ("common",)


@dataclass
class SourcePose:
    """One video's skeleton on the fps grid: points (N, J, 3) common joints (x, y pixels,
    confidence), source_pts (N,) seconds of the source frame shown at each tick."""

    points: np.ndarray
    source_pts: np.ndarray
    source_fps: float
    duration: float
    source_frames: int
    source_frames_without_person: int
    extra: dict[str, Any] = field(default_factory=dict)


class PoseSource(Protocol):
    """Where a run's skeletons come from: the layout and weights it names, the settings that
    change its numbers, its videos, and one video's skeleton."""

    layout: Layout
    weights: str
    weights_sha256: str

    def settings(self) -> dict[str, Any]: ...

    def find(self) -> dict[str, Path]: ...

    def read(self, video_id: str, path: Path, fps: float) -> SourcePose: ...


def on_ticks(points: np.ndarray, layout: Layout, source_fps: float, fps: float
             ) -> SourcePose:
    """(M, K, 3) source frames at `source_fps` -> SourcePose of the common joints at the ticks
    of `fps` (see `extract.pose.features`)."""
    if not (np.isfinite(source_fps) and source_fps > 0):
        raise PoseError(f"source frame rate {source_fps} is not a positive number")
    idx = tick_indices(len(points), source_fps, fps)
    common = to_common(points, layout)
    nobody = int((np.asarray(points)[:, :, 2] <= 0).all(axis=1).sum())
    return SourcePose(points=common[idx], source_pts=idx / source_fps, source_fps=source_fps,
                      duration=len(points) / source_fps, source_frames=len(points),
                      source_frames_without_person=nobody)


class KinectSource:
    """SMG's `SampleXXXX_skeleton.csv` files under a root; the frame rate from `_data.csv`
    beside each, else `source_fps` (a sample with neither fails, saying so)."""

    layout = KINECT
    weights = "kinect-sdk"
    weights_sha256 = ""

    def __init__(self, root: Path, source_fps: float | None = None) -> None:
        self.root = Path(root)
        self.source_fps = source_fps

    def settings(self) -> dict[str, Any]:
        return {"dataset": "smg", "fallback_source_fps": self.source_fps}

    def find(self) -> dict[str, Path]:
        return assign_ids(find_smg_skeletons(self.root), lambda p: smg_sample_id(p) or "")

    def read(self, video_id: str, path: Path, fps: float) -> SourcePose:
        data = data_csv_for(path)
        if data.is_file():
            info = read_smg_data(data)
            source_fps, extra = info.fps, {"fps_from": str(data),
                                           "declared_frames": info.num_frames}
        elif self.source_fps is not None:
            source_fps, extra = self.source_fps, {"fps_from": "--source-fps"}
        else:
            raise PoseError(f"{path}: no {data.name} beside it to give the frame rate; give "
                            "--source-fps")
        pose = on_ticks(read_kinect_csv(path), self.layout, source_fps, fps)
        pose.extra = extra
        return pose


class KinectFiles(KinectSource):
    """Given SMG skeleton files by video id (`predict`: the skeleton beside each video); the
    same settings, so the same feature-set key, as `KinectSource`."""

    def __init__(self, files: dict[str, Path], source_fps: float | None = None) -> None:
        super().__init__(Path("."), source_fps)
        self.files = dict(files)

    def find(self) -> dict[str, Path]:
        return dict(self.files)


class OpenPoseSource:
    """iMiGUE's OpenPose keypoints under a root (`find_imigue_keypoints`); the frame rate from
    the video beside them, else `source_fps` (25, iMiGUE's rate)."""

    layout = OPENPOSE
    weights = "openpose-release"
    weights_sha256 = ""

    def __init__(self, root: Path, source_fps: float | None = None) -> None:
        self.root = Path(root)
        self.source_fps = IMIGUE_FPS if source_fps is None else source_fps

    def settings(self) -> dict[str, Any]:
        return {"dataset": "imigue", "fallback_source_fps": self.source_fps}

    def find(self) -> dict[str, Path]:
        return find_imigue_keypoints(self.root)

    def read(self, video_id: str, path: Path, fps: float) -> SourcePose:
        points = read_keypoints(path)
        video = video_beside(video_id, path)
        source_fps, extra = self.source_fps, {"fps_from": "--source-fps"}
        if video is not None:
            try:
                source_fps, extra = video_fps(video), {"fps_from": str(video)}
            except (DecodeError, PoseError) as e:
                extra = {"fps_from": f"--source-fps (the video beside is unreadable: {e})"}
        pose = on_ticks(points, self.layout, source_fps, fps)
        pose.extra = extra
        return pose


class VideoSource:
    """Plain videos (files, or folders searched recursively) through a pose estimator
    (BlazePose). Ids as the RGB features name them (`video_id_from_path`)."""

    layout = BLAZEPOSE

    def __init__(self, inputs: Sequence[Path], estimator: PoseEstimator) -> None:
        self.inputs = list(inputs)
        self.estimator = estimator
        self.weights = estimator.weights
        self.weights_sha256 = estimator.weights_sha256

    def settings(self) -> dict[str, Any]:
        return {"dataset": "videos", "estimator": self.estimator.settings(),
                "decode": "last-frame-with-pts<=k/fps, source size, uncropped"}

    def find(self) -> dict[str, Path]:
        return assign_ids(find_videos(self.inputs), video_id_from_path)

    def read(self, video_id: str, path: Path, fps: float) -> SourcePose:
        points, res = video_points(path, fps, self.estimator)
        if len(points) == 0:
            raise DecodeError(f"{path}: no frames")
        nobody = int((points[:, :, 2] <= 0).all(axis=1).sum())
        return SourcePose(points=to_common(points, self.layout),
                          source_pts=np.asarray(res.chosen_pts, np.float64),
                          source_fps=res.source_fps, duration=res.duration,
                          source_frames=res.source_frames, source_frames_without_person=nobody,
                          extra={"decoded_frames": len(points), **res.stats()})


def pose_settings(source: PoseSource, fps: float, stride: int, joints: str = "common"
                  ) -> tuple[str, dict[str, Any]]:
    """(readable name, settings that change the numbers) for `FeatureSet.create`."""
    if joints not in JOINT_SETS:
        raise ValueError(f"--joints must be one of {', '.join(JOINT_SETS)}, got {joints!r}")
    if not (fps > 0 and stride >= 1):
        raise ValueError(f"fps must be positive and stride >= 1, got {fps}, {stride}")
    settings = {
        "kind": "pose",
        "model": source.layout.model,
        "weights": source.weights,
        "weights_sha256": source.weights_sha256,
        "fps": fps,
        "stride": stride,
        "joints": COMMON_NAME,
        "joint_names": list(COMMON_JOINTS),
        "channels": "position(J,2),velocity(J,2),confidence(J)",
        "coords": "image-xy-pixels",
        "sampling": "last-frame-with-time<=k/fps",
        "centre": "neck|mid-shoulders|carried-forward",
        "scale": "running-median-shoulder-width",
        "dtype": "float32",
        "features_version": FEATURES_VERSION,
        "source": source.settings(),
    }
    return f"pose-{source.layout.model}-{COMMON_NAME}-s{stride}", settings


@dataclass
class PoseRunSummary(RunSummary):
    """A run's outcome (`RunSummary`) and, per video done, what was missing."""

    counts: dict[str, dict[str, Any]] = field(default_factory=dict)


def extract_pose(fs: FeatureSet, source: PoseSource, video_id: str, path: Path
                 ) -> FeatureMeta:
    """One video's pose features into `fs`, written atomically; PoseError / DecodeError (and
    OSError) for a source that cannot be read."""
    pose = source.read(video_id, path, fs.fps)
    where = str(path)
    steps = step_features(pose.points, fs.stride, where)
    counts = {**steps.counts, "source_frames": pose.source_frames,
              "source_frames_without_person": pose.source_frames_without_person}
    meta = FeatureMeta(
        video_id=video_id, fps=fs.fps, stride=fs.stride, source_path=str(path.resolve()),
        source_fps=float(pose.source_fps), duration=float(pose.duration),
        num_frames=len(pose.points), model=source.layout.model, weights=source.weights,
        weights_sha256=source.weights_sha256, layers=list(BLOCKS), mgdet_version=mgdet_version(),
        extra={**source_stamp(path), **pose.extra, "joints": COMMON_NAME, "pose": counts},
    )
    ts = feature_timestamps(steps.features.shape[0], fs.stride, fs.fps)
    with VideoWriter(fs.video_path(video_id)) as writer:
        writer.finish(steps.features, ts, meta, dtype="float32", source_pts=pose.source_pts)
    return meta


def _extract_locked(fs: FeatureSet, source: PoseSource, vid: str, path: Path,
                    summary: PoseRunSummary) -> None:
    """One video while holding its lock (see extract.pipeline's `_extract_locked`)."""
    remove_stale_temps(fs, [vid])
    if is_done(fs, vid, path):
        summary.skipped.append(vid)
        return
    try:
        meta = extract_pose(fs, source, vid, path)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        record_failure(fs, summary, vid, path, e)
        return
    summary.done.append(vid)
    summary.video_seconds += meta.duration
    summary.counts[vid] = meta.extra["pose"]


def run_pose_extraction(source: PoseSource, out: Path, fps: float = 10.0, stride: int = 4,
                        joints: str = "common", progress: bool = True) -> PoseRunSummary:
    """Every video of `source` into the pose feature set for these settings under `out`.

    Returns this rank's summary (`summary.featureset` is `out/<key>`). Raises ValueError before
    any work for bad settings, no sources, or two sources with one id."""
    started = time.time()
    rank, world = dist_rank()
    name, settings = pose_settings(source, fps, stride, joints)
    ids = source.find()
    mine = dict(list(ids.items())[rank::world])
    fs = FeatureSet.create(out, name, settings)
    summary = PoseRunSummary(featureset=fs.path)
    todo = []
    for vid, path in mine.items():
        if is_done(fs, vid, path):
            summary.skipped.append(vid)
            remove_stale_temps_if_free(fs, vid)
        else:
            todo.append((vid, path))
    bar = progress_bar(total=len(todo), unit="video", enabled=progress, log_every_s=0,
                       desc=f"pose (rank {rank})" if world > 1 else "pose")
    try:
        for vid, path in todo:
            with file_lock(video_lock_path(fs, vid), on_wait=lambda vid=vid: tqdm.write(
                    f"waiting: another run is extracting {vid} into {fs.path}", file=sys.stderr)):
                _extract_locked(fs, source, vid, path, summary)
            bar.update(1)
    finally:
        bar.close()
    update_failures(fs, summary.done + summary.skipped, summary.failed)
    summary.seconds = time.time() - started
    _write_run_record(fs, summary, rank, world)
    return summary


def _write_run_record(fs: FeatureSet, summary: PoseRunSummary, rank: int, world: int) -> Path:
    return write_run_record(fs, summary, rank, world, {
        "kind": "pose",
        "weights": {"label": fs.settings["weights"], "sha256": fs.settings["weights_sha256"]},
        "counts": summary.counts,
    })


def format_counts(summary: PoseRunSummary) -> str:
    """One line of what was missing over the videos done (empty when none was done)."""
    if not summary.counts:
        return ""
    c = summary.counts.values()
    ticks = sum(x["ticks"] for x in c)
    nobody = sum(x["ticks_without_person"] for x in c)
    carried = sum(x["ticks_centre_carried"] for x in c)
    joints = sum(sum(x["missing_joint_ticks"].values()) for x in c)
    return (f"pose: {ticks} ticks, {nobody} without a person, {carried} with the centre "
            f"carried; {joints} of {ticks * len(COMMON_JOINTS)} joint ticks missing")
