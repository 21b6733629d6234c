"""Each rank reads only its own partition of DeepSpeed's universal checkpoint.

DeepSpeed's ZeRO-3 universal load (stage3 `load_hp_checkpoint_state`) torch.loads each
parameter's whole fp32, exp_avg and exp_avg_sq file on every rank and then narrows it to the
rank's partition: every rank reads the whole universal copy (70B: ~850 GB per rank, ~54 TB
from the filesystem on 64 ranks). Here the same files are mapped (torch.load mmap=True maps
the zip's tensor data lazily), the kernel's readahead is switched off for the mapping
(MADV_RANDOM: otherwise a fault pulls in up to read_ahead_kb around it, 8 MB on this VM),
and only the rank's partition is copied out. A rank then reads 1/world of each tensor plus
each file's small zip directory and pickle: what `bytes_read` counts.

The partition is DeepSpeed's own (ceil(numel / world) elements per rank, the last padded
with zeros), so what the engine receives is identical; parameters split by tensor or
expert parallelism go to DeepSpeed's reader unchanged.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import mmap
import os
from dataclasses import dataclass

import torch

PAGE = mmap.PAGESIZE
MADV_RANDOM = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) if os.name == "posix" else None


@dataclass
class Reads:
    """What one rank read of the universal files: bytes it brought in, bytes the files hold."""
    bytes_read: int = 0
    bytes_whole: int = 0
    files: int = 0


def _no_readahead(storage: torch.UntypedStorage) -> None:
    """MADV_RANDOM on the pages of a mapped storage: each fault reads only its own page."""
    if _libc is None or storage.nbytes() == 0:
        return
    start = storage.data_ptr() & ~(PAGE - 1)
    _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(storage.data_ptr() + storage.nbytes() - start),
                  MADV_RANDOM)


def _extent(t: torch.Tensor, first: int, count: int) -> int:
    """Bytes of whole pages under elements [first, first + count) of contiguous t."""
    if count <= 0:
        return 0
    lo = t.data_ptr() + first * t.element_size()
    hi = lo + count * t.element_size()
    return (-(-hi // PAGE) - lo // PAGE) * PAGE


def read_partition(path: str, rank: int, world: int, reads: Reads | None = None):
    """Partition `rank` of `world` of the flat tensor in universal file `path` (a fresh
    tensor of ceil(numel / world) elements), or None where the file needs DeepSpeed's own
    reader (a parameter split by expert parallelism, or not one contiguous tensor)."""
    from deepspeed.checkpoint.constants import EP_IS_EXPERT_PARAM, PARAM

    sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    if isinstance(sd, dict) and sd.get(EP_IS_EXPERT_PARAM, False):
        return None
    t = sd[PARAM] if isinstance(sd, dict) else sd
    if not isinstance(t, torch.Tensor) or not t.is_contiguous():
        return None
    _no_readahead(t.untyped_storage())
    flat = t.view(-1)
    n = flat.numel()
    part = math.ceil(n / world)
    first = min(n, rank * part)
    count = min(n, first + part) - first
    out = torch.zeros(part, dtype=flat.dtype)
    out[:count].copy_(flat[first:first + count])
    if reads is not None:
        size = os.path.getsize(path)
        # Whole pages: a small file's page also holds its pickle, so never more than the file.
        reads.bytes_read += min(size, size - t.untyped_storage().nbytes() + _extent(flat, first, count))
        reads.bytes_whole += size
        reads.files += 1
    return out


@contextlib.contextmanager
def sliced_reads(optimizer):
    """While loading a universal checkpoint, `optimizer` (DeepSpeed's ZeRO-3 optimizer) reads
    each file through read_partition; yields the Reads it counts."""
    import deepspeed.comm as dist
    from deepspeed.checkpoint.universal_checkpoint import _get_param_uc_restore_meta

    reads = Reads()
    deepspeed_reader = optimizer.load_hp_checkpoint_state

    def load_hp_checkpoint_state(folder, key, param=None):
        if param is None or not _get_param_uc_restore_meta(param):  # tensor-parallel params: DeepSpeed's
            group = optimizer._get_param_partition_group(param) if param is not None else optimizer.dp_process_group
            part = read_partition(os.path.join(folder, f"{key}.pt"), dist.get_rank(group=group),
                                  dist.get_world_size(group=group), reads)
            if part is not None:
                return part
        return deepspeed_reader(folder, key, param=param)

    optimizer.load_hp_checkpoint_state = load_hp_checkpoint_state
    try:
        yield reads
    finally:
        del optimizer.load_hp_checkpoint_state  # the class's method again
