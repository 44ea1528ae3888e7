"""How many CPU threads torch uses: a policy for shared machines.

- Thread count: the cores this process may use, its CPU affinity capped by a cgroup CPU quota
  (not `os.cpu_count()`, which counts the whole machine), divided among the ranks of a torchrun
  job, and at most `SMALL_MODEL_CAP` for stage two and the classifier, whose models are too small
  to gain from more.
- Under load, fewer: torch's OpenMP threads spin while they wait for each other, which is what
  makes a small model fast alone (many short parallel regions) and what made `detect train` 4-26x
  slower when another process shared the cores (its spinning threads held cores the other one
  needed; bench/contention.py). `ThreadGovernor` measures, every few seconds, how much of this
  process's cores other processes keep busy, and gives torch only the cores left (at least one).
  One thread has no parallel regions, so nothing spins. Alone, nothing changes.
- `--threads N` (or the config's `train.threads`) fixes the count, and so does
  `OMP_NUM_THREADS`; 0 means the policy.

This module imports torch only inside the functions that set threads.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

SMALL_MODEL_CAP = 8
CGROUP = Path("/sys/fs/cgroup")


def _own_cgroup_v2(root: Path, proc_cgroup: Path) -> Path | None:
    try:
        for line in proc_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                return root / line[3:].lstrip("/")
    except OSError:
        pass
    return None


def cgroup_cpu_limit(root: Path = CGROUP, proc_cgroup: Path = Path("/proc/self/cgroup")
                     ) -> float | None:
    """CPUs the cgroup quota allows (quota / period), or None without a quota.

    cgroup v2: `cpu.max` ("QUOTA PERIOD" or "max PERIOD") of this process's cgroup, else of the
    root; v1: `cpu/cpu.cfs_quota_us` / `cpu.cfs_period_us` (quota -1 = none)."""
    v2 = [p for p in (_own_cgroup_v2(root, proc_cgroup), root) if p is not None]
    for d in v2:
        try:
            quota, period = (d / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        return None if quota == "max" else int(quota) / int(period)
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def available_cores(root: Path = CGROUP, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The cores this process may use: its affinity, capped by the cgroup quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit - 1e-9)))
    return max(1, cores)


def choose_threads(requested: int = 0, cap: int | None = SMALL_MODEL_CAP, ranks: int = 1,
                   cores: int | None = None) -> int:
    """`requested` when > 0; else OMP_NUM_THREADS when the environment sets it (torchrun sets 1
    per rank); else the available cores shared among `ranks`, at most `cap`."""
    fixed = requested if requested > 0 else _env_threads()
    if fixed:
        return fixed
    n = max(1, (cores if cores is not None else available_cores()) // max(1, ranks))
    return min(n, cap) if cap else n


def _env_threads() -> int:
    """OMP_NUM_THREADS when the environment sets it to a positive count, else 0."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() else 0


def _set_torch_threads(n: int) -> int:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def apply_threads(requested: int = 0, cap: int | None = SMALL_MODEL_CAP, ranks: int = 1) -> int:
    """Set torch's intra-op threads by `choose_threads`; returns the number set."""
    return _set_torch_threads(choose_threads(requested, cap, ranks))


def _affinity() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


def busy_seconds(cpus: set[int], stat: Path = Path("/proc/stat")) -> float | None:
    """CPU-seconds the given CPUs have spent busy since boot (all processes), from /proc/stat;
    None where it cannot be read."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    try:
        for line in stat.read_text().splitlines():
            name, *vals = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                v = [int(x) for x in vals[:8]]
                total += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        return None
    return total / hz


class ThreadGovernor:
    """Gives torch the cores other processes leave free, rechecked every `interval_s` seconds
    (module docstring). `update()` is cheap between checks: call it once per batch or video.

    other_load = (busy CPU-seconds of our CPUs - this process's own CPU-seconds) / wall seconds;
    threads = clamp(round(cores - other_load), 1, `most`). With a fixed count (`requested`, or
    OMP_NUM_THREADS) it sets that once and never changes it.
    """

    def __init__(self, requested: int = 0, cap: int | None = SMALL_MODEL_CAP, ranks: int = 1,
                 interval_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 busy: Callable[[], float | None] | None = None,
                 own: Callable[[], float] = time.process_time, cores: int | None = None) -> None:
        cpus = _affinity()
        cores = cores if cores is not None else available_cores()
        self.most = choose_threads(requested, cap, ranks, cores)
        self.fixed = requested > 0 or _env_threads() > 0
        self.cores = cores / max(1, ranks)
        self.interval_s, self.clock, self.own = interval_s, clock, own
        self.busy = busy if busy is not None else (lambda: busy_seconds(cpus))
        self.threads = _set_torch_threads(self.most)
        self.last = (self.clock(), self.busy(), self.own())

    def update(self) -> int:
        """The thread count now (after a recheck when `interval_s` has passed)."""
        if self.fixed:
            return self.threads
        now = self.clock()
        t0, b0, o0 = self.last
        if now - t0 < self.interval_s:
            return self.threads
        b1, o1 = self.busy(), self.own()
        self.last = (now, b1, o1)
        if b0 is None or b1 is None:
            return self.threads
        other = max(0.0, ((b1 - b0) - (o1 - o0)) / (now - t0))
        want = max(1, min(self.most, round(self.cores - other)))
        if want != self.threads:
            self.threads = _set_torch_threads(want)
        return self.threads
