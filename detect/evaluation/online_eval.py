"""Online evaluation from the cache: the test videos replayed step by step, scored on what was
emitted and when.

Two modes, named for what they do:

- "causal" (a run trained with `online.causal`, or any run with `--mode causal`): a decision every
  `online.every` steps over the window ending at the newest step; candidates ending within the
  last D are emitted by the emission rule of `detect.inference.causal` (threshold tuned on val).
- "window-final": `detect stream`'s sliding windows (`detect.inference.online`): a detection is
  emitted once no later window can change it, at the run's offline threshold.

A replay feeds each decision only the steps that had arrived by then. Emission time = stream time
of the last feature a decision used plus its half-span (e x stride / fps). Metrics: f1_miga,
f1_strict, map and recall by duration of the emitted detections; AEDT = emission time minus
ground-truth end over the true positives of f1_strict (class match, tIoU > match_iou): median,
p95 and mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from detect.config import Config
from detect.data.annotations import Annotations
from detect.data.windows import WindowDataset
from detect.evaluation.metrics import emission_delays, f1_miga, score
from detect.inference.causal import (
    CausalSettings,
    Decisions,
    Emissions,
    causal_decisions,
    emit_all,
    with_horizon,
)
from detect.inference.detections import Detections
from detect.inference.online import OnlineDetector, WindowSettings
from detect.inference.postprocess import DecodeOptions
from extract.progress import progress as progress_bar

OnlineMode = Literal["causal", "window-final"]


def threshold_grid(decisions: Decisions, size: int = 40) -> np.ndarray:
    """Candidate emission thresholds: quantiles of all candidate scores, dense in the top tail
    (what is emitted is a small fraction of the candidates)."""
    scores = np.concatenate([c.score for dec in decisions.values() for _, c in dec] or
                            [np.zeros(0)])
    if not scores.size:
        return np.array([0.5])
    levels = 1.0 - np.geomspace(0.5, 2e-4, size)
    return np.unique(np.quantile(scores, levels))


def tune_emission_threshold(decisions: Decisions, ann: Annotations, subset: str, cfg: Config,
                            s: CausalSettings) -> float:
    """The emission threshold of the best online f1_miga on `subset` (val; never test)."""
    best_t, best_f = 0.5, -1.0
    for t in threshold_grid(decisions):
        em = emit_all(decisions, float(t), cfg.eval.nms_iou, s)
        f = f1_miga({v: e.detections for v, e in em.items()}, ann, subset,
                    cfg.eval.match_iou)["f1"]
        if f > best_f:
            best_t, best_f = float(t), f
    return best_t


def online_metrics(emissions: dict[str, Emissions], ann: Annotations, subset: str, cfg: Config
                   ) -> dict[str, Any]:
    """`score`'s metrics of the emitted detections, plus emitted and AEDT (seconds)."""
    preds = {v: e.detections for v, e in emissions.items()}
    ev = cfg.eval
    m = score(preds, ann, subset, ev.iou_thresholds, ev.match_iou)
    delays = emission_delays(preds, {v: e.emitted_at for v, e in emissions.items()}, ann,
                             subset, ev.match_iou)
    m["emitted"] = int(sum(len(p) for p in preds.values()))
    m["aedt_matched"] = int(delays.size)
    for name, fn in (("median", np.median), ("p95", lambda x: np.percentile(x, 95)),
                     ("mean", np.mean)):
        m[f"aedt_{name}_s"] = float(fn(delays)) if delays.size else None
    return m


def evaluate_causal(model: torch.nn.Module, dataset: WindowDataset, ann: Annotations,
                    cfg: Config, device: torch.device, threshold: float | None,
                    progress: bool = False) -> tuple[dict[str, Any], dict[str, Emissions]]:
    """The causal replay of `dataset.subset`, its metrics and emissions; threshold None tunes
    the emission threshold there (val)."""
    s = CausalSettings.of(cfg, dataset.stride, dataset.fps)
    decisions = causal_decisions(model, dataset, cfg, device, s, progress)
    if threshold is None:
        threshold = tune_emission_threshold(decisions, ann, dataset.subset, cfg, s)
    em = emit_all(decisions, threshold, cfg.eval.nms_iou, s)
    metrics = online_metrics(em, ann, dataset.subset, cfg)
    metrics["threshold"] = float(threshold)
    return metrics, em


def window_final_emissions(model: torch.nn.Module, dataset: WindowDataset, cfg: Config,
                           device: torch.device, threshold: float, hop: int | None = None,
                           progress: bool = False) -> dict[str, Emissions]:
    """`detect stream`'s windows replayed one step at a time: each detection stamped with the
    stream time at which it became final."""
    from detect.data.windows import window_step

    W = cfg.data.window
    settings = WindowSettings(W, hop or window_step(W, cfg.data.eval_overlap), dataset.stride,
                              dataset.fps)
    decode = DecodeOptions.of(cfg, dataset.stride, dataset.fps)
    sec = dataset.stride / dataset.fps
    out = {}
    for v in progress_bar(dataset.videos, desc=f"window-final replay {dataset.subset}",
                          enabled=progress, leave=False):
        assert v.features is not None
        det = OnlineDetector(model, settings, cfg.eval.nms_iou, threshold, decode, device)
        parts, times = [], []
        for t in range(v.num_steps):
            got = det.push(v.features[t : t + 1], None if v.res4 is None else v.res4[t : t + 1])
            parts.append(got)
            times.append(np.full(len(got), (t + 1) * sec))
        got = det.finish()
        parts.append(got)
        times.append(np.full(len(got), v.num_steps * sec))
        out[v.video_id] = Emissions(Detections.concat(parts), np.concatenate(times))
    return out


