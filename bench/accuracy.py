"""Which detector holds against the baselines, on which generator? Prints one table (issue 30).

For each generator seed: a synthetic SMG-like feature set, the two baselines
(detect.experiments.baselines: per-step linear probe, dense head alone) and the detectors, each
trained with its small CPU config, its threshold and best epoch chosen on `val`, scored on `test`:

    seed-full       configs/synthetic-small.toml (the seed method, PointTAD's full mixing)
    seed-lean       the same with the lean mixing at rank D/8 (mix_rank 8, mix_point_dim 8)
    pyramid         configs/synthetic-small-dense.toml (dense pyramid, conv encoder)
    pyramid-mamba   the same with the Mamba encoder

and, on request (`--models ...,oracle`, features generator at stride 4 only), the matched-filter
oracle (detect.synthetic.oracle): told the generator's signatures, gains and blur, it estimates
how much of the score the set allows at that amplitude.

Generators: "features" (detect.synthetic.features, profile smg; the one the configs were tuned
on) and "envelope" (detect.synthetic.envelopes: per-class temporal envelopes, class-specific
durations, correlated background), each at the amplitude where the probe scores f1_strict
0.35-0.4 unless --amplitude is given. `--stride 2` writes features at 0.2 s and doubles the
windows (and adds a pyramid level, at twice the regression ranges in steps), so every model sees
the same seconds.

Columns: f1_miga, f1_strict, mAP, recall per ground-truth duration bin (class match, tIoU > 0.3;
detections above the val-tuned threshold), parameters, seconds per epoch (training only; fit
seconds for the baselines). The summary is the mean over seeds with the spread (min..max) of
f1_strict, and the ratios to the probe. Written to --out (JSON) and next to it as .md.

    python -m bench.accuracy [--generator features|envelope] [--seeds 0,1,2] [--stride 4]
        [--models probe,dense,seed-full,seed-lean,pyramid,pyramid-mamba[,oracle]] [--videos 40]
        [--amplitude A] [--distractors 0.5] [--minutes 2,5] [--threads 2] [--work DIR]
        [--set k=v ...]

With --work DIR the feature sets and finished runs are kept there and reused, so a killed
benchmark resumes where it stopped; `--report-only` tabulates what is finished there (the seeds
column says which seeds each model's means cover).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from detect.config import Config, load_config
from detect.evaluation.evaluate import evaluate_run
from detect.evaluation.metrics import DURATION_BINS, duration_labels
from detect.experiments.baselines import BaselineConfig, run_baseline
from detect.synthetic.envelopes import synth_envelope_set
from detect.synthetic.features import synth_feature_set
from detect.synthetic.oracle import run_oracle
from detect.train.loop import train
from extract.config import config_to_dict
from extract.io import read_json, read_metrics_rows
from extract.provenance import versions

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("f1_miga", "f1_strict", "map")
# Baselines, and the matched-filter oracle that knows the generator (features generator only).
BASELINES = ("probe", "dense", "oracle")
MODELS: dict[str, tuple[str, list[str]]] = {
    "seed-full": ("synthetic-small.toml", []),
    "seed-lean": ("synthetic-small.toml",
                  ['model.mixing="lean"', "model.mix_rank=8", "model.mix_point_dim=8"]),
    "pyramid": ("synthetic-small-dense.toml", []),
    "pyramid-mamba": ("synthetic-small-dense.toml", ['model.pyramid.encoder="mamba"']),
    # The causal (strictly online) mode of the pyramid detector (bench/online.py).
    "pyramid-online": ("synthetic-small-online.toml", []),
}
# The amplitude at which the probe scores f1_strict 0.35-0.4 (mean of seeds 0-2, 40 videos).
AMPLITUDE = {"features": 0.75, "envelope": 4.25}


def make_set(args: argparse.Namespace, seed: int, out: Path) -> tuple[Path, Path]:
    """The seed's feature set (reused when already written): (features folder, annotations)."""
    ann = out / "annotations.json"
    if ann.is_file():
        return next((out / "features").iterdir()), ann
    lo, hi = (60 * float(m) for m in args.minutes.split(","))
    common = dict(videos=args.videos, seed=seed, amplitude=args.amplitude, stride=args.stride,
                  min_duration_s=lo, max_duration_s=hi, distractors=args.distractors)
    if args.generator == "envelope":
        fs, ann = synth_envelope_set(out, **common)
    else:
        fs, ann = synth_feature_set(out, profile="smg", **common)
    return fs.path, ann


