"""End-to-end mode: the I3D of stage one and the detector trained together, from stored frames.

The backbone is stage one's (`extract.i3d.build_backbone`: same construction, same weights
loader) and so is the preprocessing (the backbone's own `normalize`, centre crop at eval, the
same halo cut and `extract.i3d.pool_steps`), so with augmentation off and the backbone untouched
a window's features equal the cached ones, and a finetuned backbone re-extracts a feature set
with `python -m extract features --model M --weights runs/NAME/checkpoints/best.pt`.

The backbone is the one that made the feature set (`backbone.model`, resolved from the feature
set when training starts: `with_feature_set_backbone`): i3d_r50 (2048 / 1024 wide, one native
step per 2 frames) or inception_i3d (1024 / 832, one per 4 frames, input in [-1, 1]).

Training choices (see `detect.config.BackboneConfig`): stages up to `frozen_stages` frozen (no
gradient, eval mode), BatchNorm frozen by default (eval mode, parameters not trained: batches of
one or two windows give useless batch statistics), activation checkpointing per residual block
(per endpoint for inception_i3d), and a backbone learning rate of `lr_mult` times the
detector's.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from detect.config import BackboneConfig, Config, ConfigError
from detect.data.augment import photometric
from detect.data.windows import WindowDataset
from detect.model.detectors import build_detector
from detect.model.inputs import FeatureInput
from extract.cache import FeatureSet
from extract.i3d import (
    INCEPTION,
    MODEL_NAME,
    Backbone,
    backbone_spec,
    build_backbone,
    pool_steps,
    required_halo,
)
from extract.inception_i3d import ENDPOINTS
from extract.training import parameter_groups

# The endpoints of each inception_i3d stage, matched to i3d_r50's by the spatial scale their
# convolutions work at (1/4: stem, 1/4: res2 | Conv3d_2b-2c, 1/8: res3 | Mixed_3b-3c, 1/16:
# res4 | Mixed_4b-4f, 1/32: res5 | Mixed_5b-5c); the pool after a stage belongs to it, as
# i3d_r50's temporal pool belongs to res2.
_INCEPTION_STAGES = {
    1: ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3"),
    2: ("Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3"),
    3: ("Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3"),
    4: ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2"),
    5: ("Mixed_5b", "Mixed_5c"),
}
# backbone.blocks indices of each stage (backbone.frozen_stages counts them), per backbone.
# i3d_r50: 1 stem, 2 res2 (and the temporal pool after it), 3 res3, 4 res4, 5 res5.
STAGE_BLOCKS: dict[str, dict[int, tuple[int, ...]]] = {
    MODEL_NAME: {1: (0,), 2: (1, 2), 3: (3,), 4: (4,), 5: (5,)},
    INCEPTION: {stage: tuple(ENDPOINTS.index(n) for n in names)
                for stage, names in _INCEPTION_STAGES.items()},
}


def frozen_blocks(frozen_stages: int, model: str = MODEL_NAME) -> list[int]:
    """backbone.blocks indices of `model` frozen when stages 1..frozen_stages are."""
    stages = STAGE_BLOCKS[model]
    return [b for stage in range(1, frozen_stages + 1) for b in stages[stage]]


def backbone_model(cfg: Config) -> str:
    """The backbone an end-to-end config trains. "auto" is resolved from the feature set when
    training starts (`with_feature_set_backbone`), so a run's config names its backbone; only
    runs from before `backbone.model` existed still say "auto", and they were all i3d_r50."""
    return MODEL_NAME if cfg.backbone.model == "auto" else cfg.backbone.model


def with_feature_set_backbone(cfg: Config, fs: FeatureSet) -> Config:
    """`cfg` with backbone.model set to the backbone that made `fs` (e2e mode only): the run
    trains the network whose features it was given. ConfigError when the config names
    another."""
    if cfg.mode != "e2e":
        return cfg
    made_by = str(fs.settings.get("model", MODEL_NAME))  # sets older than the field: i3d_r50
    if cfg.backbone.model not in ("auto", made_by):
        raise ConfigError(f"backbone.model: {cfg.backbone.model!r}, but the feature set "
                          f"{fs.path} was made by {made_by}; end-to-end training trains the "
                          f"backbone of its feature set (set \"auto\" or {made_by!r})")
    return dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, model=made_by))


def e2e_dims(cfg: Config) -> tuple[int, int]:
    """(main layer, second layer or 0) widths the e2e backbone gives the detector."""
    main, second = backbone_spec(backbone_model(cfg)).dims
    return main, second if cfg.data.use_res4 else 0


class E2EDetector(nn.Module):
    """I3D backbone (either of `extract.i3d`'s) + detector (`model.arch`) in one graph.

    forward(frames, offsets, valid, window, jitter) -> the detector's outputs (see
    `detect.model.detector.Detector` or `detect.model.pyramid.PyramidDetector`). frames: list
    of B (n_i, h, w, 3) uint8 windows with their halo; offsets: core start of each in frames
    (a multiple of the backbone's step); valid: feature steps in each core; window: W
    (cores shorter than W are padded by repeating the last feature, as cached windows are);
    jitter: (B, 4) photometric parameters or None.
    """

    def __init__(self, backbone: Backbone, detector: FeatureInput, stride: int,
                 cfg: BackboneConfig) -> None:
        super().__init__()
        self.step = backbone.step  # input frames per native step: 2 (i3d_r50), 4 (inception)
        if stride % self.step:
            raise ValueError(f"stride must be a multiple of {backbone.model}'s native step of "
                             f"{self.step} frames, got {stride}")
        self.backbone = backbone
        self.detector = detector
        self.stride = stride
        self.halo = required_halo(backbone)
        self.freeze_bn = cfg.freeze_bn
        self.frozen = frozen_blocks(cfg.frozen_stages, backbone.model)
        backbone.checkpointing = cfg.checkpointing
        for i, block in enumerate(backbone.blocks):
            for p in block.parameters():
                p.requires_grad_(i not in self.frozen)
        if self.freeze_bn:
            for m in self._norms():
                for p in m.parameters():
                    p.requires_grad_(False)
        self.train()

    def _norms(self) -> list[nn.Module]:
        return [m for m in self.backbone.modules() if isinstance(m, nn.BatchNorm3d)]

    def train(self, mode: bool = True) -> E2EDetector:
        super().train(mode)
        # Frozen parts keep inference behaviour in training too: running statistics stay put.
        for i in self.frozen:
            self.backbone.blocks[i].eval()
        if self.freeze_bn:
            for m in self._norms():
                m.eval()
        return self

    def features(self, frames: list[Tensor], offsets: list[int], valid: list[int], window: int,
                 jitter: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Backbone features of each window's core: (B, W, C) and (B, W, C4) or None, the
        backbone's two widths (`backbone.dims`: 2048 / 1024 for i3d_r50, 1024 / 832 for
        inception_i3d).

        Windows with equally long frame inputs run as one backbone batch.
        """
        device = next(self.backbone.parameters()).device
        inputs = []
        for i, f in enumerate(frames):
            x = f.to(device, non_blocking=True)
            if jitter is not None:
                x = photometric(x, jitter[i])
            inputs.append(self.backbone.normalize(x))  # each backbone's own input range
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape), []).append(i)
        r5: list[Tensor | None] = [None] * len(frames)
        r4: list[Tensor | None] = [None] * len(frames)
        step = self.step
        g = self.stride // step  # native steps per stored feature
        for idx in groups.values():
            x = torch.cat([inputs[i] for i in idx]).contiguous(
                memory_format=torch.channels_last_3d)
            a5, a4 = self.backbone(x)
            for j, i in enumerate(idx):
                a, b = offsets[i] // step, offsets[i] // step + valid[i] * g
                if b > a5.shape[2]:
                    raise ValueError(f"window {i}: core of {valid[i]} steps at frame offset "
                                     f"{offsets[i]} does not fit {frames[i].shape[0]} frames")
                r5[i] = _pad(pool_steps(a5[j, :, a:b].t(), g), window)
                if a4 is not None:
                    r4[i] = _pad(pool_steps(a4[j, :, a:b].t(), g), window)
        res5 = torch.stack(r5)  # type: ignore[arg-type]
        res4 = torch.stack(r4) if self.backbone.res4 else None  # type: ignore[arg-type]
        return res5, res4

    def forward(self, frames: list[Tensor], offsets: list[int], valid: list[int], window: int,
                jitter: Tensor | None = None) -> dict[str, Tensor]:
        res5, res4 = self.features(frames, offsets, valid, window, jitter)
        return self.detector(res5, res4)