def curve(decisions: Decisions, ann: Annotations, subset: str, cfg: Config,
          base: CausalSettings, horizons_s: list[float], thresholds: np.ndarray
          ) -> list[dict[str, Any]]:
    """f1_strict against AEDT over horizons and emission thresholds (decisions replayed at the
    longest horizon)."""
    rows = []
    for h in horizons_s:
        s = base.with_horizon_s(h)
        dec = with_horizon(decisions, s)
        for t in thresholds:
            m = online_metrics(emit_all(dec, float(t), cfg.eval.nms_iou, s), ann, subset, cfg)
            rows.append({"horizon_s": h, "threshold": float(t), "f1_strict": m["f1_strict"],
                         "f1_miga": m["f1_miga"], "emitted": m["emitted"],
                         "aedt_median_s": m["aedt_median_s"], "aedt_p95_s": m["aedt_p95_s"]})
    return rows


def evaluate_online_run(run: Path, subset: str = "test", mode: OnlineMode | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """`python -m detect eval RUN --online`: RUN/metrics_online.json and
    predictions_online.json (each detection with its `emitted_at`)."""
    from detect.data.windows import window_dataset, window_step
    from detect.evaluation.metrics import format_table
    from detect.inference.detections import save_predictions
    from detect.inference.predictor import load_evaluation
    from detect.runs import read_run
    from extract.io import RunError, atomic_write_json
    from extract.provenance import versions

    run = Path(run)
    if read_run(run)[0].mode != "features":
        raise RunError(f"{run}: online evaluation replays cached features; an e2e run has none")
    r = load_evaluation(run)
    cfg, fs, ann, model, ck, device, threshold = (r.cfg, r.fs, r.ann, r.model, r.ck, r.device,
                                                  r.threshold)
    mode = mode or ("causal" if cfg.online.causal else "window-final")
    ds = window_dataset(cfg, fs, ann, subset, train=False)
    settings: dict[str, Any] = {"mode": mode, "window": cfg.data.window,
                                "nms_iou": cfg.eval.nms_iou, "threshold": threshold}
    if mode == "causal":
        s = CausalSettings.of(cfg, ds.stride, ds.fps)
        if not cfg.online.causal:  # a causal run's threshold is `score_threshold`'s
            threshold = cfg.online.threshold
            if threshold < 0:  # a run trained for windows: its emission threshold, tuned on val
                val = window_dataset(cfg, fs, ann, "val", train=False)
                threshold = tune_emission_threshold(
                    causal_decisions(model, val, cfg, device, s), ann, "val", cfg, s)
        long = CausalSettings(s.window, s.window, s.every, s.stride, s.fps)
        decisions = causal_decisions(model, ds, cfg, device, long, progress)
        em = emit_all(with_horizon(decisions, s), threshold, cfg.eval.nms_iou, s)
        settings.update(threshold=threshold, horizon_s=s.horizon * s.step_seconds,
                        horizon_steps=s.horizon, every=s.every)
        D = s.horizon * s.step_seconds
        hs = sorted({round(s.with_horizon_s(f * D).horizon * s.step_seconds, 6)
                     for f in (0.25, 0.5, 0.75, 1.0, 1.5)})
        grid = threshold_grid(decisions, 12)
        rows = curve(decisions, ann, subset, cfg, s, hs, grid)
    else:
        hop = window_step(cfg.data.window, cfg.data.eval_overlap)
        em = window_final_emissions(model, ds, cfg, device, threshold, hop, progress)
        settings.update(hop=hop)
        rows = []
    metrics = online_metrics(em, ann, subset, cfg)
    metrics.update(subset=subset, settings=settings, curve=rows,
                   checkpoint_epoch=ck["best_epoch"], versions=versions())
    preds = {v: e.detections for v, e in em.items()}
    save_predictions(run / "predictions_online.json", preds, ann.classes,
                     extra={v: {"emitted_at": e.emitted_at} for v, e in em.items()})
    atomic_write_json(run / "metrics_online.json", metrics)
    print(format_table(metrics))
    print(format_latency(metrics))
    return metrics


def format_latency(m: dict[str, Any]) -> str:
    """One line: emitted, matched and AEDT median / p95 / mean."""
    if m.get("aedt_median_s") is None:
        return f"online ({m['settings']['mode']}): {m['emitted']} emitted, no true positive"
    return (f"online ({m['settings']['mode']}): {m['emitted']} emitted; emission delay after "
            f"the ground-truth end over {m['aedt_matched']} true positives: median "
            f"{m['aedt_median_s']:.2f} s, p95 {m['aedt_p95_s']:.2f} s, mean "
            f"{m['aedt_mean_s']:.2f} s")
