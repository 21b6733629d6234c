"""Storage faults in words: a full disk, a read-only or unwritable directory, a quota.

A write that fails deep inside torch, DeepSpeed or transformers says "[Errno 28] No space
left on device" at best, and through torch's zip writer only "[enforce fail at
inline_container.cc:672] . unexpected pos 2880 vs 2772": neither names the disk or how
much room the write wanted, and at 70B a checkpoint is ~1 TB. Here such a failure becomes
one StorageError line: what was being written, the directory, the cause, and for a full
disk the bytes needed against the bytes free. `require_free` refuses a big write that
cannot fit before it starts; `unwritable` probes directories so a wrong path fails at
start-up, not at the first save.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

# The launcher's exit code for a storage failure (sysexits' EX_IOERR): not 75, so Slurm
# does not requeue the job into the same full or read-only disk (slurm/common.sh).
EXIT_STORAGE = 74
CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
          errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied",
          errno.EPERM: "permission denied (operation not permitted)"}
SPACE = (errno.ENOSPC, errno.EDQUOT)
# torch's zip writer (torch.save) drops the errno: "[enforce fail at inline_container.cc:...]",
# "PytorchStreamWriter failed writing file ...", "File ... cannot be opened." or, for a
# directory it may not search, "Parent directory ... does not exist."
_TORCH_WRITER = ("inline_container.cc", "PytorchStreamWriter", "cannot be opened", "Parent directory")
PROBE_BYTES = 64 << 10


class StorageError(UserError):
    """A write failed for a reason outside the program: space, quota, read-only, permissions."""

    def __init__(self, message: str, cause: int | None = None):
        super().__init__(message)
        self.cause = cause


def fmt_bytes(n: float) -> str:
    """Decimal units, as `delia plan` and df -H print them."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def existing(path: str | os.PathLike) -> Path:
    """`path` or its nearest existing ancestor: where a directory not made yet will live."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use on path's filesystem (quotas not counted)."""
    try:
        st = os.statvfs(existing(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def size_on_disk(root: str | os.PathLike, skip: tuple[str, ...] = ()) -> int:
    """Allocated bytes of the files under root (st_blocks, as du counts), leaving out the
    top-level entries named in skip."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == Path(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total


def describe(what: str, directory: str | os.PathLike, cause: int, need: int | None = None,
             free_before: int | None = None, free: int | None = None, note: str = "") -> str:
    line = f"cannot write {what} in {directory}: {CAUSES.get(cause, os.strerror(cause))}"
    if cause in SPACE:
        free = free_bytes(directory) if free is None else free
        room = [f"needs {fmt_bytes(need)}"] if need else []
        if free_before is not None:
            room.append(f"{fmt_bytes(free_before)} free when it began, {fmt_bytes(free or 0)} now")
        elif free is not None:
            room.append(f"{fmt_bytes(free)} free")
        room += [note] if note else []
        line += f" ({', '.join(room)})" if room else ""
    return line


def probe(directory: str | os.PathLike, nbytes: int = PROBE_BYTES) -> int | None:
    """Why a write in `directory` fails (an errno in CAUSES), or None if a small one works.
    Names the cause torch's zip writer hides, and checks a directory at start-up."""
    d = existing(directory)
    name = d / f".delia-probe-{socket.gethostname()}-{os.getpid()}"
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if nbytes:
                os.write(fd, b"\0" * nbytes)
                os.fsync(fd)  # a full disk may only say so when the blocks are allocated
        finally:
            os.close(fd)
    except OSError as e:
        return e.errno if e.errno in CAUSES else None
    finally:
        with contextlib.suppress(OSError):
            name.unlink()
    return None


def cause_of(exc: BaseException, directory: str | os.PathLike, need: int | None = None) -> int | None:
    """The storage cause behind a failed write, or None when it is something else (a bug,
    a lost peer), which must then surface unchanged."""
    seen = exc
    while seen is not None:  # libraries re-raise OSErrors wrapped in their own exceptions
        if isinstance(seen, OSError) and seen.errno in CAUSES:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITER):
        found = probe(directory)
        if found is None and need is not None and (free_bytes(directory) or 0) < need:
            found = errno.ENOSPC
        return found
    return None


def explain(exc: BaseException, what: str, directory: str | os.PathLike, need: int | None = None,
            free_before: int | None = None) -> str:
    """The one line for a failed write: the cause in words when it is a storage fault."""
    cause = cause_of(exc, directory, need)
    if cause is None:
        return f"cannot write {what} in {directory}: {type(exc).__name__}: {exc}"
    return describe(what, directory, cause, need, free_before)


@contextlib.contextmanager
def writing(what: str, directory: str | os.PathLike, need: int | None = None) -> Iterator[None]:
    """Turns a storage fault raised inside into StorageError naming `what` and `directory`;
    anything else passes through untouched. `need`: the bytes the write takes, if known."""
    free_before = free_bytes(directory) if need else None
    try:
        yield
    except StorageError:
        raise
    except (OSError, RuntimeError) as e:
        cause = cause_of(e, directory, need)
        if cause is None:
            raise
        raise StorageError(describe(what, directory, cause, need, free_before), cause) from e


def require_free(what: str, directory: str | os.PathLike, need: int, note: str = "") -> None:
    """Refuse a write of `need` bytes before it starts when the filesystem has less free."""
    free = free_bytes(directory)
    if free is not None and free < need:
        raise StorageError(describe(what, directory, errno.ENOSPC, need, free=free, note=note), errno.ENOSPC)


def unwritable(dirs: dict[str, str | os.PathLike]) -> str | None:
    """The one line for the first of `dirs` ({what: directory}) that cannot be created or
    written, None if all can: a few file creations, so a wrong path fails in seconds. A full
    disk is left to the save's own check, which first removes what retention would."""
    for what, directory in dirs.items():
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"cannot write {what} in {directory}: {CAUSES.get(e.errno, e.strerror or e)} (cannot create it)"
        cause = probe(directory, nbytes=0)
        if cause is not None:
            return describe(what, directory, cause)
    return None


def run_dirs(cfg, is_main: bool) -> dict[str, Path]:
    """What a training rank writes to: every rank the run and checkpoint directories, rank 0
    also the MLflow store when it is local."""
    from .tracking.common import store_dir

    dirs = {"run files": Path(cfg.run_dir), "checkpoints": Path(cfg.checkpoint_dir)}
    store = store_dir(cfg.tracking, Path(cfg.run_dir)) if is_main and cfg.tracking.enabled else None
    if store is not None:
        dirs["the MLflow store"] = store
    return dirs


def raise_first(lines: list[str | None]) -> None:
    """Raise the first failure of an all-gathered list of per-rank lines, on every rank."""
    for line in lines:
        if line:
            raise StorageError(line)
