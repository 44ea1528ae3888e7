"""Inference over a subset's windows, merged per video, and its metrics.

mAP is computed on the full ranked list of detections; F1 (MiGA and strict) on the detections
that pass the score threshold. On `val` the threshold is the one that maximises F1 there; `eval`
on `test` uses the threshold stored with the checkpoint (never tuned on `test`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from detect.annotations import Annotations
from detect.config import Config, EvalConfig
from detect.detections import Detections
from detect.e2e import run_model, window_dataset
from detect.metrics import best_threshold, score
from detect.postprocess import apply_threshold, decode_windows, merge_video
from detect.rundir import read_run
from detect.windows import WindowDataset, collate_windows
from extract.io import RunError


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
    for batch in tqdm(loader, desc=f"predict {dataset.subset}", disable=not progress, leave=False):
        out = run_model(model, batch, device, cfg.data.window,
                        amp=cfg.train.amp and cfg.mode == "e2e")
        decoded = decode_windows(
            out["logits"][-1].float().cpu(),
            out["segments"][-1].float().cpu(),
            batch["meta"],
            stride=dataset.stride,
            fps=dataset.fps,
            window=cfg.data.window,
            focal=cfg.loss.focal,
            top_k=cfg.eval.top_k,
            dense_logits=out["dense_logits"].float().cpu() if cfg.eval.dense_fusion else None,
            dense_fusion=cfg.eval.dense_fusion,
        )
        for vid, dets in decoded.items():
            per_video[vid].extend(dets)
    model.train(was_training)
    return {
        vid: merge_video(parts, nms_iou=cfg.eval.nms_iou, score_threshold=0.0,
                         max_per_video=cfg.eval.max_per_video)
        for vid, parts in per_video.items()
    }


def evaluate_subset(
    model: torch.nn.Module,
    dataset: WindowDataset,
    ann: Annotations,
    cfg: Config,
    device: torch.device,
    threshold: float | None,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Detections]]:
    """Metrics on `dataset.subset` and all its detections; threshold=None tunes it there."""
    preds = predict(model, dataset, cfg, device, progress=progress)
    return score_detections(preds, ann, dataset.subset, cfg.eval, threshold), preds


def score_detections(
    preds: dict[str, Detections],
    ann: Annotations,
    subset: str,
    cfg: EvalConfig,
    threshold: float | None,
) -> dict[str, Any]:
    """F1s on the detections at or above `threshold` (None: the F1-best one on this subset), mAP
    and per-class AP on all of them; the threshold used is in "threshold"."""
    if threshold is None:
        threshold, _ = best_threshold(preds, ann, subset, cfg.match_iou)
    kept = apply_threshold(preds, threshold)
    metrics = score(kept, ann, subset, cfg.iou_thresholds, cfg.match_iou)
    ranked = score(preds, ann, subset, cfg.iou_thresholds, cfg.match_iou)
    metrics["map"] = ranked["map"]
    metrics["map_at"] = ranked["map_at"]
    for name, row in metrics["per_class"].items():
        row["ap"] = ranked["per_class"][name]["ap"]
    metrics["threshold"] = float(threshold)
    return metrics


def load_run_model(run: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The best checkpoint of a run, as a model in eval mode, and the checkpoint dict."""
    from detect.model.build import build_model
    from detect.rundir import BEST
    from extract.io import load_checkpoint

    cfg, _ = read_run(run)
    ck = load_checkpoint(Path(run) / BEST)
    model = build_model(cfg, ck["in_dim"], len(ck["classes"]), ck["res4_dim"],
                        pretrained=False).to(device)
    model.load_state_dict(ck["model"])
    model.eval()
    return model, ck


def evaluate_run(run: Path, subset: str = "test", progress: bool = True) -> dict[str, Any]:
    """`python -m detect eval`: predictions.json, MiGA CSVs and metrics.json in the run folder."""
    from detect.annotations import load_annotations
    from detect.detections import save_predictions
    from detect.metrics import format_table
    from detect.submission import write_miga_csvs
    from extract.cache import FeatureSet
    from extract.io import atomic_write_json
    from extract.provenance import versions
    from extract.runtime import resolve_device

    run = Path(run)
    cfg, info = read_run(run)
    device = resolve_device(cfg.train.device)
    fs = FeatureSet.open(Path(info["feature_set"]["path"]))
    if fs.key != info["feature_set"]["key"]:
        raise RunError(f"{fs.path}: feature set key changed since training ({fs.key!r})")
    ann = load_annotations(Path(info["annotations"]), feature_set=fs)
    model, ck = load_run_model(run, device)
    threshold = cfg.eval.score_threshold if cfg.eval.score_threshold >= 0 else ck["threshold"]
    dataset = window_dataset(cfg, fs, ann, subset, train=False, halo=getattr(model, "halo", 0))
    metrics, preds = evaluate_subset(model, dataset, ann, cfg, device, threshold, progress)
    kept = apply_threshold(preds, threshold)
    save_predictions(run / "predictions.json", kept, ann.classes)
    write_miga_csvs(kept, ann, run / "submission")
    metrics.update(subset=subset, checkpoint_epoch=ck["best_epoch"],
                   params=sum(p.numel() for p in model.parameters()), versions=versions())
    atomic_write_json(run / "metrics.json", metrics)
    print(format_table(metrics))
    return metrics
