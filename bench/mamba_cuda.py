"""mamba-ssm's CUDA selective scan vs our pure-PyTorch scan: parity and speed (GPU only).

Builds one paper-size Mamba block (D=512, L=48, B=8), runs `check_cuda_parity` (outputs and every
gradient), then times forward + backward with each backend. Prints the figures and, with --json,
writes them. Without CUDA it says so and exits 0 (so `make bench` runs on a CPU); on CUDA without
a usable mamba-ssm it exits 2 with the reason.

    python -m bench.mamba_cuda [--json bench/results/mamba_cuda.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from detect.model.mamba import Mamba, MambaBackendError, check_cuda_parity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=48)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare (bench/gpu.sh on a GPU machine)")
        return
    torch.manual_seed(0)
    m = Mamba(args.dim).cuda()
    x = torch.randn(args.batch, args.length, args.dim, device="cuda")
    try:
        diff = check_cuda_parity(m, x)
    except MambaBackendError as e:
        print(f"mamba-ssm unusable: {e}", file=sys.stderr)
        sys.exit(2)
    times = {}
    for backend in ("torch", "cuda"):
        m.backend = backend
        ts = []
        for i in range(args.repeats + 3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            m(x).sum().backward()
            torch.cuda.synchronize()
            if i >= 3:
                ts.append(time.perf_counter() - t0)
        times[backend] = statistics.median(ts) * 1e3
    result = {"max_abs_diff": diff, "fwd_bwd_ms": times, "speedup": times["torch"] / times["cuda"],
              "shape": [args.batch, args.length, args.dim], "device": torch.cuda.get_device_name()}
    print(f"parity: max |torch - cuda| over outputs and gradients {diff:.2e} "
          f"({'ok' if diff < 2e-3 else 'ABOVE upstream fp32 tolerance 2e-3'})")
    print(f"fwd+bwd: torch scan {times['torch']:.2f} ms, mamba-ssm {times['cuda']:.2f} ms "
          f"({result['speedup']:.1f}x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
