"""Durable writes: a file or directory appears under its final name whole, and stays there
after a power cut.

rename() alone is atomic but not durable: on ext4/xfs/Lustre the data blocks and the new
directory entry can still be in the page cache when the node dies, and the "newest"
checkpoint then holds zero-length files. So: write a temporary, fsync it, rename it, and
fsync the directory that holds the name.
"""
from __future__ import annotations

import os
from pathlib import Path


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


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())
