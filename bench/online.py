"""Latency against accuracy online (issue 32): the causal mode against today's window-final stream.

On the SMG profile (bench.accuracy's "features" generator, 3 seeds), per seed:

    pyramid          configs/synthetic-small-dense.toml, trained offline (bench.accuracy's run)
    pyramid-online   configs/synthetic-small-online.toml: the same detector trained causally

Curves, each point scored on `test` from a step-by-step replay of the cached features
(detect/evaluation/online_eval.py), its threshold chosen on `val`:

    causal           pyramid-online, causal decisions every step, horizon D swept
    causal-every2    the same, a decision every 2 steps (half the stage-two cost per step)
    causal-offline   pyramid (trained offline) with the same causal decisions, D swept
    window-final     pyramid through `detect stream`'s sliding windows, hop swept

Each point: f1_strict, f1_miga, mAP of the emitted detections, and AEDT (emission time minus
ground-truth end over the true positives): median and p95. Stage-two cost per causal decision
(one window through the model, decoding and the emission rule, batch 1, as `detect stream` runs
it) is measured on one test video with 1 torch thread. Targets: median AEDT <= 1.5 s and p95 <= 3 s
at f1_strict >= 0.85x the offline pyramid's; <= 5 ms per step.

    python -m bench.online [--work DIR] [--seeds 0,1,2] [--threads 1] [--out FILE.json]

--work is bench.accuracy's (its sets and pyramid runs are reused; a killed run resumes). Writes
the JSON, a .md table and a .png of the curves next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.accuracy import AMPLITUDE, make_set, run_model
from detect.data.windows import window_dataset
from detect.evaluation.online_eval import (
    online_metrics,
    tune_emission_threshold,
    window_final_emissions,
)
from detect.inference.causal import (
    CausalDetector,
    CausalSettings,
    Decider,
    causal_decisions,
    emit_all,
    with_horizon,
)
from detect.inference.postprocess import DecodeOptions
from detect.inference.predictor import load_evaluation
from extract.provenance import versions

ROOT = Path(__file__).resolve().parents[1]
HORIZONS_S = (0.8, 1.2, 1.6, 2.0, 2.8)
HOPS = (32, 16, 8, 4)  # window-final: offline evaluation's hop (W/2) and smaller ones
KEYS = ("f1_strict", "f1_miga", "map", "aedt_median_s", "aedt_p95_s", "emitted")


def point(m: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {k: m[k] for k in KEYS} | extra


def causal_curve(run: Path, horizons: tuple[float, ...], every: int = 1
                 ) -> list[dict[str, Any]]:
    """For each horizon: the emission threshold tuned on val, test's metrics there (a decision
    every `every` steps)."""
    r = load_evaluation(run, "cpu")
    cfg, fs, ann, model, device = r.cfg, r.fs, r.ann, r.model, r.device
    ds = {sub: window_dataset(cfg, fs, ann, sub, train=False) for sub in ("val", "test")}
    base = CausalSettings.of(cfg, fs.stride, fs.fps, every=every)
    longest = CausalSettings(base.window, base.window, base.every, base.stride, base.fps)
    dec = {sub: causal_decisions(model, d, cfg, device, longest) for sub, d in ds.items()}
    rows = []
    for h in horizons:
        s = base.with_horizon_s(h)
        val = with_horizon(dec["val"], s)
        thr = tune_emission_threshold(val, ann, "val", cfg, s)
        em = emit_all(with_horizon(dec["test"], s), thr, cfg.eval.nms_iou, s)
        rows.append(point(online_metrics(em, ann, "test", cfg), horizon_s=h, threshold=thr))
    return rows


def window_final_curve(run: Path, hops: tuple[int, ...]) -> list[dict[str, Any]]:
    """The offline run through stream's windows at each hop, its val threshold, on test."""
    r = load_evaluation(run, "cpu")
    cfg, ann, model, device, thr = r.cfg, r.ann, r.model, r.device, r.threshold
    ds = window_dataset(cfg, r.fs, ann, "test", train=False)
    rows = []
    for hop in hops:
        em = window_final_emissions(model, ds, cfg, device, thr, hop)
        rows.append(point(online_metrics(em, ann, "test", cfg), hop=hop, threshold=thr))
    return rows


