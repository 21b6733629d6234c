"""Durable writes: a file or directory appears under its final name whole, and stays there
after a power cut.

rename() alone is atomic but not durable: on ext4/xfs/Lustre the data blocks and the new
directory entry can still be in the page cache when the node dies, and the "newest"
checkpoint then holds zero-length files. So: write a temporary, fsync it, rename it, and
fsync the directory that holds the name.

Standard library only: vllm_worker imports it from vLLM's own environment.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_seq = itertools.count()  # next() is atomic under the GIL: threads of one process never share a tmp name


def fsync_path(path: str | os.PathLike) -> None:
    """fsync one file or directory by path (a directory fsync makes its entries durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> int:
    """fsync every file, then every directory bottom-up, under root (root included).
    Returns the number of files synced."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                fsync_path(p)
                n += 1
        fsync_path(dirpath)
    return n


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """os.replace, then fsync the destination's directory so the new name survives a crash."""
    os.replace(src, dst)
    fsync_path(Path(dst).parent)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{next(_seq)}")


@contextlib.contextmanager
def open_for_write(path: str | os.PathLike, mode: str = "w", *, durable: bool = True,
                   **open_kw) -> Iterator[IO]:
    """Stream into a temporary beside `path`; on a clean exit it replaces `path`, on an error
    it is removed and `path` keeps its old content. `durable=False` skips both fsyncs (the
    rename stays atomic, but a power cut may lose the new content): for small files rewritten
    very often whose loss is harmless."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, mode, **open_kw) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if durable:
            replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    with open_for_write(path, "wb", durable=durable) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> None:
    write_bytes(path, text.encode(), durable=durable)
