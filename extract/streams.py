"""Several feature sets of the same videos read as one input: RGB and pose, for example.

`python -m detect train --features RGB_SET --features POSE_SET` trains on every video's feature
sets concatenated along channels, (T, C_1 + ... + C_k) in the order given; the model splits them
again when it fuses them (`model.fusion`, detect/model/inputs.py). The sets must share the frame
rate and stride, hold every video, and give each video the same number of steps at the same
timestamps (both are made on the same 10 fps grid, so any difference means they do not describe
the same video); otherwise the error names the video and both sets. res4 comes from the first set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from extract.cache import CacheError, FeatureSet, VideoFeatures


@dataclass
class FeatureStreams:
    """Feature sets read as one (module docstring); the first one names the stream set."""

    sets: list[FeatureSet]

    def __post_init__(self) -> None:
        if len(self.sets) < 2:
            raise ValueError("FeatureStreams joins two or more feature sets")
        first = self.sets[0]
        for fs in self.sets[1:]:
            if not math.isclose(fs.fps, first.fps) or fs.stride != first.stride:
                raise CacheError(
                    f"{fs.path}: {fs.fps:g} fps, stride {fs.stride}; {first.path} has "
                    f"{first.fps:g} fps, stride {first.stride}: streams must share the time grid")

    @property
    def path(self) -> Path:
        return self.sets[0].path

    @property
    def key(self) -> str:
        return "+".join(fs.key for fs in self.sets)

    @property
    def settings(self) -> dict[str, Any]:
        return self.sets[0].settings

    @property
    def frames(self) -> dict[str, Any] | None:
        return self.sets[0].frames

    @property
    def fps(self) -> float:
        return self.sets[0].fps

    @property
    def stride(self) -> int:
        return self.sets[0].stride

    def video_path(self, video_id: str) -> Path:
        return self.sets[0].video_path(video_id)

    def video_ids(self) -> list[str]:
        common = set(self.sets[0].video_ids())
        for fs in self.sets[1:]:
            common &= set(fs.video_ids())
        return sorted(common)

    def has(self, video_id: str) -> bool:
        return all(fs.has(video_id) for fs in self.sets)

    def failures(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for fs in self.sets:
            for vid, why in fs.failures().items():
                out.setdefault(vid, f"{fs.path.name}: {why}")
        return out

    def load(self, video_id: str, with_res4: bool = False) -> VideoFeatures:
        """The video's streams concatenated, (T, sum C); CacheError when they disagree."""
        parts = [fs.load(video_id, with_res4=with_res4 and i == 0)
                 for i, fs in enumerate(self.sets)]
        first = parts[0]
        for fs, v in zip(self.sets[1:], parts[1:], strict=True):
            if v.num_steps != first.num_steps or not np.allclose(
                    v.timestamps, first.timestamps, atol=1e-6):
                raise CacheError(
                    f"video {video_id!r}: {fs.path} has {v.num_steps} steps "
                    f"({_span(v)}), {self.sets[0].path} has {first.num_steps} ({_span(first)}): "
                    "the feature sets must cover the same videos on the same timestamps")
        feats = np.concatenate([v.features for v in parts], axis=1)
        return replace(first, features=feats)

    def dims(self, video_id: str) -> list[int]:
        """Channels of each stream, in order."""
        return [int(fs.load(video_id).features.shape[1]) for fs in self.sets]


def _span(v: VideoFeatures) -> str:
    if not v.num_steps:
        return "empty"
    return f"{v.timestamps[0]:.3f}..{v.timestamps[-1]:.3f} s"


def open_features(paths: Path | Sequence[Path]) -> FeatureSet | FeatureStreams:
    """One feature set (`FeatureSet.find`), or several joined as streams."""
    if isinstance(paths, (str, Path)):
        return FeatureSet.find(Path(paths))
    sets = [FeatureSet.find(Path(p)) for p in paths]
    if not sets:
        raise ValueError("no feature set given")
    return sets[0] if len(sets) == 1 else FeatureStreams(sets)


def component_sets(fs: FeatureSet | FeatureStreams) -> list[FeatureSet]:
    """The feature sets behind `fs`, in stream order."""
    return list(fs.sets) if isinstance(fs, FeatureStreams) else [fs]


def stream_dims(fs: FeatureSet | FeatureStreams, video_id: str) -> tuple[int, ...]:
    """Channels per stream of `fs` (one entry for a single set)."""
    if isinstance(fs, FeatureStreams):
        return tuple(fs.dims(video_id))
    return (int(fs.load(video_id).features.shape[1]),)
