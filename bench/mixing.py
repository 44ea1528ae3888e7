"""Does the lean dynamic mixing keep the accuracy of PointTAD's full mixing? Prints figures.

Trains configs/synthetic-small.toml with `model.mixing = "full"` and `"lean"` on the harder
synthetic set of bench/train.py (30 videos, noise 1.0, 8 classes) for several generator seeds, and
prints test f1_miga / f1_strict / mAP, parameters and seconds per run. The lean variant uses the
paper config's reduction ratios scaled to this width (rank D/8, point dim 2D/16: 64 and 64 at
D=512), so it is at least as lossy here as at the paper config.

    python -m bench.mixing [--seeds 3,4] [--epochs 24] [--variants full,lean,lean-32-64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from detect.config import load_config
from detect.evaluation.evaluate import evaluate_run
from detect.model.build import build_model
from detect.model.detector import count_parameters
from detect.synthetic.features import synth_feature_set
from detect.train.loop import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "synthetic-small.toml"


def variant_overrides(name: str, hidden_dim: int) -> list[str]:
    """"full", "lean" (the paper's ratios: rank D/8, point dim 2D/16) or "lean-R-P"."""
    if name == "full":
        return ["model.mixing=\"full\""]
    if name == "lean":
        rank, point_dim = max(1, hidden_dim // 8), max(1, 2 * hidden_dim // 16)
    else:
        _, rank, point_dim = name.split("-")
    return ["model.mixing=\"lean\"", f"model.mix_rank={rank}", f"model.mix_point_dim={point_dim}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="3,4")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--variants", default="full,lean")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    D = load_config(CONFIG).model.hidden_dim
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in map(int, args.seeds.split(",")):
            fs, ann = synth_feature_set(tmp / f"set{seed}", videos=30, classes=8, seed=seed,
                                        noise=1.0, dim=64, min_duration_s=60,
                                        max_duration_s=150)
            for name in args.variants.split(","):
                cfg = load_config(CONFIG, [f"train.epochs={args.epochs}",
                                           *variant_overrides(name, D)])
                run = tmp / f"run-{name}-{seed}"
                t0 = time.perf_counter()
                train(cfg, fs.path, ann, run, progress=False)
                m = evaluate_run(run, "test", progress=False)
                params = count_parameters(build_model(cfg, 64, 8, 0))
                r = {"seed": seed, "f1_miga": m["f1_miga"], "f1_strict": m["f1_strict"],
                     "map": m["map"], "params": params, "seconds": time.perf_counter() - t0}
                rows.setdefault(name, []).append(r)
                print(f"{name:>5} seed {seed}: f1_miga {r['f1_miga']:.3f}  f1_strict "
                      f"{r['f1_strict']:.3f}  map {r['map']:.3f}  {params / 1e3:.0f} k params  "
                      f"{r['seconds']:.0f} s", flush=True)
    print()
    for name, rs in rows.items():
        mean = {k: statistics.mean(r[k] for r in rs) for k in ("f1_miga", "f1_strict", "map")}
        print(f"{name:>5} mean of {len(rs)}: f1_miga {mean['f1_miga']:.3f}  f1_strict "
              f"{mean['f1_strict']:.3f}  map {mean['map']:.3f}")


if __name__ == "__main__":
    main()
