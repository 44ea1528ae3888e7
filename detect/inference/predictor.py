"""A trained run as a predictor: its best checkpoint as a model, and every window of a dataset
through it, merged per video."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from detect.config import Config
from detect.data.windows import WindowDataset, collate_windows
from detect.inference.detections import Detections
from detect.inference.postprocess import DecodeOptions, decode_outputs, merge_video
from detect.model.build import build_model
from detect.model.e2e import run_model
from detect.runs import BEST, read_run
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


def load_run_model(run: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The best checkpoint of a run, as a model in eval mode, and the checkpoint dict."""

    cfg, _ = read_run(run)
    ck = load_checkpoint(Path(run) / BEST)
    model = build_model(cfg, ck["in_dim"], len(ck["classes"]), ck["res4_dim"],
                        pretrained=False).to(device)
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck
