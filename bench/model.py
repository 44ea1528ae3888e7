"""Time one training step (forward + backward) of the detector on random cached features.

Default: the paper's config (D=512, Nq=48, Ns=30, L=4, W=128, B=8) for the Mamba-MHSA decoder
and the MHSA-only PointTAD baseline, on CPU, and their ratio. Prints median and min per step.

    python bench/model.py [--batch 8] [--window 128] [--repeats 3] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detect.config import ModelConfig  # noqa: E402
from detect.model import Detector, count_parameters  # noqa: E402
from detect.model.mamba import Mamba  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(model: Detector, x: torch.Tensor, repeats: int, warmup: int) -> list[float]:
    times = []
    for i in range(warmup + repeats):
        sync(x.device)
        t0 = time.perf_counter()
        out = model(x)
        loss = sum(v.float().square().mean() for v in out.values())
        loss.backward()
        sync(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return times


def time_mamba_block(cfg: ModelConfig, batch: int, repeats: int, device: torch.device) -> float:
    m = Mamba(cfg.hidden_dim, d_state=cfg.mamba.d_state).to(device)
    q = torch.randn(batch, cfg.num_queries, cfg.hidden_dim, device=device)
    ts = []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        m(q).sum().backward()
        sync(device)
        if i:
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--in-dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=17)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    x = torch.randn(args.batch, args.window, args.in_dim, device=device)
    base = ModelConfig()
    print(
        f"device {device}, threads {args.threads}, B={args.batch} W={args.window} "
        f"D={base.hidden_dim} Nq={base.num_queries} Ns={base.num_points} L={base.num_layers}"
    )
    # Interleave the two models step by step so a shared, busy machine loads both alike.
    models, times = {}, {}
    for mixer in ("mamba_mhsa", "mhsa"):
        cfg = dataclasses.replace(base, query_mixer=mixer)
        models[mixer] = Detector(cfg, args.in_dim, args.classes).to(device).train()
        times[mixer] = time_step(models[mixer], x, 0, args.warmup)
    for _ in range(args.repeats):
        for mixer, model in models.items():
            times[mixer] += time_step(model, x, 1, 0)
    medians = {}
    for mixer, ts in times.items():
        medians[mixer] = statistics.median(ts)
        print(
            f"{mixer:>10}: fwd+bwd {medians[mixer] * 1e3:8.0f} ms median, {min(ts) * 1e3:8.0f} ms "
            f"min over {len(ts)}; {count_parameters(models[mixer]) / 1e6:.1f} M parameters"
        )
    print(f"ratio mamba_mhsa / mhsa: {medians['mamba_mhsa'] / medians['mhsa']:.2f}")
    blk = time_mamba_block(base, args.batch, args.repeats, device)
    print(f"one Mamba block fwd+bwd (B={args.batch}, L={base.num_queries}): {blk * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
