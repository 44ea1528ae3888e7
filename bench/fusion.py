"""RGB, pose and both fused, on rendered SMG-layout videos (issue 33). Prints one table.

Per seed: `detect synth-videos` renders the videos (SampleXXXX_color.mp4 with the figure's
Kinect skeleton, SampleXXXX_skeleton.csv), stage one writes the RGB features (Inception-I3D with
DeepMind's Kinetics-400 weights by default, short side and crop 112 as `make demo`) and
`extract pose --dataset smg` the pose features of the same videos; then four detectors with the
demo's config (configs/demo.toml), thresholds and best epochs chosen on val, scored on test:

    rgb      the RGB feature set
    pose     the pose feature set
    concat   both, `model.fusion = "concat"`
    gated    both, `model.fusion = "gated"` (a gated residual from pose into RGB)
    pose+gated-rgb  the gated residual the other way: from RGB into pose (`--features POSE
             --features RGB`: the first stream is the base)
    +moddrop the fusions trained with ModDrop (`model.stream_dropout = 0.3`)
    closed   the gate nearly shut at the start (`model.gate_init = "closed"`)

Columns: f1_strict, f1_miga, mAP, recall per ground-truth duration bin; the mean over seeds with
the f1_strict spread. Target: fused >= the best single stream.

    python -m bench.fusion [--seeds 0,1,2] [--videos 12] [--minutes 2] [--model inception_i3d]
        [--weights kinetics] [--threads 2] [--work DIR] [--out bench/results/fusion-cpu.json]
        [--skeleton-noise 0.05 --skeleton-drop 0.2] [--runs rgb,pose,...]

The renderer's skeletons are exact (the figure is drawn from them), so pose alone is near its
ceiling there. `--skeleton-noise S --skeleton-drop P` degrades them the way a Kinect's are before
the pose stream is extracted: every tracked image joint jittered by N(0, S x the shoulder width)
per frame, and each arm (elbow, wrist, hand, hand tip, thumb) untracked in runs of frames (mean
1/3 s) covering a share P of the time; the RGB stream is unchanged.

--work keeps the videos, feature sets and runs (a killed benchmark resumes there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detect.config import load_config
from detect.evaluation.evaluate import evaluate_run
from detect.evaluation.metrics import DURATION_BINS, duration_labels
from detect.synthetic.videos import render_dataset
from detect.train.loop import train
from extract.config import ExtractConfig
from extract.io import read_json, read_metrics_rows
from extract.pipeline import run_extraction, video_id_from_path
from extract.pose.joints import KINECT_V2
from extract.pose.kinect import IMAGE_XY, VALUES_PER_JOINT
from extract.pose.run import KinectSource, run_pose_extraction
from extract.provenance import versions

ROOT = Path(__file__).resolve().parents[1]
RUNS: dict[str, tuple[tuple[str, ...], list[str]]] = {  # name -> (streams, overrides)
    "rgb": (("rgb",), []),
    "pose": (("pose",), []),
    "concat": (("rgb", "pose"), ['model.fusion="concat"']),
    "gated": (("rgb", "pose"), ['model.fusion="gated"']),
    # ModDrop: each training window drops one stream with p 0.3 (p chosen before any run)
    "concat+moddrop": (("rgb", "pose"), ['model.fusion="concat"', "model.stream_dropout=0.3"]),
    "gated+moddrop": (("rgb", "pose"), ['model.fusion="gated"', "model.stream_dropout=0.3"]),
    # The gated residual the other way round: RGB into pose (the first stream is the base).
    "pose+gated-rgb": (("pose", "rgb"), ['model.fusion="gated"']),
    "pose+gated-rgb+moddrop": (("pose", "rgb"),
                               ['model.fusion="gated"', "model.stream_dropout=0.3"]),
    # ... with the gate nearly shut at the start (model.gate_init = "closed")
    "pose+gated-rgb closed": (("pose", "rgb"), ['model.fusion="gated"',
                                                'model.gate_init="closed"']),
}
KEYS = ("f1_strict", "f1_miga", "map")
ARMS = (("ElbowL", "WristL", "HandL", "HandTipL", "ThumbL"),
        ("ElbowR", "WristR", "HandR", "HandTipR", "ThumbR"))
DROP_RUN_FRAMES = 10.0  # mean frames of an arm's tracking loss (1/3 s at 30 fps)


def degrade_skeletons(data: Path, out: Path, noise: float, drop: float, seed: int) -> Path:
    """A copy of `data`'s SMG skeletons (and `_data.csv` files) under `out`, degraded as the
    module doc says; returns `out`."""
    rng = np.random.default_rng([seed, 33])
    for csv in sorted(data.glob("*/*_skeleton.csv")):
        dst = out / csv.parent.name / csv.name
        if dst.is_file():
            continue
        rows = np.loadtxt(csv, delimiter=",", ndmin=2)
        table = rows.reshape(len(rows), len(KINECT_V2), VALUES_PER_JOINT)
        xy = table[:, :, IMAGE_XY]
        sl, sr = KINECT_V2.index("ShoulderL"), KINECT_V2.index("ShoulderR")
        width = float(np.median(np.linalg.norm(xy[:, sl] - xy[:, sr], axis=1)))
        table[:, :, IMAGE_XY] = xy + rng.normal(0, noise * width, xy.shape)
        # Two-state runs per arm: lost with probability `drop` on average, runs of mean length.
        leave = 1 / DROP_RUN_FRAMES
        enter = leave * drop / max(1 - drop, 1e-9)
        for arm in ARMS:
            lost, state = np.zeros(len(table), bool), rng.random() < drop
            for t, u in enumerate(rng.random(len(table))):
                state = (u >= leave) if state else (u < enter)
                lost[t] = state
            table[np.ix_(lost, [KINECT_V2.index(j) for j in arm])] = 0.0
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(csv.with_name(csv.name.replace("_skeleton", "_data")), dst.parent)
        np.savetxt(dst, table.reshape(len(table), -1), fmt="%.5f", delimiter=",")
    return out


def make_sets(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Path]:
    """Rendered videos, their RGB and pose feature sets (each reused when already made)."""
    data = work / f"data{seed}"
    t0 = time.perf_counter()
    render_dataset(data, videos=args.videos, minutes=args.minutes, seed=seed, progress=False)
    ecfg = ExtractConfig(model=args.model, weights=args.weights, short_side=112, crop=112,
                         threads=args.threads)
    rgb = run_extraction([data], work / "cache", ecfg, id_fn=video_id_from_path, progress=False)
    t1 = time.perf_counter()
    skeletons = data
    if args.skeleton_noise or args.skeleton_drop:
        skeletons = degrade_skeletons(data, work / f"skeletons{seed}{suffix(args)}",
                                      args.skeleton_noise, args.skeleton_drop, seed)
    # Their own cache: the pose set's key names the source (SMG files), not the files' contents.
    pose = run_pose_extraction(KinectSource(skeletons), work / f"cache{suffix(args)}",
                               progress=False)
    t2 = time.perf_counter()
    if rgb.failed or pose.failed:
        raise RuntimeError(f"extraction failed: {rgb.failed} {pose.failed}")
    print(f"seed {seed}: videos and RGB features {t1 - t0:.0f} s, pose features {t2 - t1:.1f} s",
          flush=True)
    return {"rgb": rgb.featureset, "pose": pose.featureset,
            "annotations": data / "annotations.json"}


def run_one(name: str, sets: dict[str, Path], run: Path, args: argparse.Namespace
            ) -> dict[str, Any]:
    streams, overrides = RUNS[name]
    if not (run / "metrics.json").is_file():
        if run.exists():  # a killed run: start it again
            for f in sorted(run.rglob("*"), reverse=True):
                f.unlink() if f.is_file() else f.rmdir()
        cfg = load_config(ROOT / "configs" / "demo.toml",
                          [*overrides, f"train.threads={args.threads}", *args.overrides])
        train(cfg, [sets[s] for s in streams], sets["annotations"], run, progress=False)
        evaluate_run(run, "test", progress=False)
    m = read_json(run / "metrics.json", "metrics", ValueError)
    val = max(float(r["val_f1_miga"]) for r in read_metrics_rows(run))
    return {k: m[k] for k in KEYS} | {"val_f1_miga": val,
        "recall_by_duration": {b: v["recall"] for b, v in m["recall_by_duration"].items()}}


def skeleton_note(args: argparse.Namespace) -> str:
    if not suffix(args):
        return " (exact)"
    return (f", degraded: joints jittered by {args.skeleton_noise:g} x the shoulder width, each "
            f"arm untracked {args.skeleton_drop:.0%} of the time")


def suffix(args: argparse.Namespace) -> str:
    """The run and skeleton folders' tag for degraded skeletons ("" for the exact ones)."""
    if not (args.skeleton_noise or args.skeleton_drop):
        return ""
    return f"-noise{args.skeleton_noise:g}-drop{args.skeleton_drop:g}"


