"""The network a config asks for: a detector on cached features (`model.arch`), or I3D + detector
(e2e)."""

from __future__ import annotations

import torch

from detect.config import Config
from detect.model.detectors import build_detector
from detect.model.e2e import build_e2e_model, e2e_parameter_groups
from extract.training import parameter_groups


def build_model(cfg: Config, in_dim: int, num_classes: int, res4_dim: int,
                pretrained: bool = True, streams: tuple[int, ...] = ()) -> torch.nn.Module:
    """The detector (features mode) or the I3D + detector (e2e mode; pretrained=False gives a
    random backbone to load a checkpoint into). streams: channels per feature set of a
    several-set input (checkpoints store them as "streams")."""
    if cfg.mode == "e2e":
        return build_e2e_model(cfg, num_classes, pretrained=pretrained)
    return build_detector(cfg.model, in_dim, num_classes, res4_dim, streams)


def training_groups(cfg: Config, model: torch.nn.Module) -> list[dict]:
    """The optimiser's parameter groups for a config's model: weight decay by
    `extract.training.parameter_groups`; in e2e mode the backbone at lr * backbone.lr_mult."""
    if cfg.mode == "e2e":
        return e2e_parameter_groups(model, cfg.train.weight_decay, cfg.train.lr,
                                    cfg.backbone.lr_mult)
    return parameter_groups(model, cfg.train.weight_decay)
