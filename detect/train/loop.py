"""Training: windows -> detector -> Hungarian set losses, best epoch on `val`.

`mode = "features"` trains on cached features; `mode = "e2e"` trains stage one's I3D together with
the detector from stored frames (`detect.model.e2e`). One process by default; under `torchrun` it
trains with DDP (gloo on CPU, NCCL on CUDA). `train.grad_accum` batches add their gradients before
each optimiser step. Checkpoints are written atomically every epoch with the optimiser, scheduler
and RNG states (and the backbone in e2e mode), so `--resume` continues a killed run and reaches the
same final metrics as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from detect.config import Config, check_config
from detect.data.annotations import Annotations, load_annotations
from detect.data.windows import WindowDataset, collate_windows, window_dataset
from detect.evaluation.evaluate import evaluate_subset
from detect.model.build import build_model
from detect.model.detector import parameter_groups
from detect.model.e2e import e2e_parameter_groups, feature_mismatch, run_model
from detect.runs import BEST, LAST, check_feature_set, read_run, write_run_files
from detect.train.ema import WeightEMA
from detect.train.losses import SetCriterion
from extract.cache import FeatureSet
from extract.config import config_to_dict
from extract.i3d import RES4_DIM, RES5_DIM
from extract.io import RunError, append_metrics_row, load_checkpoint, save_checkpoint
from extract.runtime import Distributed, resolve_device, seed_everything


class TrainingDiverged(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def feature_stats(ds: WindowDataset) -> tuple[torch.Tensor | None, ...]:
    """Per-channel mean and std over every feature step of the dataset's videos (float64 sums):
    (C,), (C,), then (C4,), (C4,) for res4 or None, None."""
    out: list[torch.Tensor | None] = []
    for key in ("features", "res4"):
        arrays = [getattr(v, key) for v in ds.videos]
        if any(a is None for a in arrays):
            out += [None, None]
            continue
        n = sum(a.shape[0] for a in arrays)
        mean = sum(a.sum(0, dtype=np.float64) for a in arrays) / n
        var = sum(((a - mean) ** 2).sum(0, dtype=np.float64) for a in arrays) / max(n - 1, 1)
        out += [torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(var)).float()]
    return tuple(out)


def feature_dims(fs: FeatureSet, video_id: str, use_res4: bool) -> tuple[int, int]:
    v = fs.load(video_id, with_res4=use_res4)
    return v.features.shape[1], (v.res4.shape[1] if v.res4 is not None else 0)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = dict(batch)
    for k in ("features", "res4", "dense"):
        if out.get(k) is not None:
            out[k] = out[k].to(device, non_blocking=True)
    out["targets"] = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
    return out


def _rng_state() -> dict[str, Any]:
    # Shuffling uses its own per-epoch generator; only dropout draws from the global torch RNG.
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train(
    cfg: Config,
    features: Path,
    annotations: Path,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """Train a detector; returns the best val metrics. `max_epochs` stops early (for tests)."""
    out = Path(out)
    check_config(cfg)
    device = resolve_device(cfg.train.device)
    ddp = Distributed.from_env(device)
    if ddp.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)

    fs = FeatureSet.find(Path(features))
    ann: Annotations = load_annotations(Path(annotations), feature_set=fs)
    if resume:
        old_cfg, info = read_run(out)
        check_feature_set(out, info, fs)
        if config_to_dict(old_cfg) != config_to_dict(cfg):
            raise RunError(f"{out}: --resume with a config that differs from {out}/config.toml")
    elif ddp.main:
        if (out / LAST).exists():
            raise RunError(f"{out}: a run is already there; pass --resume or choose another --out")
        write_run_files(out, cfg, fs, Path(annotations), {"classes": ann.classes})

    seed_everything(cfg.train.seed + ddp.rank)
    e2e = cfg.mode == "e2e"
    halo = 0
    if e2e:
        in_dim, res4_dim = RES5_DIM, RES4_DIM if cfg.data.use_res4 else 0
        model = build_model(cfg, in_dim, len(ann.classes), res4_dim).to(device)
        halo = model.halo
    train_ds = window_dataset(cfg, fs, ann, "train", train=True, halo=halo)
    # Without a `val` subset the best epoch falls back to the lowest training loss.
    val_ds = None
    if ann.subset("val").videos:
        val_ds = window_dataset(cfg, fs, ann, "val", train=False, halo=halo)
    if not e2e:
        in_dim, res4_dim = feature_dims(fs, train_ds.video_ids[0], cfg.data.use_res4)
        model = build_model(cfg, in_dim, len(ann.classes), res4_dim).to(device)
        if cfg.data.standardize:
            model.set_input_stats(*[t.to(device) if t is not None else None
                                    for t in feature_stats(train_ds)])
    elif val_ds is not None and progress and ddp.main and not resume:
        gap = feature_mismatch(model, val_ds, fs)
        note = ("the backbone reproduces the cached features" if gap < 1e-2 else
                "the starting backbone does NOT reproduce the cached features (other weights, "
                "crop or frame size than the feature set's)")
        tqdm.write(f"e2e: first val window, max relative feature difference {gap:.2g}: {note}")
    criterion = SetCriterion(cfg.loss, len(ann.classes))
    if e2e:
        groups = e2e_parameter_groups(model, cfg.train.weight_decay, cfg.train.lr,
                                      cfg.backbone.lr_mult)
    else:
        groups = parameter_groups(model, cfg.train.weight_decay)
    optim = torch.optim.AdamW(groups, lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.StepLR(optim, cfg.train.lr_step, cfg.train.lr_gamma)

    ema = WeightEMA(model, cfg.train.ema) if cfg.train.ema > 0 else None
    start_epoch, best_metric, best_epoch = 0, -math.inf, -1
    if resume and (out / LAST).is_file():
        ck = load_checkpoint(out / LAST)
        model.load_state_dict(ck["raw_model"] if ema is not None else ck["model"])
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        optim.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, best_metric, best_epoch = ck["epoch"] + 1, ck["best_metric"], ck["best_epoch"]
        _set_rng_state(ck["rng"])

    net: torch.nn.Module = model
    if ddp.world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    epochs = cfg.train.epochs if max_epochs is None else min(cfg.train.epochs, max_epochs)
    use_amp = cfg.train.amp
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        # The shuffle depends only on (seed, epoch), so a resumed run sees the same order.
        order = torch.Generator().manual_seed(cfg.train.seed * 100_003 + epoch)
        indices = torch.randperm(len(train_ds), generator=order).tolist()
        # Every rank must take the same number of steps (DDP all-reduces each one): wrap around.
        per_rank = -(-len(indices) // ddp.world_size)
        indices = [indices[i % len(indices)] for i in range(per_rank * ddp.world_size)]
        indices = indices[ddp.rank :: ddp.world_size]
        train_ds.set_epoch(epoch)
        loader = DataLoader(
            torch.utils.data.Subset(train_ds, indices),
            batch_size=cfg.train.batch_size,
            shuffle=False,
            collate_fn=collate_windows,
            num_workers=cfg.train.num_workers,
        )
        net.train()
        sums: dict[str, float] = {}
        steps = 0
        accum, num_batches = cfg.train.grad_accum, len(loader)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not (progress and ddp.main),
                   leave=False)
        for i, batch in enumerate(bar):
            batch = _to_device(batch, device)
            outputs = run_model(net, batch, device, cfg.data.window, amp=use_amp)
            outputs = {k: v.float() for k, v in outputs.items()}
            bad = [k for k, v in outputs.items() if not torch.isfinite(v).all()]
            if not bad:
                loss, logs = criterion(outputs, batch["targets"], batch["dense"])
                if not torch.isfinite(loss):
                    bad = ["loss"]
            if bad:
                raise TrainingDiverged(
                    f"NaN or inf in {', '.join(bad)} at epoch {epoch + 1}, step {steps + 1}; "
                    f"the last good checkpoint is {out / LAST}. Try a lower train.lr or "
                    "train.clip_grad."
                )
            # The batches of one optimiser step; the last group of an epoch may be shorter.
            first = i // accum * accum
            group = min(accum, num_batches - first)
            if i == first:
                optim.zero_grad(set_to_none=True)
            stepping = i == first + group - 1
            sync = nullcontext() if stepping or ddp.world_size == 1 else net.no_sync()
            with sync:
                (loss / group if group > 1 else loss).backward()
            if stepping:
                if cfg.train.clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], cfg.train.clip_grad)
                optim.step()
                if ema is not None:
                    ema.update(model)
            steps += 1
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        lr = optim.param_groups[0]["lr"]
        sched.step()

        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_windows": len(indices)}
        row.update({f"train_{k}": v / max(steps, 1) for k, v in sums.items()})
        if ddp.main:
            # The weights that are evaluated, selected and saved as "model".
            final = ema.module if ema is not None else model
            metrics = {}
            if val_ds is not None:
                metrics, _ = evaluate_subset(final, val_ds, ann, cfg, device, threshold=None)
                row.update({f"val_{k}": metrics[k] for k in ("f1_miga", "f1_strict", "map")})
            current = metrics.get(cfg.train.select_metric, -row["train_loss"])
            if current >= best_metric:  # ties go to the later, longer-trained epoch
                best_metric, best_epoch = current, epoch + 1
                save_checkpoint(out / BEST, _checkpoint(final, cfg, ann, in_dim, res4_dim, epoch,
                                                        best_metric, best_epoch))
            row["seconds"] = round(time.time() - t0, 3)
            append_metrics_row(out, row)
            state = _checkpoint(final, cfg, ann, in_dim, res4_dim, epoch, best_metric, best_epoch)
            state.update(optimizer=optim.state_dict(), scheduler=sched.state_dict(),
                         rng=_rng_state())
            if ema is not None:
                state.update(raw_model=model.state_dict(), ema=ema.state_dict())
            save_checkpoint(out / LAST, state)
            if progress:
                shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
                tqdm.write(f"epoch {epoch + 1}/{epochs}: {shown}")
        if ddp.world_size > 1:
            dist.barrier()

    if ddp.main:
        finalize_threshold(out, val_ds, ann, cfg, device)
    if ddp.world_size > 1:
        dist.barrier()
    return {"best_metric": best_metric, "best_epoch": best_epoch}


def _checkpoint(model: torch.nn.Module, cfg: Config, ann: Annotations, in_dim: int, res4_dim: int,
                epoch: int, best_metric: float, best_epoch: int) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "config": config_to_dict(cfg),
        "classes": list(ann.classes),
        "in_dim": in_dim,
        "res4_dim": res4_dim,
        "epoch": epoch,
        "best_metric": float(best_metric),
        "best_epoch": int(best_epoch),
    }


def finalize_threshold(out: Path, val_ds: WindowDataset | None, ann: Annotations, cfg: Config,
                       device: torch.device) -> None:
    """Store in best.pt the score threshold that maximises F1 on `val` (never on `test`)."""
    ck = load_checkpoint(out / BEST)
    model = build_model(cfg, ck["in_dim"], len(ck["classes"]), ck["res4_dim"],
                        pretrained=False).to(device)
    model.load_state_dict(ck["model"])
    threshold = 0.0
    if val_ds is not None:
        metrics, _ = evaluate_subset(model, val_ds, ann, cfg, device, threshold=None)
        threshold = metrics["threshold"]
    ck["threshold"] = float(threshold)
    save_checkpoint(out / BEST, ck)
