"""A trained run as a predictor: its best checkpoint as a model, and every window of a dataset
through it, merged per video."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from detect.config import Config
from detect.data.annotations import Annotations
from detect.data.windows import WindowDataset, collate_windows
from detect.inference.detections import Detections
from detect.inference.postprocess import (
    DecodeOptions,
    apply_threshold,
    decode_outputs,
    merge_video,
)
from detect.model.build import build_model
from detect.model.e2e import run_model
from detect.runs import BEST, read_run, run_feature_set, score_threshold
from extract.cache import FeatureSet
from extract.io import load_checkpoint
from extract.progress import progress as progress_bar


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    dataset: WindowDataset,
    cfg: Config,
    device: torch.device,
    progress: bool = False,
) -> dict[str, Detections]:
    """Every window of `dataset` through the model, merged per video (NMS, cap; no threshold)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=False,
                        collate_fn=collate_windows)
    per_video: dict[str, list[Detections]] = {vid: [] for vid in dataset.video_ids}
    decode = DecodeOptions.of(cfg, dataset.stride, dataset.fps)
    for batch in progress_bar(loader, desc=f"predict {dataset.subset}", enabled=progress,
                              leave=False):
        out = run_model(model, batch, device, cfg.data.window,
                        amp=cfg.train.amp and cfg.mode == "e2e")
        decoded = decode_outputs(out, batch["meta"], decode)
        for vid, dets in decoded.items():
            per_video[vid].extend(dets)
    model.train(was_training)
    return {
        vid: merge_video(parts, nms_iou=cfg.eval.nms_iou, score_threshold=0.0,
                         max_per_video=cfg.eval.max_per_video)
        for vid, parts in per_video.items()
    }


def final_detections(model: torch.nn.Module, dataset: WindowDataset, cfg: Config,
                     device: torch.device, threshold: float, progress: bool = False
                     ) -> dict[str, Detections]:
    """What a run reports for every video of `dataset`: its windows merged and thresholded, or,
    for a causal run (`online.causal`), what the causal replay emits at `threshold`."""
    if cfg.online.causal:
        from detect.inference.causal import CausalSettings, causal_decisions, emit_all

        s = CausalSettings.of(cfg, dataset.stride, dataset.fps)
        em = emit_all(causal_decisions(model, dataset, cfg, device, s, progress), threshold,
                      cfg.eval.nms_iou, s)
        return {v: e.detections for v, e in em.items()}
    return apply_threshold(predict(model, dataset, cfg, device, progress=progress), threshold)


def load_run_model(run: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The best checkpoint of a run, as a model in eval mode, and the checkpoint dict."""

    cfg, _ = read_run(run)
    ck = load_checkpoint(Path(run) / BEST)
    model = build_model(cfg, ck["in_dim"], len(ck["classes"]), ck["res4_dim"],
                        pretrained=False, streams=tuple(ck.get("streams", ()))).to(device)
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck


@dataclass
class LoadedRun:
    """What evaluating a run needs: its config, feature set, annotations, best model (eval
    mode, on `device`), checkpoint and score threshold."""

    cfg: Config
    fs: FeatureSet
    ann: Annotations
    model: torch.nn.Module
    ck: dict[str, Any]
    device: torch.device
    threshold: float


def load_evaluation(run: Path, device: str | None = None) -> LoadedRun:
    """A run ready to evaluate: threads and device from its config (or `device`), the feature
    set it was trained on (checked unchanged), its annotations and best checkpoint."""
    from detect.data.annotations import load_annotations
    from extract.runtime import resolve_device
    from extract.threads import apply_threads

    cfg, info = read_run(run)
    apply_threads(cfg.train.threads)
    dev = resolve_device(device or cfg.train.device)
    fs = run_feature_set(run, info)
    ann = load_annotations(Path(info["annotations"]), feature_set=fs)
    model, ck = load_run_model(run, dev)
    return LoadedRun(cfg, fs, ann, model, ck, dev, score_threshold(cfg, ck, run))
