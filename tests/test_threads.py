"""The thread policy for shared machines (extract/threads.py, issue 29)."""

import os

import pytest
import torch

from extract.threads import (
    ThreadGovernor,
    available_cores,
    busy_seconds,
    cgroup_cpu_limit,
    choose_threads,
)


def _cgroup(tmp_path, text):
    (tmp_path / "cg").mkdir()
    (tmp_path / "cg" / "cpu.max").write_text(text)
    proc = tmp_path / "proc-cgroup"
    proc.write_text("0::/cg\n")
    return tmp_path, proc


def test_cgroup_v2_and_v1_quotas(tmp_path):
    root, proc = _cgroup(tmp_path, "150000 100000\n")
    assert cgroup_cpu_limit(root, proc) == 1.5
    assert available_cores(root, proc) == min(2, len(os.sched_getaffinity(0)))
    (root / "cg" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(root, proc) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1, tmp_path / "none") == 0.5
    assert available_cores(v1, tmp_path / "none") == 1  # never below one core
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1, tmp_path / "none") is None


def test_choose_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert choose_threads(3, cores=16) == 3  # asked for
    assert choose_threads(0, cap=8, cores=16) == 8  # small models stop at the cap
    assert choose_threads(0, cap=None, cores=16) == 16
    assert choose_threads(0, cap=8, ranks=4, cores=16) == 4  # shared among torchrun ranks
    assert choose_threads(0, cap=8, ranks=4, cores=2) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what torchrun sets per rank
    assert choose_threads(0, cores=16) == 1


def test_busy_seconds_sums_only_our_cpus(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal
    stat.write_text("cpu  9 9 9 9 9 9 9 9\n"
                    "cpu0 100 0 50 1000 7 1 2 3 0 0\n"
                    "cpu1 200 0 0 1000 0 0 0 0 0 0\n"
                    "cpu2 999 0 0 0 0 0 0 0 0 0\n"
                    "intr 1 2 3\n")
    hz = os.sysconf("SC_CLK_TCK")
    assert busy_seconds({0, 1}, stat) == pytest.approx((156 + 200) / hz)
    assert busy_seconds({0}, tmp_path / "missing") is None


def test_governor_gives_torch_the_cores_others_leave(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    t = {"now": 0.0, "busy": 0.0, "own": 0.0}
    try:
        g = ThreadGovernor(0, cap=8, cores=4, interval_s=2.0, clock=lambda: t["now"],
                           busy=lambda: t["busy"], own=lambda: t["own"])
        assert g.threads == torch.get_num_threads() == 4

        def tick(seconds, own_cores, other_cores):
            t["now"] += seconds
            t["own"] += seconds * own_cores
            t["busy"] += seconds * (own_cores + other_cores)
            return g.update()

        assert tick(1.0, 4, 3) == 4  # not rechecked before the interval
        assert tick(1.5, 4, 3) == 1  # three cores busy with others: one left
        assert torch.get_num_threads() == 1
        assert tick(2.0, 1, 2) == 2
        assert tick(2.0, 2, 0.2) == 4  # alone again: every core, up to the cap
        # A fixed count is set once and kept.
        f = ThreadGovernor(3, cores=4, clock=lambda: t["now"], busy=lambda: t["busy"],
                           own=lambda: t["own"])
        assert f.threads == torch.get_num_threads() == 3
        t["now"] += 5.0
        t["busy"] += 20.0  # every core busy with others: a fixed count stays
        assert f.update() == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