def _pad(x: Tensor, window: int) -> Tensor:
    """(V, C) -> (W, C), the last row repeated (as `detect.data.windows` pads cached windows)."""
    if x.shape[0] == window:
        return x
    return torch.cat([x, x[-1:].expand(window - x.shape[0], -1)])


def build_e2e_model(cfg: Config, num_classes: int, pretrained: bool = True) -> E2EDetector:
    """The end-to-end model. pretrained=False builds a seeded random backbone, for loading a
    checkpoint's state (evaluation never needs the Kinetics file)."""
    weights = cfg.backbone.weights if pretrained else "random"
    backbone, _ = build_backbone(weights, cfg.backbone.seed, res4=cfg.data.use_res4,
                                 model=backbone_model(cfg))
    in_dim, res4_dim = e2e_dims(cfg)
    detector = build_detector(cfg.model, in_dim, num_classes, res4_dim)
    return E2EDetector(backbone, detector, cfg.data.stride, cfg.backbone)


def e2e_parameter_groups(model: E2EDetector, weight_decay: float, lr: float,
                         lr_mult: float) -> list[dict[str, Any]]:
    """AdamW groups: the detector's (at `lr`), then the trainable backbone's (at lr * lr_mult),
    each split into decayed / not decayed by `extract.training.parameter_groups`."""
    groups = parameter_groups(model.detector, weight_decay, lr=lr)
    for g in parameter_groups(model.backbone, weight_decay, lr=lr * lr_mult):
        groups.append(dict(g, names=[f"backbone.{n}" for n in g["names"]]))
    return [g for g in groups if g["params"]]


