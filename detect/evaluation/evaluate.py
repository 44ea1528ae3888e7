"""Inference over a subset's windows, merged per video, and its metrics.

mAP is computed on the full ranked list of detections; F1 (MiGA and strict) and the recall by
ground-truth duration on the detections that pass the score threshold. On `val` the threshold
is the one that maximises F1 there; `eval` on `test` uses the threshold stored with the
checkpoint (never tuned on `test`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from detect.config import Config, EvalConfig
from detect.data.annotations import Annotations
from detect.data.windows import WindowDataset, window_dataset
from detect.evaluation.metrics import best_threshold, score
from detect.inference.detections import Detections
from detect.inference.postprocess import apply_threshold
from detect.inference.predictor import load_evaluation, predict


def evaluate_subset(
    model: torch.nn.Module,
    dataset: WindowDataset,
    ann: Annotations,
    cfg: Config,
    device: torch.device,
    threshold: float | None,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, Detections]]:
    """Metrics on `dataset.subset` and all its detections; threshold=None tunes it there.

    A causal run (`online.causal`) is evaluated on what its causal replay emits (the threshold
    is then the emission threshold; the metrics add the emission delays, AEDT)."""
    if cfg.online.causal:
        from detect.evaluation.online_eval import evaluate_causal

        metrics, em = evaluate_causal(model, dataset, ann, cfg, device, threshold, progress)
        return metrics, {v: e.detections for v, e in em.items()}
    preds = predict(model, dataset, cfg, device, progress=progress)
    return score_detections(preds, ann, dataset.subset, cfg.eval, threshold), preds


def score_detections(
    preds: dict[str, Detections],
    ann: Annotations,
    subset: str,
    cfg: EvalConfig,
    threshold: float | None,
) -> dict[str, Any]:
    """F1s and the recall by ground-truth duration ("recall_by_duration") on the detections at or
    above `threshold` (None: the F1-best one on this subset), the detections a user gets; mAP and
    per-class AP on all of them; the threshold used is in "threshold"."""
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


def evaluate_run(run: Path, subset: str = "test", progress: bool = True) -> dict[str, Any]:
    """`python -m detect eval`: predictions.json, MiGA CSVs and metrics.json in the run folder."""
    from detect.evaluation.metrics import format_table
    from detect.evaluation.submission import write_miga_csvs
    from detect.inference.detections import save_predictions
    from extract.io import atomic_write_json
    from extract.provenance import versions

    run = Path(run)
    r = load_evaluation(run)
    cfg, fs, ann, model, ck, device = r.cfg, r.fs, r.ann, r.model, r.ck, r.device
    threshold = r.threshold
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
