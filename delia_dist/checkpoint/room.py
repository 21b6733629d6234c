"""Will the next checkpoint fit? Checked before a save writes anything.

At 70B a checkpoint is ~1 TB, and a save that fills the disk halfway wastes the time to
write it and ends the job in the middle of a step. So before each save rank 0 removes
what retention would remove after it (leftovers of failed saves, complete checkpoints
beyond keep_last, but never the newest: it stays `latest` until the new one is
complete), then compares the room the save needs with the free space: the previous
checkpoint's size on disk, or `delia plan`'s estimate for the first. A save that cannot
fit fails on every rank with one line and writes nothing; one that fails anyway (the
estimate was low, another job filled the disk) is named the same way by storage.writing.
Quotas are not visible to statvfs: a quota hit is named when the write fails.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator

from .. import distributed, storage
from .elastic import UNIVERSAL

log = logging.getLogger(__name__)


@contextlib.contextmanager
def for_checkpoint(manager, step: int, cfg, world: int) -> Iterator[None]:
    """Collective: every rank enters it around CheckpointManager.save."""
    what = f"checkpoint step_{step}"
    need, problem = None, None
    if distributed.rank() == 0:
        try:  # advisory: whatever goes wrong here must not leave the other ranks waiting in the broadcast
            need = _make_room(manager, cfg, world)
        except Exception as e:  # noqa: BLE001
            log.warning("could not size %s (%s: %s); saving without the free-space check", what, type(e).__name__, e)
        if need and cfg.checkpoint.check_space:
            try:
                storage.require_free(what, manager.root, need, note=_note(manager))
            except storage.StorageError as e:
                problem = str(e)
    need, problem = distributed.broadcast_object((need, problem))
    if problem:
        raise storage.StorageError(problem)
    with storage.writing(what, manager.root, need):
        yield


def _make_room(manager, cfg, world: int) -> int | None:
    """Remove what retention removes after this save anyway; return the bytes it needs."""
    for p in manager.root.glob(".tmp-step_*"):  # leftovers of failed saves
        shutil.rmtree(p, ignore_errors=True)
    steps = manager.complete_steps()
    for _, path in steps[:-max(manager.keep_last - 1, 1)]:
        shutil.rmtree(path, ignore_errors=True)
    if steps:
        return storage.size_on_disk(steps[-1][1], skip=(UNIVERSAL,))
    from ..plan import PlanError, checkpoint_bytes
    try:
        return checkpoint_bytes(cfg, world)
    except (PlanError, OSError, ValueError) as e:
        log.warning("no size estimate for the first checkpoint (%s); free space is checked from the second", e)
        return None


def _note(manager) -> str:
    steps = manager.complete_steps()
    kept = f"{steps[-1][1].name} kept as latest" if steps else "no earlier checkpoint"
    return f"{kept}; nothing written: free space, lower checkpoint.keep_last or move checkpoint.dir"