@torch.no_grad()
def feature_mismatch(model: E2EDetector, dataset: WindowDataset, fs: FeatureSet,
                     index: int = 0) -> float:
    """max |e2e - cached| / max |cached| of one unaugmented window's features.

    About 1e-3 (the fp16 cache) when the backbone, crop and stored frames reproduce the feature
    set; much more when training starts from other weights or another resolution.
    """
    was = model.training
    model.eval()
    try:
        item = dataset[index]
        vid, start, valid = item["meta"]
        feats, _ = model.features([item["frames"]], [item["offset"]], [valid], valid)
    finally:
        model.train(was)
    cached = torch.from_numpy(fs.load(vid).features[start:start + valid]).to(feats.device)
    return float((feats[0] - cached).abs().max() / cached.abs().max().clamp_min(1e-12))


def run_model(model: nn.Module, batch: dict[str, Any], device: torch.device,
              window: int, amp: bool = False) -> dict[str, Tensor]:
    """One batch through either model: cached features (Detector) or frames (E2EDetector,
    possibly inside DDP). amp: bf16 autocast on CUDA."""
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda"
           else nullcontext())
    with ctx:
        if "frames" in batch:
            jitter = batch.get("jitter")
            return model(batch["frames"], batch["offsets"], [m[2] for m in batch["meta"]],
                         window, jitter)  # jitter stays on the CPU: read as numbers
        feats = batch["features"].to(device, non_blocking=True)
        res4 = batch["res4"].to(device, non_blocking=True) if batch.get("res4") is not None \
            else None
        return model(feats, res4)
