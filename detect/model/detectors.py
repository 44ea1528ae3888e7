"""The detector a model config asks for (`model.arch`), on features of a given width."""

from __future__ import annotations

from detect.config import ModelConfig
from detect.model.detector import Detector
from detect.model.inputs import FeatureInput
from detect.model.pyramid import PyramidDetector


def build_detector(cfg: ModelConfig, in_dim: int, num_classes: int, res4_dim: int = 0,
                   streams: tuple[int, ...] = ()) -> FeatureInput:
    """"pointtad": the query-point detector; "pyramid": the dense pyramid detector. streams:
    channels per feature set when the input joins several (`model.fusion`)."""
    cls = PyramidDetector if cfg.arch == "pyramid" else Detector
    return cls(cfg, in_dim=in_dim, num_classes=num_classes, res4_dim=res4_dim, streams=streams)