def stride_overrides(stride: int) -> list[str]:
    """The same seconds per window and per pyramid level at another feature stride."""
    if stride == 4:
        return []
    f = 4 / stride
    return [f"data.stride={stride}", f"data.window={round(64 * f)}",
            f"model.pyramid.range_base={4.0 * f}"]


def model_config(name: str, args: argparse.Namespace) -> Config:
    path, extra = MODELS[name]
    over = [*extra, *stride_overrides(args.stride), *args.overrides]
    cfg = load_config(ROOT / "configs" / path, over)
    if args.stride != 4 and cfg.model.arch == "pyramid":
        cfg.model.pyramid.levels += 1
    return cfg


def summary(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in METRICS} | {
        "recall_by_duration": {b: v["recall"] for b, v in m["recall_by_duration"].items()}}


def run_model(name: str, args: argparse.Namespace, features: Path, ann: Path, run: Path
              ) -> dict[str, Any]:
    """Train (unless finished before) and score one detector; its row."""
    cfg = model_config(name, args)
    done = run / "metrics.json"
    t0 = time.perf_counter()
    if not done.is_file():
        if run.exists():  # a killed run: start it again
            for f in sorted(run.rglob("*"), reverse=True):
                f.unlink() if f.is_file() else f.rmdir()
        train(cfg, features, ann, run, progress=False)
        evaluate_run(run, "test", progress=False)
    m = read_json(done, "metrics", ValueError)
    epochs = [float(r["seconds"]) for r in read_metrics_rows(run)]
    return summary(m) | {"params": m["params"], "seconds_per_epoch": statistics.mean(epochs),
                         "train_minutes": sum(epochs) / 60,
                         "wall_minutes": (time.perf_counter() - t0) / 60,
                         "config": config_to_dict(cfg)}


def finished_row(name: str, run: Path) -> dict[str, Any] | None:
    """A finished run's row as `run_seed` gives it (None while it is not finished)."""
    if not (run / "metrics.json").is_file():
        return None
    m = read_json(run / "metrics.json", "metrics", ValueError)
    if name in BASELINES:
        return summary(m) | {"params": None, "seconds_per_epoch": m["fit_seconds"]}
    epochs = [float(r["seconds"]) for r in read_metrics_rows(run)]
    return summary(m) | {"params": m["params"], "seconds_per_epoch": statistics.mean(epochs),
                         "train_minutes": sum(epochs) / 60}


