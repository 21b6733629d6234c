"""Count tensor memory on any device, CPU included, where torch keeps no allocator stats.

A TorchDispatchMode sees every tensor an aten op returns; a weakref finalizer on its
storage sees the storage die. The sum of live storages is exact for tensors (it leaves
out allocator slack and library scratch space such as a BLAS workspace), which is what
"this loss never holds N x V logits" is about.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemoryTracker(TorchDispatchMode):
    """Inside `with TensorMemoryTracker() as m:`, m.peak_bytes is the most bytes of storage
    created inside the block and alive at once; m.max_numel the largest tensor made
    (views of existing storage do not count). With record_min_numel, m.made lists
    (op, dtype, shape) of every tensor of at least that many elements made in the block."""

    def __init__(self, record_min_numel: int | None = None):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self.max_numel = 0
        self.max_shape: tuple = ()
        self.record_min_numel = record_min_numel
        self.made: list[tuple[str, torch.dtype, tuple]] = []
        self._live: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # In-place and out= ops return an input's storage: it was not allocated here.
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                  if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._live or key in inputs:
                continue  # a view or in-place result, or a storage already counted
            if t.numel() > self.max_numel:
                self.max_numel, self.max_shape = t.numel(), tuple(t.shape)
            if self.record_min_numel is not None and t.numel() >= self.record_min_numel:
                self.made.append((str(func), t.dtype, tuple(t.shape)))
            self._live.add(key)
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(storage, self._free, key, nbytes)
        return out

    def _free(self, key: int, nbytes: int) -> None:
        if key in self._live:
            self._live.discard(key)
            self.live_bytes -= nbytes
