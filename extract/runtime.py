"""Where and how a process runs: its device, its torchrun rank, its seeds.

The one place that turns `--device auto|cpu|cuda` into a torch device and reads torchrun's
environment, for every stage.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


class DeviceError(ValueError):
    """The device asked for does not exist on this machine."""


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """auto: CUDA when present, else CPU. A bare "cuda" with `local_rank` (torchrun) means this
    rank's GPU; "cuda:N" is taken as it is."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was asked for but CUDA is not available")
        if name == "cuda" and local_rank is not None:
            name = f"cuda:{local_rank % torch.cuda.device_count()}"
        return torch.device(name)
    if name != "cpu":
        raise DeviceError(f"unknown device {name!r} (auto, cpu or cuda)")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def dist_rank() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) without it."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return rank, world


def all_ranks_ok(ok: bool) -> bool:
    """Wait for every torchrun rank and agree on the outcome (any rank failed -> False).

    torchrun tears down all ranks as soon as one exits non-zero, so a rank that met a broken
    video must not exit before the others have finished their videos. Without torchrun: `ok`.
    """
    _, world = dist_rank()
    if world == 1:
        return ok
    # Ranks may finish hours apart on an uneven shard: the default 30 min would cut them off.
    dist.init_process_group("gloo", timeout=timedelta(days=7))
    try:
        flag = torch.tensor([int(ok)])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())
    finally:
        dist.destroy_process_group()


@dataclass
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed:
        """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