def finished_rows(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """--report-only: the rows of every run already finished in `work`, nothing trained."""
    rows = []
    for seed in map(int, args.seeds.split(",")):
        row: dict[str, Any] = {"seed": seed}
        for name in args.models:
            got = finished_row(name, work / f"{name}{seed}")
            if got is not None:
                row[name] = got
        rows.append(row)
    return rows


def run_seed(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    features, ann = make_set(args, seed, work / f"set{seed}")
    row: dict[str, Any] = {"seed": seed}
    for name in args.models:
        if name == "oracle":
            m = run_oracle(features, ann, work / f"{name}{seed}", progress=False)
            row[name] = summary(m) | {"params": None, "seconds_per_epoch": m["fit_seconds"]}
        elif name in BASELINES:
            m = run_baseline(BaselineConfig(kind=name), features, ann, work / f"{name}{seed}",
                             progress=False)
            row[name] = summary(m) | {"params": None, "seconds_per_epoch": m["fit_seconds"]}
        else:
            row[name] = run_model(name, args, features, ann, work / f"{name}{seed}")
        print(f"seed {seed} {name:>14}: f1_strict {row[name]['f1_strict']:.3f}  "
              f"mAP {row[name]['map']:.3f}", flush=True)
    return row


def table(rows: list[dict[str, Any]], models: list[str]) -> tuple[str, dict[str, Any]]:
    """Markdown table of the means over the seeds each model has, and the means themselves."""
    bins = duration_labels(DURATION_BINS)
    head = ["model", "seeds", "f1_miga", "f1_strict (min..max)", "mAP",
            *[f"R {b}" for b in bins], "params", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mean: dict[str, Any] = {}
    for name in models:
        rs = [r[name] for r in rows if name in r]
        if not rs:
            continue
        mean[name] = {k: statistics.mean(r[k] for r in rs)
                      for k in (*METRICS, "seconds_per_epoch")}
        mean[name]["recall_by_duration"] = {
            b: statistics.mean(r["recall_by_duration"][b] for r in rs) for b in bins}
        strict = [r["f1_strict"] for r in rs]
        params = rs[0]["params"]
        mean[name]["seeds"] = [r["seed"] for r in rows if name in r]
        lines.append("| " + " | ".join([
            name, ",".join(map(str, mean[name]["seeds"])), f"{mean[name]['f1_miga']:.3f}",
            f"{mean[name]['f1_strict']:.3f} ({min(strict):.3f}..{max(strict):.3f})",
            f"{mean[name]['map']:.3f}",
            *[f"{mean[name]['recall_by_duration'][b]:.2f}" for b in bins],
            "-" if params is None else f"{params / 1e3:.0f} k",
            f"{mean[name]['seconds_per_epoch']:.1f}"]) + " |")
    return "\n".join(lines), mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", choices=("features", "envelope"), default="features")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default="probe,dense,seed-full,seed-lean,pyramid,pyramid-mamba")
    ap.add_argument("--stride", type=int, default=4, choices=(2, 4))
    ap.add_argument("--amplitude", type=float, default=None)
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--distractors", type=float, default=0.5)
    ap.add_argument("--minutes", default="2,5", help="shortest,longest video")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a config override for every detector")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="keep sets and runs here (resume)")
    ap.add_argument("--report-only", action="store_true",
                    help="with --work: tabulate the runs finished there, train nothing")
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/accuracy-<generator>[-s<stride>]-cpu.json")
    args = ap.parse_args()
    args.models = args.models.split(",")
    unknown = set(args.models) - set(MODELS) - set(BASELINES)
    if unknown:
        ap.error(f"unknown models {sorted(unknown)}; known: {[*BASELINES, *MODELS]}")
    if "oracle" in args.models and (args.generator != "features" or args.stride != 4):
        ap.error("the oracle knows only the features generator at stride 4")
    if args.report_only and args.work is None:
        ap.error("--report-only tabulates the runs in --work: give --work")
    if args.amplitude is None:
        args.amplitude = AMPLITUDE[args.generator]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows = (finished_rows(args, work) if args.report_only else
                [run_seed(args, int(s), work) for s in args.seeds.split(",")])
    text, mean = table(rows, args.models)
    probe = mean.get("probe")
    ratios = {name: {k: mean[name][k] / max(probe[k], 1e-12) for k in METRICS}
              for name in mean} if probe else {}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["threads"] = torch.get_num_threads()
    title = (f"generator {args.generator}, amplitude {args.amplitude}, stride {args.stride}, "
             f"{args.videos} videos of {args.minutes} min, distractors {args.distractors}, "
             f"seeds {args.seeds}, {settings['threads']} thread(s); test split, configs and "
             "thresholds chosen on val")
    ratio_text = "\n".join(
        f"{n}: f1_strict {r['f1_strict']:.2f}x, mAP {r['map']:.2f}x the probe"
        for n, r in ratios.items() if n != "probe")
    print(f"\n{title}\n\n{text}\n\n{ratio_text}")
    tag = args.generator + ("" if args.stride == 4 else f"-s{args.stride}")
    out = args.out or ROOT / "bench" / "results" / f"accuracy-{tag}-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "rows": rows, "mean": mean,
                               "ratio_vs_probe": ratios, "versions": versions()}, indent=2)
                   + "\n")
    out.with_suffix(".md").write_text(f"{title}\n\n{text}\n\n{ratio_text}\n")
    print(f"written: {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
