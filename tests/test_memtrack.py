"""bench/memtrack.py's live-tensor peak against hand-computed allocation sequences."""


import torch

from bench.memtrack import LiveTensorBytes

MB = 2**20


def test_peak_counts_each_storage_once_and_forgets_freed_ones():
    existing = torch.zeros(MB // 4)  # 1 MiB already alive
    with LiveTensorBytes([existing]) as mem:
        a = torch.ones(2 * MB // 4)  # +2 MiB -> 3
        v = a[: MB // 4]  # a view: no new storage
        v.add_(1)
        del a, v  # -2 MiB -> 1
        b = torch.ones(4 * MB // 4)  # +4 -> 5 MiB: the peak
        c = b * 2  # +4 -> 9 MiB
        del b  # -> 5
        d = c.sum()  # + 4 bytes
    assert mem.peak == 9 * MB
    assert mem.current == 5 * MB + d.untyped_storage().nbytes()
    del c


def test_backward_buffers_are_counted():
    w = torch.randn(256, 256, requires_grad=True)  # 256 KiB
    x = torch.randn(1024, 256)  # 1 MiB
    with LiveTensorBytes([w, x]) as mem:
        y = (x @ w).relu().sum()  # x @ w: 1 MiB, relu: 1 MiB saved for backward
        y.backward()  # w.grad: 256 KiB
    assert w.grad is not None
    assert mem.peak >= 256 * 1024 + MB + 2 * MB
    assert mem.current < mem.peak
