"""Does the detector beat the baselines on SMG-like timelines? Prints figures (issue 10).

For each generator seed: a `synth --profile smg` feature set (40 videos of 2-5 min, amplitude
0.75, where the per-step linear probe scores f1_strict 0.35-0.4), the probe and dense-head
baselines (detect.experiments.baselines), and the detector trained with the default small CPU config
(configs/synthetic-small.toml) and evaluated on `test`. Prints per-seed and mean f1_miga /
f1_strict / mAP, the detector's training minutes, and the ratios against the probe that issue
10 asks for (f1_strict >= 1.5x, mAP >= 2x, <= 10 CPU minutes of training), and writes them to
bench/results/accuracy-<device>.json.

    python -m bench.accuracy [--seeds 0,1,2] [--amplitude 0.75] [--config PATH] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from detect.config import load_config
from detect.evaluation.evaluate import evaluate_run
from detect.experiments.baselines import BaselineConfig, run_baseline
from detect.synthetic.features import synth_feature_set
from detect.train.loop import train
from extract.config import config_to_dict
from extract.io import read_metrics_rows
from extract.provenance import versions

ROOT = Path(__file__).resolve().parents[1]

METRICS = ("f1_miga", "f1_strict", "map")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--amplitude", type=float, default=0.75)
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "synthetic-small.toml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/accuracy-cpu.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in map(int, args.seeds.split(",")):
            fs, ann = synth_feature_set(tmp / f"set{seed}", videos=args.videos, profile="smg",
                                        seed=seed, amplitude=args.amplitude)
            row: dict = {"seed": seed}
            for kind in ("probe", "dense"):
                m = run_baseline(BaselineConfig(kind=kind), fs.path, ann, tmp / f"{kind}{seed}",
                                 progress=False)
                row[kind] = {k: m[k] for k in METRICS} | {"fit_seconds": m["fit_seconds"]}
            run = tmp / f"run{seed}"
            t0 = time.perf_counter()
            train(cfg, fs.path, ann, run, progress=False)
            wall = time.perf_counter() - t0
            m = evaluate_run(run, "test", progress=False)
            epochs = sum(float(r["seconds"]) for r in read_metrics_rows(run))
            row["detector"] = {k: m[k] for k in METRICS} | {
                "params": m["params"], "train_minutes": wall / 60, "epoch_minutes": epochs / 60}
            rows.append(row)
            print(f"seed {seed}: " + "  ".join(
                f"{who} f1_strict {row[who]['f1_strict']:.3f} map {row[who]['map']:.3f}"
                for who in ("probe", "dense", "detector"))
                + f"  (detector trained in {wall / 60:.1f} min)", flush=True)
    mean = {who: {k: statistics.mean(r[who][k] for r in rows) for k in METRICS}
            for who in ("probe", "dense", "detector")}
    minutes = statistics.mean(r["detector"]["train_minutes"] for r in rows)
    ratio = {k: mean["detector"][k] / max(mean["probe"][k], 1e-12) for k in METRICS}
    print()
    print(f"{'mean of ' + str(len(rows)):>14} {'f1_miga':>8} {'f1_strict':>9} {'mAP':>7}")
    for who in ("probe", "dense", "detector"):
        print(f"{who:>14} " + " ".join(f"{mean[who][k]:>{w}.3f}" for k, w in
                                       zip(METRICS, (8, 9, 7), strict=True)))
    print(f"detector / probe: f1_strict {ratio['f1_strict']:.2f}x (target 1.5x), mAP "
          f"{ratio['map']:.2f}x (target 2x); training {minutes:.1f} min per seed on "
          f"{torch.get_num_threads()} threads (target <= 10)")
    out = args.out or ROOT / "bench" / "results" / "accuracy-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "settings": {"seeds": args.seeds, "amplitude": args.amplitude, "videos": args.videos,
                     "config": str(args.config), "overrides": args.overrides,
                     "threads": torch.get_num_threads()},
        "config": config_to_dict(cfg), "rows": rows, "mean": mean, "ratio_vs_probe": ratio,
        "train_minutes_mean": minutes, "versions": versions()}, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
