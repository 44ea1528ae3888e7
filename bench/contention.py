"""How much slower is mgdet when other processes share the CPU? Prints figures (issue 29).

For `detect train` (configs/synthetic-small.toml on a 10-video SMG-like set), `extract features`
(random I3D weights, 112 px, CPU) and `classify train` (configs/classify/skeleton-small.toml on a
rendered iMiGUE), it measures the time per epoch (or per video) alone, then with one and with two
competing copies of the same command running, at 1 and 2 threads (OMP_NUM_THREADS, which every
version of the code obeys) and with the code's own policy (nothing set). `--tree` runs another
checkout's code (e.g. a `git worktree` of an older commit) on the same data, for before/after
tables. Writes JSON to bench/results/contention-<label>.json.

    python -m bench.contention [--jobs detect,extract,classify] [--competitors 0,1,2]
                               [--threads auto,1,2] [--tree PATH] [--label NAME]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(tree: Path, threads: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(tree)
    if threads != "auto":
        env["OMP_NUM_THREADS"] = threads
    return env


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _generate(dest: Path, tree: Path, *args: str) -> None:
    """Make a job's data with `python -m ARGS` unless `dest` holds it already."""
    if not dest.exists():
        subprocess.run(_py(*args), cwd=tree, env=_env(tree, "auto"), check=True,
                       capture_output=True)


class Job:
    """One benchmarked command: `measured(out)` runs once and returns seconds per unit;
    `competitor(out)` is the same work, long enough to outlast the measured run."""

    name = ""
    unit = ""

    def prepare(self, data: Path, tree: Path) -> None: ...

    def command(self, out: Path, long: bool) -> list[str]: ...

    def per_unit(self, out: Path, wall: float) -> float: ...


class DetectTrain(Job):
    name, unit = "detect train", "epoch"

    def prepare(self, data: Path, tree: Path) -> None:
        self.data = data / "detect"
        _generate(self.data / "annotations.json", tree, "detect", "synth", "--out",
                  str(self.data), "--videos", "10", "--profile", "smg", "--amplitude", "0.75")
        self.features = next((self.data / "features").iterdir())

    def command(self, out: Path, long: bool) -> list[str]:
        return _py("detect", "train", "--config", str(ROOT / "configs/synthetic-small.toml"),
                   "--features", str(self.features), "--annotations",
                   str(self.data / "annotations.json"), "--out", str(out),
                   "--set", f"train.epochs={1000 if long else 4}")

    def per_unit(self, out: Path, wall: float) -> float:
        rows = list(csv.DictReader(open(out / "metrics.csv")))
        return statistics.median(float(r["seconds"]) for r in rows[1:])  # past the first


class Extract(Job):
    name, unit = "extract features", "video"
    videos = 3

    def prepare(self, data: Path, tree: Path) -> None:
        self.data = data / "videos"
        _generate(self.data, tree, "detect", "synth-videos", "--out", str(self.data),
                  "--videos", str(self.videos), "--minutes", "0.3")

    def command(self, out: Path, long: bool) -> list[str]:
        args = ["extract", "features", str(self.data), "--out", str(out), "--weights", "random",
                "--short-side", "112", "--crop", "112", "--device", "cpu", "--no-progress"]
        if long:  # extraction skips finished videos: loop with a fresh folder each time
            loop = f"while true; do rm -rf {out}; {' '.join(_py(*args))}; done"
            return ["bash", "-c", loop]
        return _py(*args)

    def per_unit(self, out: Path, wall: float) -> float:
        return wall / self.videos


class ClassifyTrain(Job):
    name, unit = "classify train", "epoch"
    epochs = 5

    def prepare(self, data: Path, tree: Path) -> None:
        self.data = data / "imigue"
        _generate(self.data, tree, "classify", "render", str(self.data), "--videos", "8",
                  "--minutes", "0.5")

    def command(self, out: Path, long: bool) -> list[str]:
        return _py("classify", "train", "--data", str(self.data), "--out", str(out),
                   "--config", str(ROOT / "configs/classify/skeleton-small.toml"),
                   "--cache", str(out.parent / f"{out.name}-cache"),
                   "--set", f"train.epochs={1000 if long else self.epochs}")

    def per_unit(self, out: Path, wall: float) -> float:
        return wall / self.epochs


JOBS = {"detect": DetectTrain, "extract": Extract, "classify": ClassifyTrain}


def measure(job: Job, tree: Path, tmp: Path, threads: str, competitors: int) -> float:
    """Seconds per unit of one measured run with `competitors` copies running beside it."""
    env = _env(tree, threads)
    procs = [subprocess.Popen(job.command(tmp / f"comp{i}", long=True), cwd=tree, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
             for i in range(competitors)]
    try:
        if procs:
            time.sleep(8)  # past their start-up, into the steady work
        out = tmp / f"m-{threads}-{competitors}"
        t0 = time.monotonic()
        subprocess.run(job.command(out, long=False), cwd=tree, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800)
        return job.per_unit(out, time.monotonic() - t0)
    finally:
        for p in procs:
            os.killpg(p.pid, 9)
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="detect,extract,classify")
    ap.add_argument("--competitors", default="0,1,2")
    ap.add_argument("--threads", default="auto,1,2", help="auto: the code's own policy")
    ap.add_argument("--tree", type=Path, default=ROOT, help="checkout whose code runs")
    ap.add_argument("--label", default="cpu")
    ap.add_argument("--data", type=Path, default=None, help="reuse generated data here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as t:
        data = args.data or Path(t) / "data"
        for key in args.jobs.split(","):
            job = JOBS[key]()
            job.prepare(data, args.tree)
            for threads in args.threads.split(","):
                for c in map(int, args.competitors.split(",")):
                    with tempfile.TemporaryDirectory(dir=t) as tmp:
                        s = measure(job, args.tree, Path(tmp), threads, c)
                    alone = next((r["seconds"] for r in rows if r["job"] == job.name
                                  and r["threads"] == threads and r["competitors"] == 0), s)
                    rows.append({"job": job.name, "unit": job.unit, "threads": threads,
                                 "competitors": c, "seconds": round(s, 3),
                                 "vs_alone": round(s / alone, 2)})
                    print(f"{job.name:17s} threads {threads:4s} competitors {c}: "
                          f"{s:7.2f} s/{job.unit}  ({s / alone:.2f}x alone)", flush=True)
    out = ROOT / "bench" / "results" / f"contention-{args.label}.json"
    out.write_text(json.dumps({"tree": str(args.tree), "cores": len(os.sched_getaffinity(0)),
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
