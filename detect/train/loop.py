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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from detect.config import Config, check_config
from detect.data.annotations import Annotations, load_annotations
from detect.data.standardize import channel_stats
from detect.data.windows import WindowDataset, collate_windows, window_dataset
from detect.evaluation.evaluate import evaluate_subset
from detect.model.build import build_model, training_groups
from detect.model.e2e import e2e_dims, feature_mismatch, run_model, with_feature_set_backbone
from detect.runs import BEST, LAST, check_feature_set, read_run, write_run_files
from detect.train.ema import WeightEMA
from detect.train.losses import SetCriterion
from detect.train.pyramid_loss import PyramidCriterion
from extract.cache import FeatureSet
from extract.config import config_to_dict
from extract.io import RunError, append_metrics_row, load_checkpoint, save_checkpoint
from extract.progress import progress as progress_bar
from extract.runtime import Distributed, resolve_device, seed_everything
from extract.streams import FeatureStreams, open_features, stream_dims
from extract.threads import ThreadGovernor


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
        out += channel_stats(arrays)
    return tuple(out)


def feature_dims(fs: FeatureSet | FeatureStreams, video_id: str, use_res4: bool
                 ) -> tuple[int, int]:
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


@dataclass
class _Run:
    """What one training run holds from epoch to epoch."""

    cfg: Config
    out: Path
    device: torch.device
    ddp: Distributed
    ann: Annotations
    train_ds: WindowDataset
    val_ds: WindowDataset | None
    model: torch.nn.Module
    net: torch.nn.Module  # the model, or its DDP wrapper
    in_dim: int
    res4_dim: int
    criterion: SetCriterion | PyramidCriterion
    optim: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: WeightEMA | None
    threads: ThreadGovernor
    start_epoch: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1

    @property
    def final(self) -> torch.nn.Module:
        """The weights that are evaluated, selected and saved as "model"."""
        return self.ema.module if self.ema is not None else self.model


def train(
    cfg: Config,
    features: Path | list[Path],
    annotations: Path,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """Train a detector; returns the best val metrics. `max_epochs` stops early (for tests).
    Several `features` sets are joined as streams (extract/streams.py)."""
    out = Path(out)
    check_config(cfg)
    device, ddp = _devices(cfg)
    fs = open_features(features)
    if cfg.mode == "e2e" and isinstance(fs, FeatureStreams):
        raise RunError("end-to-end training reads one feature set's frames; give one --features")
    ann: Annotations = load_annotations(Path(annotations), feature_set=fs)
    cfg = with_feature_set_backbone(cfg, fs)  # e2e: the backbone that made the features
    _open_run_dir(cfg, fs, ann, Path(annotations), out, resume, ddp)
    seed_everything(cfg.train.seed + ddp.rank)
    run = _setup(cfg, fs, ann, out, device, ddp, check_backbone=progress and not resume)
    if resume and (out / LAST).is_file():
        _resume(run, load_checkpoint(out / LAST))
    if ddp.world_size > 1:
        run.net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None)

    epochs = cfg.train.epochs if max_epochs is None else min(cfg.train.epochs, max_epochs)
    for epoch in range(run.start_epoch, epochs):
        t0 = time.time()
        row = _train_epoch(run, epoch, epochs, progress)
        if ddp.main:
            _validate_and_checkpoint(run, epoch, row)
            row["seconds"] = round(time.time() - t0, 3)
            append_metrics_row(out, row)
            _save_last(run, epoch)
            if progress:
                shown = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
                tqdm.write(f"epoch {epoch + 1}/{epochs}: {shown}")
        if ddp.world_size > 1:
            dist.barrier()

    if ddp.main:
        finalize_threshold(out, run.val_ds, ann, cfg, device)
    if ddp.world_size > 1:
        dist.barrier()
    return {"best_metric": run.best_metric, "best_epoch": run.best_epoch}


def _devices(cfg: Config) -> tuple[torch.device, Distributed]:
    """This process's device and its place in a torchrun job (each rank its own GPU)."""
    device = resolve_device(cfg.train.device)
    ddp = Distributed.from_env(device)
    if ddp.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", ddp.local_rank)
        torch.cuda.set_device(device)
    return device, ddp


