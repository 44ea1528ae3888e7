"""Clip-classification configuration: every dataclass of the classifier, loaded from TOML with
`--set a.b=value` overrides by the one loader (`extract.config`: unknown keys, wrong types and
choices outside a Literal are errors)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from extract.config import (
    ConfigError,
    Ranges,
    at_least_1,
    check_ranges,
    fraction,
    load_dataclass,
    nonnegative,
)


@dataclass
class AGCNConfig:
    channels: list[int] = field(default_factory=lambda: [64, 64, 64, 64, 128, 128, 128, 256,
                                                         256, 256])
    strides: list[int] = field(default_factory=lambda: [1, 1, 1, 1, 2, 1, 1, 2, 1, 1])
    temporal_kernel: int = 9
    adaptive: bool = True  # B_k and C_k; False gives ST-GCN's fixed graph
    dropout: float = 0.0


@dataclass
class FusionConfig:
    dim: int = 256
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4  # AdamW, cosine after one warmup epoch
    weight_decay: float = 0.05
    label_smoothing: float = 0.1


@dataclass
class RGBConfig:
    enabled: bool = False  # then the RGB heads and the token fusion run after the skeleton
    cache: str = "cache/rgb"
    weights: str = "kinetics"  # "kinetics" (hub cache), a checkpoint path, or "random"
    frames: int = 16
    size: int = 224
    short_side: int = 0  # resize before the centre crop; 0 = size * 256 / 224 (Kinetics preset)
    batch_size: int = 8
    seed: int = 0  # of random weights


@dataclass
class EmotionConfig:
    enabled: bool = False  # needs rgb.enabled: the clips' MViT tokens are the context
    face_weights: str = ""  # a SwinFace checkpoint path, or "random" (on purpose)
    face_frames: int = 4  # face crops per clip
    cache: str = "cache/face"
    batch_size: int = 32
    seed: int = 0  # of random face weights
    fusion: FusionConfig = field(default_factory=lambda: FusionConfig(epochs=20))


@dataclass
class DataConfig:
    frames: int = 64  # frames sampled from each clip (PYSKL's uniform sampling)
    split: str = ""  # subject spec `train=2,4-6;test=rest`; "" = the official cross-subject one
    val_fraction: float = 0.0  # of the training clips, by video, held out to pick the epoch


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.1  # SGD, Nesterov momentum 0.9 (2s-AGCN), cosine after a linear warmup
    warmup_epochs: int = 5
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # torch CPU threads; 0: the cores this process may use (extract/threads.py)


@dataclass
class SkeletonConfig:
    """2s-AGCN: one network per stream; "joint" and "bone" scores are summed (softmax)."""

    streams: list[str] = field(default_factory=lambda: ["joint", "bone"])
    agcn: AGCNConfig = field(default_factory=AGCNConfig)


@dataclass
class ClassifyConfig:
    name: str = "cls"
    data: DataConfig = field(default_factory=DataConfig)
    skeleton: SkeletonConfig = field(default_factory=SkeletonConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rgb: RGBConfig = field(default_factory=RGBConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    emotion: EmotionConfig = field(default_factory=EmotionConfig)


RANGES: Ranges = {
    "train.weight_decay": (nonnegative, ">= 0"),
    "train.label_smoothing": (fraction, "in [0, 1)"),
    "train.threads": (nonnegative, ">= 0 (0: the cores this process may use)"),
    "skeleton.agcn.dropout": (fraction, "in [0, 1)"),
    "rgb.short_side": (nonnegative, ">= 0"),
    **{f"{part}.{key}": rule for part in ("fusion", "emotion.fusion") for key, rule in {
        "dropout": (fraction, "in [0, 1)"),
        "batch_size": (at_least_1, ">= 1"),
        "weight_decay": (nonnegative, ">= 0"),
        "label_smoothing": (fraction, "in [0, 1)"),
    }.items()},
}


def check(cfg: ClassifyConfig) -> None:
    check_ranges(cfg, RANGES)
    if cfg.data.frames < 1:
        raise ConfigError("data.frames must be >= 1")
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError("data.val_fraction must be in [0, 1)")
    if not cfg.skeleton.streams or any(s not in ("joint", "bone") for s in cfg.skeleton.streams):
        raise ConfigError("skeleton.streams: a non-empty list of 'joint' and 'bone'")
    a = cfg.skeleton.agcn
    if not a.channels or len(a.channels) != len(a.strides) or min(a.channels + a.strides) < 1:
        raise ConfigError("skeleton.agcn.channels and strides: equal-length lists of "
                          "positive integers")
    if a.temporal_kernel < 1 or a.temporal_kernel % 2 == 0:
        raise ConfigError("skeleton.agcn.temporal_kernel must be odd")
    _check_rgb_fusion_emotion(cfg)
    t = cfg.train
    if t.epochs < 1 or t.batch_size < 1 or t.lr <= 0 or t.warmup_epochs < 0:
        raise ConfigError("train: epochs, batch_size >= 1, lr > 0, warmup_epochs >= 0")


def _check_rgb_fusion_emotion(cfg: ClassifyConfig) -> None:
    r, f = cfg.rgb, cfg.fusion
    if r.enabled and (r.frames < 2 or r.frames % 2 or r.size % 32 or r.batch_size < 1):
        raise ConfigError("rgb: frames even and >= 2, size a multiple of 32, batch_size >= 1")
    if f.dim % f.heads or f.layers < 1 or f.epochs < 1 or f.lr <= 0:
        raise ConfigError("fusion: dim divisible by heads, layers, epochs >= 1, lr > 0")
    e = cfg.emotion
    if e.enabled and not r.enabled:
        raise ConfigError("emotion.enabled needs rgb.enabled (the MViT tokens are the context)")
    if e.enabled and not e.face_weights:
        raise ConfigError("emotion.face_weights: a SwinFace checkpoint path, or \"random\" to "
                          "train on random face embeddings on purpose")
    if e.face_frames < 1 or e.batch_size < 1:
        raise ConfigError("emotion: face_frames and batch_size >= 1")
    ef = e.fusion
    if ef.dim % ef.heads or ef.layers < 1 or ef.epochs < 1 or ef.lr <= 0:
        raise ConfigError("emotion.fusion: dim divisible by heads, layers, epochs >= 1, lr > 0")


def load_classify_config(path: Path | str | None = None,
                         overrides: list[str] | None = None) -> ClassifyConfig:
    return load_dataclass(ClassifyConfig, path, overrides, check)
