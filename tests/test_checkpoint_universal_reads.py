"""An elastic resume's rank reads its own share of the universal copy from the filesystem.

Measured by the kernel, not by our own counter: each universal file's pages are dropped from
the page cache (fsync + POSIX_FADV_DONTNEED), one rank's partition is read, and mincore()
says which pages came back. DeepSpeed's loader (a whole torch.load per file) brings back
every page; read_partition about 1/world of them."""
from __future__ import annotations

import ctypes
import math
import mmap
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from delia_dist.checkpoint.universal_slices import Reads, read_partition

libc = ctypes.CDLL(None, use_errno=True)
# Sizes that do not divide by 2 or 3 (the last rank's partition is padded), from a few pages
# to several MB (beyond this VM's 8 MB readahead window only with readahead off).
NUMELS = (5_000_003, 1_234_567, 40_001, 7)


def resident_bytes(path: Path) -> int:
    size = path.stat().st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m:
        view = np.frombuffer(m, dtype=np.uint8)
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        assert libc.mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size), vec) == 0
        del view
    return int((np.frombuffer(vec, dtype=np.uint8) & 1).sum()) * mmap.PAGESIZE


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if sum(resident_bytes(p) for p in paths) > 0:
        pytest.skip("this filesystem keeps the files in memory (tmpfs?): page reads cannot be measured")


@pytest.fixture(scope="module")
def universal(tmp_path_factory):
    """Files as DeepSpeed's ds_to_universal writes them: {'param': tensor} per state."""
    root = tmp_path_factory.mktemp("universal")
    g = torch.Generator().manual_seed(0)
    files = {}
    for i, n in enumerate(NUMELS):
        t = torch.randn(n, generator=g)
        path = root / f"p{i}" / "fp32.pt"
        path.parent.mkdir()
        torch.save({"param": t.view(-1, 1) if n % 2 else t}, path)
        files[path] = t
    return files


def deepspeed_partition(flat: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """stage3.load_hp_checkpoint_state's arithmetic: pad to world * ceil(n / world), narrow."""
    part = math.ceil(flat.numel() / world)
    padded = torch.cat([flat, torch.zeros(world * part - flat.numel())])
    return padded.narrow(0, rank * part, part)


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_reads_about_its_share_from_the_filesystem(universal, world):
    paths = list(universal)
    whole = sum(p.stat().st_size for p in paths)
    big = sum(p.stat().st_size for p in paths if p.stat().st_size > 1 << 20)
    for rank in range(world):
        drop_cache(paths)
        reads = Reads()
        for p, t in universal.items():
            got = read_partition(str(p), rank, world, reads)
            assert torch.equal(got, deepspeed_partition(t, rank, world))
        fetched = sum(resident_bytes(p) for p in paths)
        # The files' own pages: about a 1/world share of the large tensors (the small files
        # are a page or two that every rank needs), never the whole.
        assert fetched < big / world + 64 * 4096 * len(paths), (rank, fetched, whole)
        assert fetched < 0.75 * whole if world == 3 else fetched < 0.6 * whole
        # What the loader reports (the line rank 0 logs) agrees with the kernel's count.
        assert reads.bytes_whole == whole and reads.files == len(paths)
        assert abs(reads.bytes_read - fetched) < 64 * 4096 * len(paths), (reads.bytes_read, fetched)


def test_deepspeeds_own_read_brings_back_the_whole_file(universal):
    """The measure can see the difference: a whole torch.load (DeepSpeed's reader) fetches
    every page of every file."""
    paths = list(universal)
    drop_cache(paths)
    for p in paths:
        torch.load(p, weights_only=True)
    whole = sum(p.stat().st_size for p in paths)
    assert sum(resident_bytes(p) for p in paths) >= 0.99 * whole
