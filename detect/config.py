"""Stage-two configuration: plain dataclasses, loaded from TOML with `--set a.b=value` overrides
by stage one's loader (`extract.config`).

Unknown keys, values of the wrong type and choices outside their `Literal` are errors naming the
key, so a typo in a config never silently falls back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from extract.config import (
    ConfigError,
    Ranges,
    at_least_1,
    build_dataclass,
    check_ranges,
    fraction,
    load_dataclass,
    nonnegative,
    positive,
)

Mode = Literal["features", "e2e"]
Mixing = Literal["lean", "full"]
Arch = Literal["pointtad", "pyramid"]
Fusion = Literal["concat", "gated"]
GateInit = Literal["default", "closed"]
PyramidEncoder = Literal["conv", "mamba"]
IouLoss = Literal["iou", "giou", "diou"]
QueryMixer = Literal["mamba_mhsa", "mhsa"]
ScanOrder = Literal["index", "centre"]
MambaBackend = Literal["auto", "torch", "cuda"]
Device = Literal["auto", "cpu", "cuda"]
SelectMetric = Literal["f1_miga", "f1_strict", "map"]
BackboneModel = Literal["auto", "i3d_r50", "inception_i3d"]  # e2e mode's; see BackboneConfig

@dataclass
class DataConfig:
    fps: float = 10.0  # feature-set frame rate the run expects
    stride: int = 4  # frames per feature step the run expects
    feature_key: str = ""  # when set, training refuses any other feature set
    window: int = 128  # W: feature steps per window
    train_overlap: float = 0.75  # overlap of training windows
    # Shift every training window each epoch by a random offset of up to half the hop between
    # windows (clamped to the video), so epochs see instances at new places in the window.
    train_jitter: bool = False
    # Overlap of evaluation and prediction windows (0: back to back); detections of overlapping
    # windows are merged by the per-class NMS, as `detect stream` does at hop W * (1 - overlap).
    eval_overlap: float = 0.0
    keep_background: bool = False  # also train on windows without a complete instance
    use_res4: bool = False  # also feed the cached res4 features
    # Standardise each feature channel with the training set's mean and std (stored in the
    # model). Random-init or frozen I3D features vary over time by ~0.1% of their magnitude.
    standardize: bool = True


@dataclass
class MambaConfig:
    layers: int = 2  # M: pre-norm residual Mamba blocks before the MHSA
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    order: ScanOrder = "index"  # order of the queries along the scan
    bidirectional: bool = False
    backend: MambaBackend = "auto"


@dataclass
class PyramidConfig:
    """The dense pyramid detector (`model.arch = "pyramid"`, detect/model/pyramid.py).

    ActionFormer's layout on cached features: `embed_layers` convolutions, `stem_blocks` encoder
    blocks at full rate, then `levels - 1` levels that each halve the rate (max pooling, as
    TemporalMaxer) and add one encoder block; classification and regression heads shared by
    every level.
    """

    levels: int = 6  # pyramid levels; level l has one output per 2^l feature steps
    encoder: PyramidEncoder = "conv"  # "mamba": the project's Mamba block, both directions
    embed_layers: int = 2
    stem_blocks: int = 2
    head_layers: int = 2  # conv layers of each head before its output conv
    kernel: int = 3
    # Level l regresses instances whose farthest boundary from the point is within
    # [range_base * 2^(l-1), range_base * 2^l) feature steps (level 0 from 0, the last to inf).
    range_base: float = 4.0
    dropout: float = 0.0
    pre_nms_topk: int = 200  # candidates (point, class) kept per window before NMS
    pre_nms_threshold: float = 0.001  # candidates below this probability are dropped


@dataclass
class ModelConfig:
    hidden_dim: int = 512  # D
    num_queries: int = 48  # Nq
    num_points: int = 30  # Ns
    num_layers: int = 4  # L decoder layers
    num_subpoints: int = 4  # deformable sub-points per point
    num_heads: int = 8
    ffn_dim: int = 2048
    mix_dim: int = 64  # channel-mix bottleneck (D -> 64 -> D)
    # "full": PointTAD's generator and output, the paper's model (85% of its parameters); "lean":
    # the same mixing with a rank-`mix_rank` parameter generator and a per-point reduction to
    # `mix_point_dim` before the output projection. Lean at rank D/8 lost 0.09 f1_strict against
    # full over 3 seeds (bench/results/mixing-cpu.txt), so full is the default.
    mixing: Mixing = "full"
    mix_rank: int = 64
    mix_point_dim: int = 64
    # Recompute the dynamic mixing in backward instead of keeping its activations (training only):
    # they are 70% of the paper model's activation memory (bench/model.py).
    checkpoint_mixing: bool = True
    dropout: float = 0.1
    # Dropout on the standardised input features (training only): with frozen features the
    # detector memorises a small training set (bench/results/ablations-small-3seeds.md).
    input_dropout: float = 0.0
    query_mixer: QueryMixer = "mamba_mhsa"  # "mhsa": the PointTAD baseline
    # Residual temporal conv blocks over the projected features before the decoder and the dense
    # head (0 = PointTAD, whose I3D is trained end to end). Two layers did not help on SMG-like
    # cached features (bench/results/ablations-small-3seeds.md).
    encoder_layers: int = 0
    encoder_kernel: int = 3
    mamba: MambaConfig = field(default_factory=MambaConfig)
    # "pointtad": the query-point detector (the seed method); "pyramid": the dense pyramid
    # detector of the ActionFormer family, configured by [model.pyramid].
    arch: Arch = "pointtad"
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)
    # Several feature sets (`train --features RGB --features POSE`): "concat" projects their
    # concatenation; "gated" adds the other streams to the first (RGB) through a learned gate,
    # x = P0(rgb) + sigmoid(G[P0(rgb), P1(pose)]) * P1(pose) (a gated residual, the MiGA 2026
    # runner-up's skeleton fusion). One feature set: no fusion.
    fusion: Fusion = "concat"
    # The gate's start with fusion "gated": "default" (PyTorch's init, sigmoid about 0.5), or
    # "closed" (bias -4, sigmoid 0.018): the detector starts on the first stream alone and lets
    # the others in only where training finds they help.
    gate_init: GateInit = "default"
    # ModDrop (Neverova et al., multimodal gesture recognition): while training, each window
    # drops the first stream with probability p/2, else the other streams with p/2 (never all),
    # so neither stream can lean on the other. Several feature sets only.
    stream_dropout: float = 0.0


@dataclass
class PyramidLossConfig:
    """Losses of the pyramid detector: sigmoid focal classification at every point, an IoU-family
    loss on the boundaries of positive points, both divided by the number of positives."""

    # A point is positive for an instance when it lies inside it and within centre_radius *
    # (its level's step) of its centre (ActionFormer's centre sampling).
    centre_radius: float = 1.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    reg_weight: float = 1.0
    iou_loss: IouLoss = "diou"


@dataclass
class LossConfig:
    cost_class: float = 10.0
    cost_l1: float = 5.0
    cost_iou: float = 5.0
    class_weight: float = 1.0
    background_weight: float = 0.1
    focal: bool = False  # sigmoid focal loss instead of softmax CE
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    l1_weight: float = 5.0
    iou_weight: float = 5.0
    iou_loss: IouLoss = "iou"  # "iou": PointTAD's (detect.model.segments.paired_iou_loss)
    dense_weight: float = 10.0
    aux: bool = True  # losses on every decoder layer
    pyramid: PyramidLossConfig = field(default_factory=PyramidLossConfig)


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    lr_step: int = 10  # epochs between lr halvings
    lr_gamma: float = 0.5
    clip_grad: float = 0.1
    seed: int = 0
    device: Device = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    num_workers: int = 0
    threads: int = 0  # torch CPU threads; 0: the cores this process may use (extract/threads.py)
    select_metric: SelectMetric = "f1_miga"  # best checkpoint on val by this metric
    grad_accum: int = 1  # batches whose gradients add up before one optimiser step
    # > 0: evaluate, select and save an exponential moving average of the weights with this
    # decay per optimiser step (detect/train/ema.py); 0 uses the raw weights.
    ema: float = 0.0


@dataclass
class EvalConfig:
    nms_iou: float = 0.5  # per-class NMS tIoU; 1.0 disables NMS
    max_per_video: int = 2000
    score_threshold: float = -1.0  # < 0: use the threshold tuned on val and stored with the run
    match_iou: float = 0.3  # MiGA F1 threshold
    top_k: int = 1  # candidates per query: its k most likely classes
    # Weight a of the dense head in the score: p^(1-a) * (mean dense probability over the
    # segment)^a; 0 scores by the query's class probability alone (PointTAD).
    dense_fusion: float = 0.0
    iou_thresholds: list[float] = field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    )


@dataclass
class AugmentConfig:
    """Window-consistent augmentation of end-to-end training windows (never at eval).

    One draw per window, applied identically to every frame: random crop (else centre crop),
    horizontal flip with p 0.5, and with p `photometric_p` a photometric distortion whose parts
    each apply with p 0.5: brightness +-`brightness` (0-255 units), contrast and saturation
    factors in [1 - x, 1 + x], hue rotation +-`hue` degrees (PointTAD's ranges).
    """

    enabled: bool = True
    random_crop: bool = True
    flip: bool = True
    photometric: bool = True
    photometric_p: float = 0.5
    brightness: float = 32.0
    contrast: float = 0.5
    saturation: float = 0.5
    hue: float = 18.0


@dataclass
class BackboneConfig:
    """The I3D in end-to-end mode (`mode = "e2e"`)."""

    # The backbone trained: the one that made the feature set. "auto" takes it from there
    # (the run's config.toml records the resolved name); naming another one is an error.
    model: BackboneModel = "auto"
    weights: str = "kinetics"  # kinetics | random | PATH (.pyth, state_dict, e2e mgdet run)
    seed: int = 0  # seed of weights = "random"
    lr_mult: float = 0.05  # backbone lr = train.lr * lr_mult
    freeze_bn: bool = True  # BatchNorm in eval mode, its parameters not trained
    # 0: none, 1: stem, 2: stem + res2, ... 5: the whole backbone (inception_i3d's stages are
    # by the same scales: 2 up to MaxPool3d_3a, 3 Mixed_3b-3c, 4 Mixed_4b-4f, 5 Mixed_5b-5c)
    frozen_stages: int = 2
    checkpointing: bool = True  # activation checkpointing per residual block (or endpoint)
    crop: int = 0  # square crop fed to the I3D; 0: the feature set's crop
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OnlineConfig:
    """The causal (strictly online) mode, detect/inference/causal.py.

    With `causal`, training windows end every `train_hop` steps and their targets are the
    instances that ended within the last `horizon_s` seconds of the window (D); at inference a
    window of `data.window` steps ending at the newest step runs every `every` steps, its
    detections ending in the last D are emitted once they score at least the emission threshold
    and overlap nothing emitted before (causal NMS at `eval.nms_iou`), and are never revised.
    """

    causal: bool = False
    horizon_s: float = 2.0  # D, in seconds (rounded to whole feature steps, at least 1)
    every: int = 1  # feature steps between inferences
    train_hop: int = 2  # feature steps between the ends of causal training windows
    # < 0: the emission threshold tuned on val (online f1_miga) and stored in best.pt
    threshold: float = -1.0


IOU_LOSSES = get_args(IouLoss)


@dataclass
class Config:
    name: str = "mgdet"
    mode: Mode = "features"  # "features": cached features; "e2e": I3D + detector from frames
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)


# key -> (test, what it must be); the values types cannot express, checked when a config loads.
RANGES: Ranges = {
    "data.fps": (positive, "> 0"),
    "data.stride": (at_least_1, ">= 1"),
    "data.window": (lambda v: v >= 2, ">= 2"),
    "data.train_overlap": (fraction, "in [0, 1)"),
    "model.hidden_dim": (at_least_1, ">= 1"),
    "model.num_queries": (at_least_1, ">= 1"),
    "model.num_points": (lambda v: v >= 2, ">= 2 (a start and an end)"),
    "model.num_layers": (at_least_1, ">= 1"),
    "model.num_subpoints": (at_least_1, ">= 1"),
    "model.num_heads": (at_least_1, ">= 1"),
    "model.ffn_dim": (at_least_1, ">= 1"),
    "model.mix_dim": (at_least_1, ">= 1"),
    "model.dropout": (fraction, "in [0, 1)"),
    "model.stream_dropout": (fraction, "in [0, 1)"),
    "model.mamba.layers": (nonnegative, ">= 0"),
    "model.mamba.d_state": (at_least_1, ">= 1"),
    "model.mamba.d_conv": (at_least_1, ">= 1"),
    "model.mamba.expand": (at_least_1, ">= 1"),
    "model.pyramid.levels": (at_least_1, ">= 1"),
    "model.pyramid.embed_layers": (nonnegative, ">= 0"),
    "model.pyramid.stem_blocks": (nonnegative, ">= 0"),
    "model.pyramid.head_layers": (nonnegative, ">= 0"),
    "model.pyramid.kernel": (lambda v: v >= 1 and v % 2 == 1, "odd and >= 1"),
    "model.pyramid.range_base": (positive, "> 0"),
    "model.pyramid.dropout": (fraction, "in [0, 1)"),
    "model.pyramid.pre_nms_topk": (at_least_1, ">= 1"),
    "model.pyramid.pre_nms_threshold": (fraction, "in [0, 1)"),
    "loss.pyramid.centre_radius": (positive, "> 0"),
    "loss.pyramid.focal_alpha": (lambda v: v <= 1, "<= 1 (< 0 disables it)"),
    "loss.pyramid.focal_gamma": (nonnegative, ">= 0"),
    "loss.pyramid.reg_weight": (nonnegative, ">= 0"),
    "loss.cost_class": (nonnegative, ">= 0"),
    "loss.cost_l1": (nonnegative, ">= 0"),
    "loss.cost_iou": (nonnegative, ">= 0"),
    "loss.class_weight": (nonnegative, ">= 0"),
    "loss.background_weight": (nonnegative, ">= 0"),
    "loss.focal_alpha": (lambda v: v <= 1, "<= 1 (< 0 disables it)"),
    "loss.focal_gamma": (nonnegative, ">= 0"),
    "loss.l1_weight": (nonnegative, ">= 0"),
    "loss.iou_weight": (nonnegative, ">= 0"),
    "loss.dense_weight": (nonnegative, ">= 0"),
    "train.epochs": (at_least_1, ">= 1"),
    "train.batch_size": (at_least_1, ">= 1"),
    "train.lr": (positive, "> 0"),
    "train.weight_decay": (nonnegative, ">= 0"),
    "train.lr_step": (at_least_1, ">= 1"),
    "train.lr_gamma": (positive, "> 0"),
    "train.clip_grad": (nonnegative, ">= 0 (0: no clipping)"),
    "train.num_workers": (nonnegative, ">= 0"),
    "train.threads": (nonnegative, ">= 0 (0: the cores this process may use)"),
    "eval.nms_iou": (lambda v: 0 < v <= 1, "in (0, 1] (1: no NMS)"),
    "eval.max_per_video": (at_least_1, ">= 1"),
    "eval.match_iou": (fraction, "in [0, 1)"),
    "eval.iou_thresholds": (lambda v: bool(v) and all(0 < x < 1 for x in v),
                            "a non-empty list of values in (0, 1)"),
    "online.horizon_s": (positive, "> 0"),
    "online.every": (at_least_1, ">= 1"),
    "online.train_hop": (at_least_1, ">= 1"),
    "online.threshold": (lambda v: v <= 1, "<= 1 (< 0: tuned on val)"),
}


def _check_ranges(cfg: Config) -> None:
    check_ranges(cfg, RANGES)
    if cfg.model.hidden_dim % cfg.model.num_heads:
        raise ConfigError(f"model.hidden_dim ({cfg.model.hidden_dim}) must be divisible by "
                          f"model.num_heads ({cfg.model.num_heads})")


def check_config(cfg: Config) -> None:
    """Value checks that types cannot express; raises ConfigError naming the key."""
    _check_ranges(cfg)
    _check_model(cfg.model)
    _check_run(cfg)
    _check_backbone(cfg.backbone)


def _check_model(m: ModelConfig) -> None:
    if not 0.0 <= m.input_dropout < 1.0:
        raise ConfigError(f"model.input_dropout must be in [0, 1), got {m.input_dropout}")
    if m.encoder_layers < 0:
        raise ConfigError(f"model.encoder_layers must be >= 0, got {m.encoder_layers}")
    if m.encoder_kernel < 1 or m.encoder_kernel % 2 == 0:
        raise ConfigError(
            f"model.encoder_kernel must be odd and >= 1 (same-length output), got "
            f"{m.encoder_kernel}"
        )
    if min(m.mix_rank, m.mix_point_dim) < 1:
        raise ConfigError("model.mix_rank and model.mix_point_dim must be >= 1")


def _check_run(cfg: Config) -> None:
    if not 0 <= cfg.data.eval_overlap < 1:
        raise ConfigError(f"data.eval_overlap: must be in [0, 1), got {cfg.data.eval_overlap}")
    if cfg.eval.top_k < 1:
        raise ConfigError(f"eval.top_k: must be >= 1, got {cfg.eval.top_k}")
    if not 0 <= cfg.eval.dense_fusion <= 1:
        raise ConfigError(f"eval.dense_fusion: must be in [0, 1], got {cfg.eval.dense_fusion}")
    if cfg.model.arch == "pyramid" and cfg.eval.dense_fusion > 0:
        raise ConfigError("eval.dense_fusion fuses the query-point detector's dense head; "
                          "model.arch = \"pyramid\" scores every step itself: set it to 0")
    if not 0.0 <= cfg.train.ema < 1.0:
        raise ConfigError(f"train.ema: the EMA decay must be in [0, 1), got {cfg.train.ema}")
    if cfg.train.grad_accum < 1:
        raise ConfigError(f"train.grad_accum: must be >= 1, got {cfg.train.grad_accum}")
    if cfg.online.causal and cfg.mode == "e2e":
        raise ConfigError("online.causal trains on cached features; it cannot be combined with "
                          "mode = \"e2e\"")


def _check_backbone(b: BackboneConfig) -> None:
    if not 0 <= b.frozen_stages <= 5:
        raise ConfigError(f"backbone.frozen_stages: must be 0..5, got {b.frozen_stages}")
    if b.lr_mult < 0:
        raise ConfigError(f"backbone.lr_mult: must be >= 0, got {b.lr_mult}")
    if b.crop < 0:
        raise ConfigError(f"backbone.crop: must be >= 0, got {b.crop}")
    a = b.augment
    if not 0 <= a.photometric_p <= 1:
        raise ConfigError(f"backbone.augment.photometric_p: must be in [0, 1], got "
                          f"{a.photometric_p}")
    for name in ("brightness", "contrast", "saturation", "hue"):
        if getattr(a, name) < 0:
            raise ConfigError(f"backbone.augment.{name}: must be >= 0")
    if a.contrast > 1 or a.saturation > 1:
        raise ConfigError("backbone.augment.contrast and saturation must be <= 1 (factors "
                          "stay non-negative)")


def config_from_dict(data: dict[str, Any]) -> Config:
    return build_dataclass(Config, data)


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML at `path` (and its `base`), then `section.key=value` overrides."""
    return load_dataclass(Config, path, overrides, check_config)


