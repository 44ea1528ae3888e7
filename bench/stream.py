"""Streaming figures: real-time factor, latency, stage-two cost per hop, and how close streamed
detections come to offline `predict` on the same video. Prints figures; asserts nothing.

Uses the demo's run and videos (`make demo` first: crop 112, configs/demo.toml, the small
detector, W = 64 steps): the first test video is streamed (as fast as it decodes, and with
--realtime also paced at its own speed) at hop W/4 and hop W, and predicted offline.

    python -m bench.stream [--run runs/demo] [--data data/synthetic] [--video V] [--realtime]
                           [--threads 2] [--json bench/results/stream-cpu.json]
                           [--causal-run RUN]

--causal-run also streams the video with a run trained for the causal mode (issue 32) and records
its emission times, latency (video time received minus the gesture's end) and real-time factor.

Real-time factor = wall seconds / video seconds (below 1: faster than the video plays).
Latency: source_time - end (video time received when a detection was emitted, after its end),
and with --realtime the wall-clock delay emitted_at - end a viewer sees.
F1 between streamed and offline: offline's detections as ground truth, one-to-one, same class,
tIoU >= 0.5 (metrics.f1_strict), at the run's score threshold; offline over the stream's windows
(`predict --eval-overlap 1-hop/W`), and also over the run's own `data.eval_overlap`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from detect.apps.predict import predict_videos
from detect.apps.stream import StreamOptions, stream
from detect.data.annotations import Annotations, VideoAnnotations
from detect.evaluation.metrics import f1_strict
from detect.inference.detections import Detections
from detect.runs import read_run
from extract.pipeline import video_id_from_path

REPO = Path(__file__).resolve().parents[1]


def as_detections(lines: list[dict]) -> Detections:
    if not lines:
        return Detections.empty()
    return Detections(np.array([d["start"] for d in lines]), np.array([d["end"] for d in lines]),
                      np.array([d["label"] for d in lines]), np.array([d["score"] for d in lines]))


def f1_between(streamed: Detections, offline: Detections, classes: list[str]) -> float:
    ann = Annotations(classes=classes, videos={"v": VideoAnnotations(
        "test", float(max(offline.end.max(initial=0), streamed.end.max(initial=0)) + 1), 10.0,
        offline.segments, offline.label)})
    if not len(offline) and not len(streamed):
        return 1.0
    return f1_strict({"v": streamed}, ann, "test", match_iou=0.5)["f1"]


def causal_row(args: argparse.Namespace, video: Path, tmp: Path, classes: list[str]) -> dict:
    """The causal run streamed (its own mode), against its offline replay (`predict` of a causal
    run): emission times, latency in video time, real-time factor, stage two per decision."""
    out = tmp / "causal.jsonl"
    r = stream(str(video), args.causal_run, out, StreamOptions(chunk_frames=args.chunk_frames),
               progress=False, echo=False)
    rec = json.loads(out.with_suffix(".json").read_text())
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    preds, classes = predict_videos([video], args.causal_run, tmp / "pred-causal", progress=False,
                                    id_fn=video_id_from_path)
    f1 = f1_between(as_detections(lines), next(iter(preds.values())), classes)
    src = rec["source_latency_s"] or {}
    s2 = rec["stage_two_s_per_window"] or {}
    row = {"run": str(args.causal_run), "mode": rec["mode"], "every": rec["every"],
           "horizon_s": rec["horizon_s"], "exit_code": r.exit_code,
           "real_time_factor": rec["real_time_factor"], "wall_s": rec["wall_seconds"],
           "video_s": rec["video_seconds"], "detections": len(lines),
           "f1_vs_causal_replay": f1, "source_latency_s": src,
           "stage_two_ms_per_decision": {k: v * 1e3 for k, v in s2.items()},
           "emissions": rec["emissions"]}
    print(f"{'causal':>14}: RTF {row['real_time_factor']:.3f}, {len(lines)} detections, F1 vs "
          f"its causal replay {f1:.3f}; latency (video time) median "
          f"{src.get('median', float('nan')):.1f} s p95 {src.get('p95', float('nan')):.1f} s; "
          f"stage two {s2.get('median', float('nan')) * 1e3:.1f} ms per decision", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "demo")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "synthetic")
    ap.add_argument("--video", type=Path, default=None, help="default: the first test video")
    ap.add_argument("--realtime", action="store_true", help="also a paced run (video length)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk-frames", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--causal-run", type=Path, default=None,
                    help="also stream with a run trained for the causal mode (online.causal)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.run / "run.json").is_file():
        sys.exit(f"{args.run}: no run here; `make demo` makes runs/demo and data/synthetic")
    cfg, _ = read_run(args.run)
    W = cfg.data.window
    video = args.video
    if video is None:
        ann = json.loads((args.data / "annotations.json").read_text())
        test = sorted(v for v, a in ann["database"].items() if a["subset"] == "test")
        video = args.data / test[0] / f"{test[0]}_color.mp4"
    results: dict = {"run": str(args.run), "video": str(video), "window": W,
                     "threads": args.threads, "chunk_frames": args.chunk_frames}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        offline: dict[float, Detections] = {}

        def offline_at(overlap: float) -> Detections:
            nonlocal classes
            if overlap not in offline:
                t0 = time.perf_counter()
                preds, classes = predict_videos([video], args.run, tmp / f"pred-{overlap}",
                                                progress=False, id_fn=video_id_from_path,
                                                eval_overlap=overlap)
                offline[overlap] = next(iter(preds.values()))
                secs = time.perf_counter() - t0
                print(f"video {video.name}, window {W} steps ({W * 0.4:.1f} s); offline predict "
                      f"at eval_overlap {overlap:.2f}: {secs:.1f} s, {len(offline[overlap])} "
                      "detections")
                results["offline"][f"{overlap:.4f}"] = {"seconds": secs,
                                                        "detections": len(offline[overlap])}
            return offline[overlap]

        classes: list[str] = []
        results["offline"] = {}
        run_overlap = cfg.data.eval_overlap
        offline_at(run_overlap)
        runs = [("hop W/4", W // 4, False), ("hop W", W, False)]
        if args.realtime:
            runs.append(("hop W/4 paced", W // 4, True))
        for name, hop, realtime in runs:
            out = tmp / f"{hop}-{realtime}.jsonl"
            opts = StreamOptions(hop=hop, realtime=realtime, chunk_frames=args.chunk_frames)
            r = stream(str(video), args.run, out, opts, progress=False, echo=False)
            rec = json.loads(out.with_suffix(".json").read_text())
            lines = [json.loads(x) for x in out.read_text().splitlines()]
            # The same windows offline (eval_overlap = 1 - hop/W), and the run's own windows.
            same = offline_at(1 - hop / W)
            f1 = f1_between(as_detections(lines), same, classes)
            f1_run = f1_between(as_detections(lines), offline_at(run_overlap), classes)
            s2 = rec["stage_two_s_per_window"] or {}
            src = rec["source_latency_s"] or {}
            wall = rec["latency_s"] or {}
            row = {"hop": hop, "realtime": realtime, "exit_code": r.exit_code,
                   "real_time_factor": rec["real_time_factor"], "wall_s": rec["wall_seconds"],
                   "video_s": rec["video_seconds"], "detections": len(lines),
                   "f1_vs_offline": f1, "f1_vs_offline_run_windows": f1_run,
                   "run_eval_overlap": run_overlap, "source_latency_s": src, "wall_latency_s": wall,
                   "stage_two_ms_per_window": {k: v * 1e3 for k, v in s2.items()}}
            results[name] = row
            print(f"{name:>14}: RTF {row['real_time_factor']:.3f} ({row['wall_s']:.1f} s for "
                  f"{row['video_s']:.0f} s of video), {len(lines)} detections, F1 vs offline "
                  f"{f1:.3f} (same windows; {f1_run:.3f} vs the run's eval_overlap "
                  f"{run_overlap:.2f}); latency (video time) median "
                  f"{src.get('median', float('nan')):.1f} s"
                  f" p95 {src.get('p95', float('nan')):.1f} s"
                  + (f"; wall median {wall['median']:.1f} s p95 {wall['p95']:.1f} s"
                     if realtime and wall else "")
                  + f"; stage two {s2.get('median', float('nan')) * 1e3:.1f} ms per window "
                    f"(one per hop)", flush=True)
        if args.causal_run is not None:
            results["causal"] = causal_row(args, video, tmp, classes)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
