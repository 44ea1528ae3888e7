"""Stage-two benchmark: prints figures, asserts nothing.

  - training windows per second and peak memory, Mamba-MHSA vs MHSA-only (step-time ratio), for
    the paper's model (D=512, Nq=48, Ns=30, L=4, W=128) on synthetic cached features;
  - inference time for one 15-minute video (2250 feature steps at 0.4 s);
  - f1_miga / f1_strict / map on a harder synthetic set after full training of a small config;
  - with --e2e only: the end-to-end step (I3D + detector, one window, configs/smg_e2e.toml's
    backbone settings) at crops 160 and 224: step time, peak memory, and the ratio to a
    feature-mode step of the same detector and window.

    python -m bench.train [--steps 5] [--batch 8] [--skip-train] [--epochs N]
    python -m bench.train --e2e [--e2e-window 16] [--steps 2]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from detect.config import load_config
from detect.data.windows import WindowDataset, collate_windows
from detect.evaluation.evaluate import evaluate_run
from detect.model.detector import Detector
from detect.synthetic.features import synth_feature_set
from detect.train.loop import train
from detect.train.losses import SetCriterion
from extract.cache import FeatureSet
from extract.training import parameter_groups

C = 17  # SMG classes


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step_time(mixer: str, ds: WindowDataset, steps: int, batch: int, device: torch.device
              ) -> tuple[float, float]:
    """Seconds per training step (forward, losses, backward, AdamW) and windows per second."""
    cfg = load_config("configs/smg.toml", [f"model.query_mixer={mixer!r}".replace("'", '"'),
                                           "model.mamba.backend=\"torch\""])
    torch.manual_seed(0)
    model = Detector(cfg.model, in_dim=ds[0]["features"].shape[1], num_classes=C).to(device)
    crit = SetCriterion(cfg.loss, C)
    opt = torch.optim.AdamW(parameter_groups(model, 1e-4), lr=1e-4)
    batches = [collate_windows([ds[(i * batch + j) % len(ds)] for j in range(batch)])
               for i in range(steps + 1)]
    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        out = model(b["features"].to(device))
        loss, _ = crit(out, [{k: v.to(device) for k, v in t.items()} for t in b["targets"]],
                       b["dense"].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first step warms up
            times.append(time.perf_counter() - t0)
    sec = sorted(times)[len(times) // 2]
    return sec, batch / sec


def _timed_steps(step, steps: int, device: torch.device) -> float:
    """Median seconds of `steps` calls of step() after one warm-up call."""
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def e2e_bench(window: int, steps: int, device: torch.device) -> None:
    """End-to-end training step for one window vs a feature-mode step (same detector)."""
    cfg = load_config("configs/smg_e2e.toml", [f"data.window={window}", "backbone.weights=random",
                                               "model.mamba.backend=\"torch\""])
    stride = cfg.data.stride
    targets = [{"labels": torch.tensor([0, 3], device=device),
                "segments": torch.tensor([[0.1, 0.2], [0.5, 0.7]], device=device)}]
    dense = torch.zeros(1, window, C, device=device)
    crit = SetCriterion(cfg.loss, C)
    print(f"\n== end-to-end step, one window of {window} steps ({window * stride} frames + "
          f"2 x 18 halo), I3D frozen through res2, frozen BN, checkpointing, detector as "
          f"smg.toml (D=512, Nq=48, L=4)")

    torch.manual_seed(0)
    det = Detector(cfg.model, in_dim=2048, num_classes=C).to(device)
    opt = torch.optim.AdamW(parameter_groups(det, 1e-4), lr=1e-4)
    feats = torch.randn(1, window, 2048, device=device)

    def feature_step() -> None:
        loss, _ = crit(det(feats), targets, dense)
        opt.zero_grad()
        loss.backward()
        opt.step()

    feat_sec = _timed_steps(feature_step, max(steps, 3), device)
    print(f"feature mode: {feat_sec * 1000:8.1f} ms/step")
    for crop in (160, 224):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = _e2e_step_time(cfg, crop, window, steps, device, crit, targets, dense)
        mem = (f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MB"
               if device.type == "cuda" else f"peak RSS so far {peak_rss_mb():.0f} MB")
        print(f"e2e crop {crop}: {sec:8.2f} s/step  {mem}  "
              f"({sec / feat_sec:.0f}x a feature-mode step)")


def _e2e_step_time(cfg, crop: int, window: int, steps: int, device: torch.device,
                   crit: SetCriterion, targets: list, dense: torch.Tensor) -> float:
    from detect.model.e2e import build_e2e_model, e2e_parameter_groups, run_model

    torch.manual_seed(0)
    model = build_e2e_model(cfg, C).to(device)
    opt = torch.optim.AdamW(e2e_parameter_groups(model, 1e-4, 1e-4, cfg.backbone.lr_mult))
    n = window * cfg.data.stride + 2 * model.halo
    batch = {"frames": [torch.randint(0, 256, (n, crop, crop, 3), dtype=torch.uint8)],
             "offsets": [model.halo], "meta": [("v", 0, window)],
             "jitter": torch.tensor([[10.0, 1.2, 0.9, 5.0]], dtype=torch.float64)}

    def step() -> None:
        out = run_model(model, batch, device, window, amp=True)
        loss, _ = crit({k: v.float() for k, v in out.items()}, targets, dense)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return _timed_steps(step, steps, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--e2e", action="store_true", help="only the end-to-end step benchmark")
    ap.add_argument("--e2e-window", type=int, default=16, help="feature steps per window (--e2e)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.e2e:
        e2e_bench(args.e2e_window, args.steps, device)
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fs, ann_path = synth_feature_set(tmp / "paper", videos=6, classes=C, seed=0, noise=1.0,
                                         dim=2048, min_duration_s=300, max_duration_s=300)
        from detect.data.annotations import load_annotations

        ann = load_annotations(ann_path, feature_set=fs)
        cfg = load_config("configs/smg.toml")
        ds = WindowDataset(fs, ann, "train", cfg.data, train=True)

        print("\n== training step, paper model (D=512, Nq=48, Ns=30, L=4, W=128), "
              f"batch {args.batch}")
        res = {}
        for mixer in ("mamba_mhsa", "mhsa"):
            sec, wps = step_time(mixer, ds, args.steps, args.batch, device)
            res[mixer] = sec
            print(f"{mixer:>11}: {sec * 1000:8.1f} ms/step  {wps:7.1f} windows/s  "
                  f"peak RSS {peak_rss_mb():.0f} MB")
        print(f"Mamba-MHSA / MHSA step-time ratio: {res['mamba_mhsa'] / res['mhsa']:.2f}")

        print("\n== inference, one 15-minute video (2250 steps, 18 windows of 128)")
        torch.manual_seed(0)
        model = Detector(cfg.model, in_dim=2048, num_classes=C).to(device).eval()
        feats = torch.randn(1, 2250, 2048)
        windows = torch.cat([feats[:, s:s + 128] for s in range(0, 2250 - 127, 128)]
                            + [feats[:, -128:]])
        with torch.inference_mode():
            model(windows[:2].to(device))
            t0 = time.perf_counter()
            model(windows.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            print(f"{time.perf_counter() - t0:.3f} s for {windows.shape[0]} windows")

        if args.skip_train:
            return
        print(f"\n== full training of configs/synthetic-small.toml on a harder synthetic set "
              f"(30 videos, noise 1.0, 8 classes, {args.epochs} epochs)")
        fs2, ann2 = synth_feature_set(tmp / "hard", videos=30, classes=8, seed=3, noise=1.0,
                                      dim=64, min_duration_s=60, max_duration_s=150)
        scfg = load_config("configs/synthetic-small.toml", [f"train.epochs={args.epochs}"])
        t0 = time.perf_counter()
        train(scfg, FeatureSet.open(fs2.path).path, ann2, tmp / "run", progress=True)
        m = evaluate_run(tmp / "run", "test", progress=False)
        print(f"trained in {time.perf_counter() - t0:.0f} s: f1_miga {m['f1_miga']:.3f}  "
              f"f1_strict {m['f1_strict']:.3f}  map {m['map']:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