def _open_run_dir(cfg: Config, fs: FeatureSet, ann: Annotations, annotations: Path, out: Path,
                  resume: bool, ddp: Distributed) -> None:
    """A new run writes its config and run.json; a resumed one must match them."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: a file, not a folder; choose another --out")
    if resume:
        old_cfg, info = read_run(out)
        check_feature_set(out, info, fs)
        old_cfg = with_feature_set_backbone(old_cfg, fs)  # runs from before backbone.model
        if config_to_dict(old_cfg) != config_to_dict(cfg):
            raise RunError(f"{out}: --resume with a config that differs from {out}/config.toml")
    elif ddp.main:
        if (out / LAST).exists():
            raise RunError(f"{out}: a run is already there; pass --resume or choose another --out")
        write_run_files(out, cfg, fs, annotations, {"classes": ann.classes})


def _setup(cfg: Config, fs: FeatureSet, ann: Annotations, out: Path, device: torch.device,
           ddp: Distributed, check_backbone: bool) -> _Run:
    """Datasets, model, loss, optimiser, schedule and EMA, in the order that draws the seeded
    random numbers the same way in every run."""
    threads = ThreadGovernor(cfg.train.threads, ranks=ddp.world_size)
    e2e = cfg.mode == "e2e"
    halo = 0
    if e2e:
        in_dim, res4_dim = e2e_dims(cfg)  # the widths of the feature set's backbone
        model = build_model(cfg, in_dim, len(ann.classes), res4_dim).to(device)
        halo = model.halo
    train_ds = window_dataset(cfg, fs, ann, "train", train=True, halo=halo)
    # Without a `val` subset the best epoch falls back to the lowest training loss.
    val_ds = None
    if ann.subset("val").videos:
        val_ds = window_dataset(cfg, fs, ann, "val", train=False, halo=halo)
    if not e2e:
        in_dim, res4_dim = feature_dims(fs, train_ds.video_ids[0], cfg.data.use_res4)
        streams = stream_dims(fs, train_ds.video_ids[0]) if isinstance(fs, FeatureStreams) else ()
        model = build_model(cfg, in_dim, len(ann.classes), res4_dim,
                            streams=streams).to(device)
        if cfg.data.standardize:
            model.set_input_stats(*[t.to(device) if t is not None else None
                                    for t in feature_stats(train_ds)])
    elif val_ds is not None and check_backbone and ddp.main:
        _report_feature_mismatch(model, val_ds, fs)
    criterion = build_criterion(cfg, len(ann.classes))
    optim = torch.optim.AdamW(training_groups(cfg, model), lr=cfg.train.lr)
    return _Run(
        cfg, out, device, ddp, ann, train_ds, val_ds, model, model, in_dim, res4_dim,
        criterion=criterion,
        optim=optim,
        sched=torch.optim.lr_scheduler.StepLR(optim, cfg.train.lr_step, cfg.train.lr_gamma),
        ema=WeightEMA(model, cfg.train.ema) if cfg.train.ema > 0 else None,
        threads=threads,
    )


def build_criterion(cfg: Config, num_classes: int) -> SetCriterion | PyramidCriterion:
    """The losses of the config's detector (`model.arch`)."""
    if cfg.model.arch == "pyramid":
        p = cfg.model.pyramid
        return PyramidCriterion(cfg.loss.pyramid, num_classes, p.levels, p.range_base)
    return SetCriterion(cfg.loss, num_classes)


def _report_feature_mismatch(model: torch.nn.Module, val_ds: WindowDataset,
                             fs: FeatureSet) -> None:
    gap = feature_mismatch(model, val_ds, fs)
    note = ("the backbone reproduces the cached features" if gap < 1e-2 else
            "the starting backbone does NOT reproduce the cached features (other weights, "
            "crop or frame size than the feature set's)")
    tqdm.write(f"e2e: first val window, max relative feature difference {gap:.2g}: {note}")


def _resume(run: _Run, ck: dict[str, Any]) -> None:
    """Weights, EMA, optimiser, schedule, best-so-far and RNG of the last finished epoch."""
    run.model.load_state_dict(ck["raw_model"] if run.ema is not None else ck["model"])
    if run.ema is not None:
        run.ema.load_state_dict(ck["ema"])
    run.optim.load_state_dict(ck["optimizer"])
    run.sched.load_state_dict(ck["scheduler"])
    run.start_epoch, run.best_metric, run.best_epoch = (
        ck["epoch"] + 1, ck["best_metric"], ck["best_epoch"])
    _set_rng_state(ck["rng"])


def _epoch_indices(run: _Run, epoch: int) -> list[int]:
    """This rank's training windows of `epoch`, in order."""
    # The shuffle depends only on (seed, epoch), so a resumed run sees the same order.
    order = torch.Generator().manual_seed(run.cfg.train.seed * 100_003 + epoch)
    indices = torch.randperm(len(run.train_ds), generator=order).tolist()
    # Every rank must take the same number of steps (DDP all-reduces each one): wrap around.
    world = run.ddp.world_size
    per_rank = -(-len(indices) // world)
    indices = [indices[i % len(indices)] for i in range(per_rank * world)]
    return indices[run.ddp.rank :: world]


def _train_epoch(run: _Run, epoch: int, epochs: int, progress: bool) -> dict[str, Any]:
    """One pass over this rank's training windows; the epoch's row of metrics.csv so far."""
    cfg = run.cfg
    indices = _epoch_indices(run, epoch)
    run.train_ds.set_epoch(epoch)
    loader = DataLoader(
        torch.utils.data.Subset(run.train_ds, indices),
        batch_size=cfg.train.batch_size,
        shuffle=False,
        collate_fn=collate_windows,
        num_workers=cfg.train.num_workers,
    )
    run.net.train()
    sums: dict[str, float] = {}
    steps = 0
    bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                       enabled=progress and run.ddp.main, log_every_s=None)
    for i, batch in enumerate(bar):
        run.threads.update()  # fewer threads while other processes keep our cores busy
        loss, logs = _losses(run, _to_device(batch, run.device), epoch, steps)
        _backward_and_step(run, loss, i, len(loader))
        steps += 1
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    lr = run.optim.param_groups[0]["lr"]
    run.sched.step()
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_windows": len(indices)}
    row.update({f"train_{k}": v / max(steps, 1) for k, v in sums.items()})
    return row