def step_cost(run: Path, every: int, steps: int = 300) -> dict[str, float]:
    """Stage two's cost on the first test video, fed one step at a time as `detect stream`
    feeds it (batch 1, a decision every `every` steps): milliseconds per step (mean over the
    steps once the window is full) and per decision (median, p95; the model and decoding part
    alone as model_ms)."""
    r = load_evaluation(run, "cpu")
    cfg, fs, ann, model = r.cfg, r.fs, r.ann, r.model
    s = CausalSettings.of(cfg, fs.stride, fs.fps, every=every)
    model_s: list[float] = []
    decider = Decider(model, s, DecodeOptions.of(cfg, s.stride, s.fps, s.window),
                      on_batch=lambda n, sec: model_s.append(sec / n))
    det = CausalDetector(decider, r.threshold, cfg.eval.nms_iou)
    x = fs.load(ann.subset("test").video_ids()[0]).features[:steps]
    walls = []
    for t in range(len(x)):
        t0 = time.perf_counter()
        det.push(x[t : t + 1])
        walls.append(time.perf_counter() - t0)
    full = 1000 * np.asarray(walls[s.window :])  # once the window is full
    per_decision = full[full > 0.05] if every > 1 else full
    return {"every": every, "mean_ms_per_step": float(full.mean()),
            "decision_median_ms": float(np.median(per_decision)),
            "decision_p95_ms": float(np.percentile(per_decision, 95)),
            "model_ms": float(1000 * np.median(model_s[s.window // every :])),
            "steps": int(full.size)}


def mean_rows(rows: list[list[dict[str, Any]]], key: str) -> list[dict[str, Any]]:
    """Mean over seeds of curves with the same points (by `key`), with the f1_strict spread."""
    out = []
    for pts in zip(*rows, strict=True):
        m: dict[str, Any] = {key: pts[0][key]}
        for k in KEYS:
            vals = [p[k] for p in pts if p[k] is not None]
            m[k] = statistics.mean(vals) if vals else None
        m["f1_strict_range"] = [min(p["f1_strict"] for p in pts),
                                max(p["f1_strict"] for p in pts)]
        out.append(m)
    return out


def table(name: str, key: str, rows: list[dict[str, Any]], offline: float) -> str:
    lines = [f"| {name} | f1_strict (min..max) | x offline | f1_miga | mAP | AEDT median |"
             " AEDT p95 | emitted |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["f1_strict_range"]
        med = "-" if r["aedt_median_s"] is None else f"{r['aedt_median_s']:.2f} s"
        p95 = "-" if r["aedt_p95_s"] is None else f"{r['aedt_p95_s']:.2f} s"
        lines.append(f"| {r[key]} | {r['f1_strict']:.3f} ({lo:.3f}..{hi:.3f}) | "
                     f"{r['f1_strict'] / offline:.2f} | {r['f1_miga']:.3f} | {r['map']:.3f} | "
                     f"{med} | {p95} | {r['emitted']:.0f} |")
    return "\n".join(lines)


def plot(curves: dict[str, list[dict[str, Any]]], offline: float, path: Path) -> None:
    from detect.apps.plots import plot_online_curve

    plot_online_curve({n: [(r["aedt_median_s"], r["f1_strict"]) for r in rows]
                       for n, rows in curves.items()}, path,
                      levels={"offline pyramid": offline, "0.85 x offline": 0.85 * offline},
                      target_delay_s=1.5)


def cost_only(args: argparse.Namespace) -> None:
    """Stage two's cost per step again, on the finished runs, into the existing results."""
    torch.set_num_threads(args.threads)
    runs = [args.work / f"pyramid-online{s}" for s in args.seeds.split(",")]
    cost = [{k: statistics.mean(step_cost(r, every)[k] for r in runs)
             for k in ("every", "mean_ms_per_step", "decision_median_ms", "decision_p95_ms",
                       "model_ms")} for every in (1, 2)]
    data = json.loads(args.out.read_text())
    data["step_cost"] = cost
    data["step_cost_note"] = f"measured alone with --cost-only, {args.threads} thread(s)"
    args.out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    for c in cost:
        print(f"a decision every {c['every']:g} step(s): {c['mean_ms_per_step']:.2f} ms per step, "
              f"{c['decision_median_ms']:.2f} ms per decision (p95 {c['decision_p95_ms']:.2f}; "
              f"model and decoding {c['model_ms']:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="bench.accuracy's work folder")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "online-cpu.json")
    ap.add_argument("--cost-only", action="store_true",
                    help="with --work: measure only stage two's cost on the finished causal runs "
                         "(run it alone: timings) and update --out's step_cost")
    args = ap.parse_args()
    if args.cost_only:
        return cost_only(args)
    # bench.accuracy's settings for its "features" generator (its sets and runs are reused).
    acc = argparse.Namespace(generator="features", amplitude=AMPLITUDE["features"], stride=4,
                             videos=args.videos, distractors=0.5, minutes="2,5", overrides=[])
    torch.set_num_threads(args.threads)
    per_seed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for seed in map(int, args.seeds.split(",")):
            features, ann = make_set(acc, seed, work / f"set{seed}")
            off = work / f"pyramid{seed}"
            on = work / f"pyramid-online{seed}"
            row = {"seed": seed, "offline": run_model("pyramid", acc, features, ann, off),
                   "online_run": run_model("pyramid-online", acc, features, ann, on)}
            row["causal"] = causal_curve(on, HORIZONS_S)
            row["causal-every2"] = causal_curve(on, HORIZONS_S, every=2)
            row["causal-offline"] = causal_curve(off, HORIZONS_S)
            row["window-final"] = window_final_curve(off, HOPS)
            row["step_cost"] = [step_cost(on, every) for every in (1, 2)]
            per_seed.append(row)
            print(f"seed {seed}: offline f1_strict {row['offline']['f1_strict']:.3f}; causal "
                  + ", ".join(f"D {r['horizon_s']} s: {r['f1_strict']:.3f} @ "
                              f"{r['aedt_median_s']} s" for r in row["causal"]), flush=True)
    offline = statistics.mean(r["offline"]["f1_strict"] for r in per_seed)
    curves = {"causal": mean_rows([r["causal"] for r in per_seed], "horizon_s"),
              "causal-every2": mean_rows([r["causal-every2"] for r in per_seed], "horizon_s"),
              "causal-offline": mean_rows([r["causal-offline"] for r in per_seed], "horizon_s"),
              "window-final": mean_rows([r["window-final"] for r in per_seed], "hop")}
    cost = [{k: statistics.mean(r["step_cost"][i][k] for r in per_seed)
             for k in ("every", "mean_ms_per_step", "decision_median_ms", "decision_p95_ms",
                       "model_ms")} for i in range(2)]
    title = (f"SMG profile (features generator, amplitude {acc.amplitude}, {args.videos} videos), "
             f"seeds {args.seeds}, test split; thresholds chosen on val; offline pyramid "
             f"f1_strict {offline:.3f} (0.85x = {0.85 * offline:.3f}); stage two, batch 1, "
             f"{args.threads} thread: " + "; ".join(
                 f"a decision every {c['every']:g} step(s): {c['mean_ms_per_step']:.2f} ms per "
                 f"step, {c['decision_median_ms']:.2f} ms per decision (p95 "
                 f"{c['decision_p95_ms']:.2f})" for c in cost))
    text = "\n\n".join([
        table("causal: D (s)", "horizon_s", curves["causal"], offline),
        table("causal every 2 steps: D (s)", "horizon_s", curves["causal-every2"], offline),
        table("causal-offline: D (s)", "horizon_s", curves["causal-offline"], offline),
        table("window-final: hop (steps)", "hop", curves["window-final"], offline)])
    print(f"\n{title}\n\n{text}")
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args) | {"work": str(args.work), "out": str(out)},
                               "offline_f1_strict": offline, "curves": curves,
                               "step_cost": cost, "per_seed": per_seed,
                               "versions": versions()}, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(f"{title}\n\n{text}\n")
    plot(curves, offline, out.with_suffix(".png"))
    print(f"written: {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
