"""Peak live tensor memory on any device, the CPU analogue of `torch.cuda.max_memory_allocated`.

Peak RSS (what bench/model.py also reports) includes the interpreter and torch's own libraries
(about 0.7 GiB for the CUDA build) and the C allocator's fragmentation, which grows over steps;
neither says what a model needs. `LiveTensorBytes` counts the bytes of every distinct tensor
storage alive while it is active: storages that exist when it starts (parameters, optimizer
state) plus every storage an operator returns, each counted once (views share a storage), and
dropped when the storage is freed. Buffers an operator allocates and frees inside itself are not
seen; they are not held across operators.

    with LiveTensorBytes([model.parameters(), grads, optimizer state]) as mem:
        step()
    mem.peak  # bytes
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    def __init__(self, existing: Iterable[Any] = ()) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        for t in tree_leaves(list(existing)):
            self._add(t)
        self.peak = self.current

    def _add(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor):
            return
        s = t.untyped_storage()
        key = s._cdata
        # A freed storage's address can be reused by a new one: drop the expired entry first.
        old = self._live.get(key)
        if old is not None and not old[0].expired():
            return
        self._live[key] = (StorageWeakRef(s), s.nbytes())

    def _sweep(self) -> int:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            del self._live[key]
        return sum(n for _, n in self._live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            self._add(t)
        # Peaks happen right after an allocation, so measuring after every operator is exact
        # up to operator-internal buffers.
        self.current = self._sweep()
        self.peak = max(self.peak, self.current)
        return out
