"""Benchmark stage one: prints video-seconds per second of

(a) the full extraction (decode thread + chunked I3D), on generated videos;
(b) the I3D forward alone on the same pre-decoded frames, in the same chunks (compute floor);
(c) a naive extractor that runs each feature's own 36-frame clip (measured on a subset);

and the peak RSS of a subprocess extracting a short and a 10x longer video (must stay flat).

    python -m bench.extract                      # CPU default, crop 112, about 3-5 minutes
    python -m bench.extract --crop 224 --short-side 256 --seconds 120 --device cuda
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from extract.decode import DecodeSettings, FrameStream, decode_all, normalize
from extract.i3d import ChunkedExtractor, RunOptions, build_backbone
from extract.runtime import resolve_device
from tests.videos import write_noise_video

REPO = Path(__file__).resolve().parents[1]


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
def naive(frames: torch.Tensor, ex: ChunkedExtractor, stride: int, count: int) -> float:
    """Seconds per feature when each feature runs its own 36-frame clip centred on it."""
    n = frames.shape[0]
    t = time.perf_counter()
    for i in range(count):
        centre = i * stride + stride // 2
        s = max(0, min(n - 36, centre - 18))
        s -= s % 2
        x = normalize(frames[s:s + 36].to(ex.device))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=ex.cuda):
            ex.backbone(x.contiguous(memory_format=torch.channels_last_3d))
    _sync(ex.device)
    return (time.perf_counter() - t) / count


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_mb(video: Path, args: argparse.Namespace, out: Path) -> float:
    """Peak RSS (MB) of a fresh process running the CLI on one video."""
    code = (
        "import resource, sys\n"
        "from extract.__main__ import app\n"
        "try:\n    app(sys.argv[1:])\n"
        "except SystemExit:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    cmd = [sys.executable, "-c", code, "features", str(video), "--out", str(out),
           "--weights", "random", "--short-side", str(args.mem_short_side), "--crop",
           str(args.mem_short_side), "--device", args.device, "--no-progress"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the speed-test video")
    ap.add_argument("--source-fps", type=int, default=30)
    ap.add_argument("--size", default="320x240", help="source WxH")
    ap.add_argument("--short-side", type=int, default=128)
    ap.add_argument("--crop", type=int, default=112)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--chunk-frames", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--naive-features", type=int, default=12)
    ap.add_argument("--mem-seconds", type=float, nargs=2, default=[60.0, 600.0])
    ap.add_argument("--mem-short-side", type=int, default=32)
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()

    device = resolve_device(args.device)
    w, h = map(int, args.size.split("x"))
    settings = DecodeSettings(10.0, args.short_side, args.crop)
    bb, _ = build_backbone("random")
    chunk = args.chunk_frames or (512 if device.type == "cuda" else 256)
    ex = ChunkedExtractor(bb, args.stride, device, RunOptions(chunk_frames=chunk, batch_chunks=4))
    print(f"device {device}, torch threads {torch.get_num_threads()}, crop {args.crop}, "
          f"short side {args.short_side}, stride {args.stride}, chunk {chunk} (+2x{ex.halo} halo)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        video = write_noise_video(tmp_path / "speed.mp4", args.seconds, fps=args.source_fps,
                                  width=w, height=h)
        frames, res = decode_all(video, settings)
        t_decode = time.perf_counter()
        decode_all(video, settings)
        t_decode = time.perf_counter() - t_decode
        secs = res.duration
        forward_only(frames[:64], ex)  # warm-up
        tb = forward_only(frames, ex)
        ta = full_extraction(video, ex, settings)
        tc = naive(frames, ex, args.stride, args.naive_features) * (frames.shape[0] // args.stride)
        print(f"video {secs:.0f} s {w}x{h} @ {args.source_fps} fps -> {frames.shape[0]} frames")
        print(f"decode alone            {secs / t_decode:8.1f} video-s/s")
        print(f"(a) full extraction     {secs / ta:8.1f} video-s/s")
        print(f"(b) I3D forward alone   {secs / tb:8.1f} video-s/s   a/b = {tb / ta:.2f} "
              f"(target >= 0.85)")
        print(f"(c) naive 36-frame clip {secs / tc:8.1f} video-s/s   a/c = {tc / ta:.1f} "
              f"(target >= 5)")

        # Halo overhead of chunking, for reference: the same frames in one pass.
        one = ChunkedExtractor(bb, args.stride, device, RunOptions(chunk_frames=frames.shape[0]
                                                                  // 8 * 8 or 8))
        t1 = forward_only(frames, one)
        print(f"    one-pass forward    {secs / t1:8.1f} video-s/s   (chunk halo overhead "
              f"{tb / t1 - 1:+.0%})")

        if not args.skip_memory:
            rss = []
            for s in args.mem_seconds:
                v = write_noise_video(tmp_path / f"mem{int(s)}.mp4", s, fps=25, width=160,
                                      height=120)
                rss.append(peak_rss_mb(v, args, tmp_path / f"out{int(s)}"))
                print(f"peak RSS, {s:.0f} s video: {rss[-1]:.0f} MB")
            print(f"peak RSS ratio {rss[1] / rss[0]:.2f} (flat: about 1)")


if __name__ == "__main__":
    main()