def table(rows: list[dict[str, Any]], names: list[str]) -> tuple[str, dict[str, Any]]:
    bins = duration_labels(DURATION_BINS)
    head = ("| streams | f1_strict (min..max) | f1_miga | mAP | "
            + " | ".join(f"R {b}" for b in bins) + " | val f1_miga |")
    lines = [head, "|" + "---|" * (5 + len(bins))]
    mean: dict[str, Any] = {}
    for name in names:
        got = [r[name] for r in rows]
        m = {k: statistics.mean(g[k] for g in got) for k in (*KEYS, "val_f1_miga")}
        m["recall_by_duration"] = {b: statistics.mean(g["recall_by_duration"][b] for g in got)
                                   for b in bins}
        lo, hi = min(g["f1_strict"] for g in got), max(g["f1_strict"] for g in got)
        mean[name] = m
        lines.append(f"| {name} | {m['f1_strict']:.3f} ({lo:.3f}..{hi:.3f}) | "
                     f"{m['f1_miga']:.3f} | {m['map']:.3f} | "
                     + " | ".join(f"{m['recall_by_duration'][b]:.2f}" for b in bins)
                     + f" | {m['val_f1_miga']:.3f} |")
    return "\n".join(lines), mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--model", default="inception_i3d", choices=("inception_i3d", "i3d_r50"))
    ap.add_argument("--weights", default="kinetics")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="a config override for every run")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None,
                    help="default bench/results/fusion[-noise..-drop..]-cpu.json")
    ap.add_argument("--skeleton-noise", type=float, default=0.0,
                    help="jitter of the image joints, x the shoulder width (default 0: exact)")
    ap.add_argument("--skeleton-drop", type=float, default=0.0,
                    help="share of the time each arm is untracked (default 0)")
    ap.add_argument("--runs", default=",".join(RUNS), help="which of the runs, comma-separated")
    args = ap.parse_args()
    args.runs = args.runs.split(",")
    unknown = [r for r in args.runs if r not in RUNS]
    if unknown or not {"rgb", "pose"} <= set(args.runs):
        ap.error(f"--runs: unknown {unknown}; it needs rgb and pose (the single streams)")
    if not (0 <= args.skeleton_drop < 1 and args.skeleton_noise >= 0):
        ap.error("--skeleton-drop must be in [0, 1) and --skeleton-noise >= 0")
    args.out = args.out or ROOT / "bench" / "results" / f"fusion{suffix(args)}-cpu.json"
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for seed in map(int, args.seeds.split(",")):
            sets = make_sets(args, seed, work)
            row: dict[str, Any] = {"seed": seed}
            for name in args.runs:
                # RGB alone does not see the skeletons: its runs are shared
                tag = "" if RUNS[name][0] == ("rgb",) else suffix(args)
                row[name] = run_one(name, sets, work / f"{name}{seed}{tag}", args)
                print(f"seed {seed} {name:>14}: f1_strict {row[name]['f1_strict']:.3f}  "
                      f"mAP {row[name]['map']:.3f}", flush=True)
            rows.append(row)
    text, mean = table(rows, args.runs)
    best_single = max(mean["rgb"]["f1_strict"], mean["pose"]["f1_strict"])
    verdict = ", ".join(f"{n} {mean[n]['f1_strict'] - best_single:+.3f}"
                        for n in args.runs if n not in ("rgb", "pose"))
    title = (f"{args.videos} rendered SMG-layout videos of {args.minutes:g} min per seed, seeds "
             f"{args.seeds}; RGB: {args.model} ({args.weights}) crop 112; pose: the renderer's "
             f"Kinect skeletons{skeleton_note(args)}; configs/demo.toml; test split, thresholds "
             "and epochs chosen on "
             f"val. Fused minus the best single stream (f1_strict): {verdict}")
    print(f"\n{title}\n\n{text}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "rows": rows, "mean": mean,
                                    "versions": versions()}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(f"{title}\n\n{text}\n")
    print(f"written: {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
