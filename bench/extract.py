"""Benchmark stage one, per backbone (i3d_r50, inception_i3d or both, in one table): prints

- GFLOPs per frame: torch.utils.flop_counter.FlopCounterMode over one forward of a chunk's input
  (chunk + 2 x halo frames), divided by its frames; what it counts is convolutions and matmuls
  (2 FLOPs per multiply-add), not batch norms, activations, pools, padding or the spatial mean.
  Also per video frame of chunked extraction in full chunks (chunk + 2 x halo input frames per
  chunk frames) and the GFLOP/s that (b) achieves (the per-frame count times the input frames
  its chunks of this video hold);
- video-seconds per second of
  (a) the full extraction (decode thread + chunked I3D), on a generated video;
  (b) the I3D forward alone on the same pre-decoded frames, in the same chunks (compute floor);
  (c) a naive extractor that runs each feature's own clip centred on it, one forward per
      feature (2 x halo frames: 36 for i3d_r50, 80 for inception_i3d, the frames its reach
      spans; measured on a subset);
  and the one-pass forward (no chunks) for the chunk halo's overhead;
- the peak RSS of a subprocess extracting a short and a 10x longer video (must stay flat).

Weights are random by default (the cost does not depend on them); `--weights kinetics` uses the
real ones. The video is generated and decoded once for all backbones.

    python -m bench.extract                      # CPU default, crop 112, both backbones
    python -m bench.extract --model inception_i3d --json bench/results/extract-cpu.json
    python -m bench.extract --crop 224 --short-side 256 --seconds 120 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from extract.decode import DecodeSettings, FrameStream, decode_all
from extract.i3d import (
    MODELS,
    Backbone,
    ChunkedExtractor,
    RunOptions,
    build_backbone,
    default_chunk_frames,
)
from extract.runtime import resolve_device
from tests.videos import write_noise_video

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Speed:
    """The decoded speed-test video shared by every backbone."""

    path: Path
    frames: torch.Tensor  # (n, h, w, 3) uint8, 10 fps
    seconds: float
    settings: DecodeSettings


def full_extraction(path: Path, ex: ChunkedExtractor, settings: DecodeSettings) -> float:
    t = time.perf_counter()
    with FrameStream(path, settings) as stream:
        ex.run(stream)
    _sync(ex.device)
    return time.perf_counter() - t


def forward_only(frames: torch.Tensor, ex: ChunkedExtractor) -> float:
    t = time.perf_counter()
    ex.run([frames[i:i + 16] for i in range(0, frames.shape[0], 16)])
    _sync(ex.device)
    return time.perf_counter() - t


@torch.inference_mode()
def naive(frames: torch.Tensor, ex: ChunkedExtractor, count: int, clip: int) -> float:
    """Seconds per feature when each feature runs its own `clip`-frame clip centred on it."""
    n = frames.shape[0]
    stride = ex.stride
    t = time.perf_counter()
    for i in range(count):
        centre = i * stride + stride // 2
        s = max(0, min(n - clip, centre - clip // 2))
        s -= s % ex.step
        x = ex.backbone.normalize(frames[s:s + clip].to(ex.device))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=ex.cuda):
            ex.backbone(x.contiguous(memory_format=torch.channels_last_3d))
    _sync(ex.device)
    return (time.perf_counter() - t) / count


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_flops(backbone: Backbone, frames: int, height: int, width: int) -> int:
    """FLOPs (convolutions and matmuls, 2 per multiply-add) of one forward of `frames` frames,
    counted on a meta-device copy (shapes only, nothing is computed)."""
    meta = copy.deepcopy(backbone).to("meta")
    x = torch.empty(1, 3, frames, height, width, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(x.contiguous(memory_format=torch.channels_last_3d))
    return int(counter.get_total_flops())


def chunk_input_frames(n: int, chunk: int, halo: int, stride: int) -> int:
    """Input frames the chunked extractor runs over for an `n`-frame video (halos included), as
    `ChunkedExtractor._chunks` cuts them."""
    end = n // stride * stride
    return sum(min(n, c0 + chunk + halo) - max(0, c0 - halo) for c0 in range(0, end, chunk))


def peak_rss_mb(video: Path, model: str, args: argparse.Namespace, out: Path) -> float:
    """Peak RSS (MB) of a fresh process running the CLI on one video: its VmHWM on Linux. (Its
    ru_maxrss would not do: Linux carries the forking parent's peak, this benchmark's own
    frames and models, over into the child's.)"""
    code = (
        "import re, resource, sys\n"
        "from extract.__main__ import app\n"
        "try:\n    app(sys.argv[1:])\n"
        "except SystemExit:\n    pass\n"
        "try:\n"
        "    with open('/proc/self/status') as f:\n"
        "        print(int(re.search(r'VmHWM:\\s+(\\d+) kB', f.read()).group(1)) / 1024)\n"
        "except (OSError, AttributeError):\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    cmd = [sys.executable, "-c", code, "features", str(video), "--out", str(out),
           "--model", model, "--weights", args.weights, "--short-side",
           str(args.mem_short_side), "--crop", str(args.mem_short_side), "--device",
           args.device, "--threads", str(torch.get_num_threads()), "--no-progress"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def measure(model: str, speed: Speed, args: argparse.Namespace,
            device: torch.device) -> dict[str, float | int | str]:
    """Every figure of one backbone on the shared speed-test video (memory apart)."""
    bb, _ = build_backbone(args.weights, model=model)
    chunk = args.chunk_frames or default_chunk_frames(device)
    ex = ChunkedExtractor(bb, args.stride, device, RunOptions(chunk_frames=chunk, batch_chunks=4))
    frames, secs = speed.frames, speed.seconds
    n, h, w = frames.shape[:3]
    chunk_in = chunk + 2 * ex.halo
    flops = forward_flops(bb, chunk_in, h, w)
    clip = args.naive_clip or 2 * ex.halo
    forward_only(frames[:64], ex)  # warm-up
    tb = forward_only(frames, ex)
    ta = full_extraction(speed.path, ex, speed.settings)
    tc = naive(frames, ex, args.naive_features, clip) * (n // args.stride)
    # Halo overhead of chunking, for reference: the same frames in one pass.
    one = ChunkedExtractor(bb, args.stride, device, RunOptions(chunk_frames=n // 8 * 8 or 8))
    t1 = forward_only(frames, one)
    per_frame = flops / chunk_in
    ran = chunk_input_frames(n, chunk, ex.halo, args.stride)  # what (b) computed
    return {
        "model": model, "chunk_frames": chunk, "halo": ex.halo, "naive_clip_frames": clip,
        "gflops_per_frame": per_frame / 1e9,
        "gflops_per_video_frame_chunked": per_frame * chunk_in / chunk / 1e9,
        "forward_gflop_per_s": per_frame * ran / tb / 1e9,
        "full_video_s_per_s": secs / ta, "forward_video_s_per_s": secs / tb,
        "naive_video_s_per_s": secs / tc, "one_pass_video_s_per_s": secs / t1,
        "full_over_forward": tb / ta, "full_over_naive": tc / ta, "halo_overhead": tb / t1 - 1,
    }


def measure_memory(model: str, videos: list[Path], args: argparse.Namespace,
                   tmp: Path) -> dict[str, float | list[float]]:
    rss = [peak_rss_mb(v, model, args, tmp / f"out-{model}-{i}") for i, v in enumerate(videos)]
    return {"peak_rss_mb": rss, "peak_rss_ratio": rss[-1] / rss[0]}


ROWS: list[tuple[str, str, str]] = [  # (label, key, format)
    ("GFLOPs / frame (one forward)", "gflops_per_frame", "{:.2f}"),
    ("GFLOPs / video frame, full chunks", "gflops_per_video_frame_chunked", "{:.2f}"),
    ("(a) full extraction, video-s/s", "full_video_s_per_s", "{:.1f}"),
    ("(b) forward alone, video-s/s", "forward_video_s_per_s", "{:.1f}"),
    ("    a/b (target >= 0.85)", "full_over_forward", "{:.2f}"),
    ("    (b) achieved GFLOP/s", "forward_gflop_per_s", "{:.1f}"),
    ("(c) naive clip, video-s/s", "naive_video_s_per_s", "{:.2f}"),
    ("    naive clip frames", "naive_clip_frames", "{}"),
    ("    a/c (target >= 5)", "full_over_naive", "{:.1f}"),
    ("one-pass forward, video-s/s", "one_pass_video_s_per_s", "{:.1f}"),
    ("    chunk halo overhead", "halo_overhead", "{:+.0%}"),
]


def print_table(results: dict[str, dict], mem_seconds: list[float]) -> None:
    """One column per backbone, one row per figure."""
    names = list(results)
    rows = list(ROWS)
    shown = {n: dict(r) for n, r in results.items()}
    if all("peak_rss_mb" in r for r in results.values()):
        rows += [(f"peak RSS, {s:.0f} s video, MB", f"rss{i}", "{:.0f}")
                 for i, s in enumerate(mem_seconds)]
        rows.append(("    peak RSS ratio (flat: ~1)", "peak_rss_ratio", "{:.2f}"))
        for r in shown.values():
            r.update({f"rss{i}": v for i, v in enumerate(r["peak_rss_mb"])})
    print(f"{'':34}" + "".join(f"{n:>15}" for n in names))
    for label, key, fmt in rows:
        print(f"{label:34}" + "".join(f"{fmt.format(shown[n][key]):>15}" for n in names))


def pose_throughput(seconds: float, tmp: Path) -> dict[str, Any]:
    """Pose extraction speed on CPU, in source frames per second: SMG's Kinect CSV (a rendered
    sample's skeleton, 30 fps) and BlazePose on the rendered video (where mediapipe is
    installed, the `pose` extra)."""
    from detect.synthetic.videos import render_dataset
    from extract.pose import PoseError
    from extract.pose.run import KinectSource, VideoSource, run_pose_extraction

    root = tmp / "pose-src"
    render_dataset(root, videos=1, minutes=seconds / 60, progress=False)
    video = next(root.glob("*/*_color.mp4"))
    frames = round(seconds * 30.0)
    out: dict[str, Any] = {"seconds": seconds, "source_fps": 30.0}
    t = time.perf_counter()
    run_pose_extraction(KinectSource(root), tmp / "pose-cache", progress=False)
    out["kinect_csv_frames_per_s"] = frames / (time.perf_counter() - t)
    try:
        from extract.pose.mediapipe_pose import BlazePose

        estimator = BlazePose()
    except PoseError as e:
        out["blazepose_frames_per_s"] = None
        out["blazepose"] = str(e).splitlines()[0]
        return out
    t = time.perf_counter()
    run_pose_extraction(VideoSource([video], estimator), tmp / "pose-cache", progress=False)
    # BlazePose sees the 10 fps frames; the rate is per source frame, as the Kinect one.
    out["blazepose_frames_per_s"] = frames / (time.perf_counter() - t)
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", nargs="+", choices=MODELS, default=list(MODELS),
                    help="backbones, measured one after the other (default: both)")
    ap.add_argument("--weights", default="random", help="random (default) | kinetics | PATH")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the speed-test video")
    ap.add_argument("--source-fps", type=int, default=30)
    ap.add_argument("--size", default="320x240", help="source WxH")
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--crop", type=int, default=112)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--chunk-frames", type=int, default=0, help="0: 512 on CUDA, 256 on CPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--naive-features", type=int, default=12)
    ap.add_argument("--naive-clip", type=int, default=0,
                    help="frames per naive clip (0: 2 x the backbone's halo)")
    ap.add_argument("--mem-seconds", type=float, nargs=2, default=[60.0, 600.0])
    ap.add_argument("--mem-short-side", type=int, default=32)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--pose-seconds", type=float, default=60.0,
                    help="length of the pose-throughput sample (0: skip it)")
    ap.add_argument("--pose-only", action="store_true", help="only the pose figures")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    w, h = map(int, args.size.split("x"))
    settings = DecodeSettings(10.0, args.short_side, args.crop)
    print(f"device {device}, torch threads {torch.get_num_threads()}, weights {args.weights}, "
          f"crop {args.crop}, short side {args.short_side}, stride {args.stride}")

    results: dict[str, dict] = {}
    pose: dict[str, Any] | None = None
    if args.pose_seconds > 0:
        with tempfile.TemporaryDirectory() as tmp:
            pose = pose_throughput(args.pose_seconds, Path(tmp))
        shown = {k: (f"{v:.0f}" if isinstance(v, float) else v) for k, v in pose.items()}
        print(f"pose extraction (source frames/s): {shown}", flush=True)
    if args.pose_only:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "pose": pose},
                                            indent=2) + "\n")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        video = write_noise_video(tmp_path / "speed.mp4", args.seconds, fps=args.source_fps,
                                  width=w, height=h)
        frames, res = decode_all(video, settings)
        t_decode = time.perf_counter()
        decode_all(video, settings)
        t_decode = time.perf_counter() - t_decode
        speed = Speed(video, frames, res.duration, settings)
        print(f"video {speed.seconds:.0f} s {w}x{h} @ {args.source_fps} fps -> "
              f"{frames.shape[0]} frames; decode alone {speed.seconds / t_decode:.1f} video-s/s")
        mem_videos = [] if args.skip_memory else [
            write_noise_video(tmp_path / f"mem{int(s)}.mp4", s, fps=25, width=160, height=120)
            for s in args.mem_seconds]
        for model in args.model:
            t = time.perf_counter()
            results[model] = measure(model, speed, args, device)
            if mem_videos:
                results[model].update(measure_memory(model, mem_videos, args, tmp_path))
            print(f"  {model}: measured in {time.perf_counter() - t:.0f} s", flush=True)
    print_table(results, args.mem_seconds)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "weights": args.weights, "seconds": speed.seconds,
            "frames": int(frames.shape[0]), "size": args.size, "short_side": args.short_side,
            "crop": args.crop, "stride": args.stride, "naive_features": args.naive_features,
            "mem_seconds": None if args.skip_memory else args.mem_seconds,
            "mem_short_side": args.mem_short_side,
            "decode_video_s_per_s": speed.seconds / t_decode, "models": results,
            "pose": pose,
        }, indent=2) + "\n")
        print(f"figures in {args.json}")


if __name__ == "__main__":
    main()