def _losses(run: _Run, batch: dict[str, Any], epoch: int, step: int
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch's loss and its parts; TrainingDiverged on a NaN or inf output or loss."""
    outputs = run_model(run.net, batch, run.device, run.cfg.data.window, amp=run.cfg.train.amp)
    outputs = {k: v.float() for k, v in outputs.items()}
    bad = [k for k, v in outputs.items() if not torch.isfinite(v).all()]
    if not bad:
        loss, logs = run.criterion(outputs, batch["targets"], batch["dense"],
                                   valid=[m[2] for m in batch["meta"]])
        if not torch.isfinite(loss):
            bad = ["loss"]
    if bad:
        raise TrainingDiverged(
            f"NaN or inf in {', '.join(bad)} at epoch {epoch + 1}, step {step + 1}; "
            f"the last good checkpoint is {run.out / LAST}. Try a lower train.lr or "
            "train.clip_grad."
        )
    return loss, logs


def _backward_and_step(run: _Run, loss: torch.Tensor, i: int, num_batches: int) -> None:
    """Batch i's gradients; an optimiser step after each `train.grad_accum` batches (the last
    group of an epoch may be shorter)."""
    accum = run.cfg.train.grad_accum
    first = i // accum * accum
    group = min(accum, num_batches - first)
    if i == first:
        run.optim.zero_grad(set_to_none=True)
    stepping = i == first + group - 1
    sync = nullcontext() if stepping or run.ddp.world_size == 1 else run.net.no_sync()
    with sync:
        (loss / group if group > 1 else loss).backward()
    if not stepping:
        return
    if run.cfg.train.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(
            [p for p in run.model.parameters() if p.requires_grad], run.cfg.train.clip_grad)
    run.optim.step()
    if run.ema is not None:
        run.ema.update(run.model)


def _validate_and_checkpoint(run: _Run, epoch: int, row: dict[str, Any]) -> None:
    """Val metrics into `row`; best.pt when the selection metric did not get worse."""
    metrics: dict[str, Any] = {}
    if run.val_ds is not None:
        metrics, _ = evaluate_subset(run.final, run.val_ds, run.ann, run.cfg, run.device,
                                     threshold=None)
        row.update({f"val_{k}": metrics[k] for k in ("f1_miga", "f1_strict", "map")})
    current = metrics.get(run.cfg.train.select_metric, -row["train_loss"])
    if current >= run.best_metric:  # ties go to the later, longer-trained epoch
        run.best_metric, run.best_epoch = current, epoch + 1
        save_checkpoint(run.out / BEST, _checkpoint(run, epoch))


def _save_last(run: _Run, epoch: int) -> None:
    """last.pt: everything `--resume` needs to continue after this epoch."""
    state = _checkpoint(run, epoch)
    state.update(optimizer=run.optim.state_dict(), scheduler=run.sched.state_dict(),
                 rng=_rng_state())
    if run.ema is not None:
        state.update(raw_model=run.model.state_dict(), ema=run.ema.state_dict())
    save_checkpoint(run.out / LAST, state)


def _checkpoint(run: _Run, epoch: int) -> dict[str, Any]:
    return {
        "model": run.final.state_dict(),
        "config": config_to_dict(run.cfg),
        "classes": list(run.ann.classes),
        "in_dim": run.in_dim,
        "streams": list(getattr(run.model, "streams", ())),
        "res4_dim": run.res4_dim,
        "epoch": epoch,
        "best_metric": float(run.best_metric),
        "best_epoch": int(run.best_epoch),
    }


def finalize_threshold(out: Path, val_ds: WindowDataset | None, ann: Annotations, cfg: Config,
                       device: torch.device) -> None:
    """Store in best.pt the score threshold that maximises F1 on `val` (never on `test`)."""
    ck = load_checkpoint(out / BEST)
    model = build_model(cfg, ck["in_dim"], len(ck["classes"]), ck["res4_dim"],
                        pretrained=False, streams=tuple(ck.get("streams", ()))).to(device)
    model.load_state_dict(ck["model"])
    threshold = 0.0
    if val_ds is not None:
        metrics, _ = evaluate_subset(model, val_ds, ann, cfg, device, threshold=None)
        threshold = metrics["threshold"]
    ck["threshold"] = float(threshold)
    save_checkpoint(out / BEST, ck)
