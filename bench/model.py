"""Time the detector's full training step and measure its peak memory, per decoder variant.

A full step is what `detect train` does per batch: forward, the set loss with Hungarian matching
on every layer plus the dense loss, backward, gradient clipping and an AdamW step, in fp32, on
random cached features (B windows of W steps, 2048-d) with random ground truth (3 gestures per
window). Default: the paper's config (D=512, Nq=48, Ns=30, L=4, W=128, C=17, B=8) on the CPU.

Memory, two figures: peak RSS of the process (includes torch's libraries, about 0.7 GiB for the
CUDA build, and the C allocator's fragmentation) and the peak of live tensor bytes over one step
(bench/memtrack.py: parameters, gradients, optimizer state, activations; what the model needs,
as torch.cuda.max_memory_allocated on a GPU).

Variants (each in its own process, so its peak RSS is its own):
  pointtad      MHSA query mixer + PointTAD's full dynamic mixing: PointTAD's decoder
  mgdet         Mamba-MHSA + full mixing: the paper's model, the default config (the Mamba
                blocks' own cost is mgdet / pointtad)
  mgdet-lean    Mamba-MHSA + lean dynamic mixing (rank 64, point dim 64; an ablation: 0.09
                f1_strict lower, bench/results/mixing-cpu.txt)
  mgdet-lean-mhsa  MHSA + lean mixing

    python -m bench.model [--batch 8] [--window 128] [--repeats 5] [--threads 2] [--device cpu]
                          [--variants pointtad,mgdet,...] [--json bench/results/model.json]

It also prints one Mamba block's forward + backward with the scan before and after the hand-
written backward, and stage two's time over a 15-minute video (inference, one process).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.memtrack import LiveTensorBytes
from detect.config import LossConfig, ModelConfig
from detect.model.detector import Detector, count_parameters
from detect.train.losses import SetCriterion
from extract.training import parameter_groups

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {
    "pointtad": dict(query_mixer="mhsa", mixing="full"),
    "mgdet": dict(query_mixer="mamba_mhsa", mixing="full"),
    "mgdet-lean": dict(query_mixer="mamba_mhsa", mixing="lean"),
    "mgdet-lean-mhsa": dict(query_mixer="mhsa", mixing="lean"),
}


def variant_config(name: str) -> ModelConfig:
    """A named variant, or "mgdet-rR-pP": the lean mixing at rank R and point dim P."""
    if name in VARIANTS:
        return dataclasses.replace(ModelConfig(), **VARIANTS[name])
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "mgdet" and parts[1][:1] == "r" and parts[2][:1] == "p":
        return dataclasses.replace(ModelConfig(), **VARIANTS["mgdet-lean"],
                                   mix_rank=int(parts[1][1:]), mix_point_dim=int(parts[2][1:]))
    raise SystemExit(f"unknown variant {name!r}: one of {', '.join(VARIANTS)} or mgdet-rR-pP")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def random_batch(batch: int, window: int, in_dim: int, classes: int, device: torch.device,
                 seed: int = 0) -> tuple[torch.Tensor, list[dict], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, window, in_dim, generator=g)
    targets = []
    dense = torch.zeros(batch, window, classes)
    for b in range(batch):
        start = torch.rand(3, generator=g) * 0.8
        seg = torch.stack([start, start + 0.02 + torch.rand(3, generator=g) * 0.15], -1)
        labels = torch.randint(0, classes, (3,), generator=g)
        targets.append({"labels": labels.to(device), "segments": seg.to(device)})
        for (s, e), c in zip(seg.tolist(), labels.tolist(), strict=True):
            dense[b, int(s * window):int(e * window) + 1, c] = 1
    return x.to(device), targets, dense.to(device)


def child(args: argparse.Namespace) -> dict:
    """One variant: full training steps, then peak RSS; returns the figures as a dict."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cfg = variant_config(args.child)
    model = Detector(cfg, args.in_dim, args.classes).to(device).train()
    criterion = SetCriterion(LossConfig(), args.classes)
    optim = torch.optim.AdamW(parameter_groups(model, 1e-4), lr=1e-4,
                              fused=True if args.fused else None)
    x, targets, dense = random_batch(args.batch, args.window, args.in_dim, args.classes, device)

    def step() -> None:
        optim.zero_grad(set_to_none=True)
        out = model(x)
        loss, _ = criterion(out, targets, dense)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optim.step()

    times = []
    for i in range(args.warmup + args.repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    # One more step, untimed (the tracker slows every operator), for the live-tensor peak.
    params = list(model.parameters())
    with LiveTensorBytes([params, [p.grad for p in params], list(optim.state.values())]) as mem:
        step()
    result = {
        "variant": args.child, "params_M": count_parameters(model) / 1e6,
        "step_s_median": statistics.median(times), "step_s_min": min(times),
        "steps": len(times), "windows_per_s": args.batch / statistics.median(times),
        "peak_rss_GiB": peak_rss_gib(), "peak_tensor_GiB": mem.peak / 2**30,
    }
    if device.type == "cuda":
        result["peak_cuda_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def scan_comparison(batch: int, repeats: int) -> tuple[float, float]:
    """One paper-size Mamba block (D=512, L=48) fwd+bwd: autograd through the step loop vs the
    hand-written backward (same forward numbers)."""
    import torch.nn.functional as F

    from detect.model import mamba as mb

    def loop_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
        dt = F.softplus(delta + delta_bias[None, :, None]) if delta_softplus else delta
        decay = torch.exp(dt.permute(2, 0, 1).unsqueeze(-1) * A)
        drive = (dt * u).permute(2, 0, 1).unsqueeze(-1) * B.permute(2, 0, 1).unsqueeze(2)
        Cl = C.permute(2, 0, 1).unsqueeze(-1)
        h, ys = torch.zeros_like(drive[0]), []
        for a_t, b_t, c_t in zip(decay.unbind(0), drive.unbind(0), Cl.unbind(0), strict=True):
            h = a_t * h + b_t
            ys.append(torch.bmm(h, c_t))
        y = torch.cat(ys, -1) + D[None, :, None] * u
        return y * F.silu(z)

    m = mb.Mamba(512)
    q = torch.randn(batch, 48, 512)
    res = []
    for scan in (loop_scan, mb.selective_scan_torch):
        ts = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            xz = m.in_proj(q).transpose(1, 2)
            xs, z = xz.chunk(2, dim=1)
            m._direction(xs, z, "", scan).sum().backward()
            if i:
                ts.append(time.perf_counter() - t0)
        res.append(statistics.median(ts))
    return res[0], res[1]


def inference_15min(cfg: ModelConfig, in_dim: int, classes: int, window: int,
                    device: torch.device) -> tuple[float, int]:
    """Stage two over 15 minutes of features (2250 steps at 0.4 s): windows with 25% overlap,
    batched, in inference mode. Returns (seconds, windows)."""
    steps = int(15 * 60 / 0.4)
    hop = window * 3 // 4
    starts = list(range(0, max(steps - window, 0) + 1, hop))
    if starts[-1] + window < steps:
        starts.append(steps - window)
    model = Detector(cfg, in_dim, classes).to(device).eval()
    feats = torch.randn(steps, in_dim, device=device)
    with torch.inference_mode():
        model(feats[None, :window])  # warm up
        sync(device)
        t0 = time.perf_counter()
        for i in range(0, len(starts), 16):
            x = torch.stack([feats[s:s + window] for s in starts[i:i + 16]])
            model(x)
        sync(device)
    return time.perf_counter() - t0, len(starts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--in-dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=17)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--fused", type=int, default=1, help="fused AdamW (as detect train)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    base = ModelConfig()
    print(f"device {args.device}, threads {args.threads}, B={args.batch} W={args.window} "
          f"D={base.hidden_dim} Nq={base.num_queries} Ns={base.num_points} "
          f"L={base.num_layers} C={args.classes}, full step (fwd, set loss, bwd, clip, AdamW)")
    results = {}
    names = args.variants.split(",")
    for name in names:
        variant_config(name)  # fail before the first (minutes-long) child
    for name in names:
        cmd = [sys.executable, __file__, "--child", name, *[
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
            if k not in ("child", "variants", "json") and v is not None]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        results[name] = r
        print(f"{name:>11}: {r['step_s_median']:6.2f} s/step median ({r['step_s_min']:.2f} min "
              f"of {r['steps']}), {r['windows_per_s']:5.2f} windows/s, {r['params_M']:6.1f} M "
              f"parameters, peak RSS {r['peak_rss_GiB']:.2f} GiB, peak live tensors "
              f"{r['peak_tensor_GiB']:.2f} GiB", flush=True)
    for name in ("mgdet", "mgdet-lean"):
        if "pointtad" in results and name in results:
            p, m = results["pointtad"], results[name]
            print(f"{name} vs PointTAD's decoder: "
                  f"{m['windows_per_s'] / p['windows_per_s']:.2f}x windows/s, "
                  f"{m['peak_rss_GiB'] / p['peak_rss_GiB']:.2f}x peak RSS, "
                  f"{m['peak_tensor_GiB'] / p['peak_tensor_GiB']:.2f}x peak live tensors")
    torch.set_num_threads(args.threads)
    loop_t, fn_t = scan_comparison(args.batch, args.repeats)
    print(f"one Mamba block fwd+bwd (B={args.batch}, L=48, D=512): autograd loop "
          f"{loop_t * 1e3:.0f} ms, hand-written backward {fn_t * 1e3:.0f} ms "
          f"({loop_t / fn_t:.2f}x)")
    secs, n = inference_15min(base, args.in_dim, args.classes, args.window,
                              torch.device(args.device))
    print(f"stage two over a 15-min video ({n} windows of {args.window}): {secs:.2f} s "
          f"on {args.device}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "device": args.device, "threads": args.threads, "batch": args.batch,
            "window": args.window, "variants": results,
            "mamba_block_ms": {"autograd_loop": loop_t * 1e3, "hand_backward": fn_t * 1e3},
            "inference_15min_s": secs, "inference_windows": n}, indent=2) + "\n")


if __name__ == "__main__":
    main()
