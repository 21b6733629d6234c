"""Atomic, resumable, sharded checkpoints.

Layout: <dir>/step_<N>/ holds DeepSpeed's per-rank model and optimizer shards, one
rank_<r>.pt per rank (its RNG states and data-stream position), trainer_state.json (step,
counters, scheduler, tracker run, resolved config), the tokenizer, and COMPLETE.
Everything is written under .tmp-step_<N>; each rank fsyncs the files it wrote (on a
shared filesystem only the writing node can flush its cache), then rank 0 fsyncs the whole
directory, adds COMPLETE, renames the directory, fsyncs the parent and moves `latest`
(write, fsync, os.replace, fsync parent). A crash or power cut mid-save always leaves the
previous checkpoint as the newest loadable one. A checkpoint loads on any world size
(checkpoint_elastic.py).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .. import atomic, distributed

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step_(\d+)$")
# Fault injection for the killed-mid-save test: exit after the shards, before the rename.
CRASH_ENV = "DELIA_TEST_CRASH_DURING_SAVE"


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
            "numpy_gauss": [int(np_state[3]), float(np_state[4])],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s: dict) -> None:
    random.setstate((3, tuple(s["python"]), s["python_pos"]))
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"],
                         s["numpy_gauss"][0], s["numpy_gauss"][1]))
    torch.set_rng_state(s["torch"])
    if s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])


def is_complete(path: Path) -> bool:
    return (path / "COMPLETE").is_file()


class CheckpointManager:
    def __init__(self, root: str | os.PathLike, keep_last: int):
        self.root, self.keep_last = Path(root), keep_last

    def complete_steps(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = STEP_DIR.match(p.name)
            if m and is_complete(p):
                found.append((int(m.group(1)), p))
        return sorted(found)

    def resolve(self, resume: str) -> Path | None:
        """The checkpoint to resume from: 'none', 'auto' (newest complete) or a path."""
        if resume == "none":
            return None
        if resume == "auto":
            latest = self.root / "latest"
            if latest.is_file():
                candidate = self.root / latest.read_text().strip()
                if is_complete(candidate):
                    return candidate
                log.warning("%s names %s, which is incomplete; using the newest complete one",
                            latest, candidate.name)
            steps = self.complete_steps()
            return steps[-1][1] if steps else None
        path = Path(resume)
        if not is_complete(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist or is incomplete (no COMPLETE marker)")
        return path

    @distributed.under_io_timeout
    def save(self, engine, step: int, rank_state: dict, shared_state: dict, tokenizer) -> Path:
        """Collective: every rank calls it. Returns the final directory."""
        tag = f"step_{step}"
        tmp_tag = f".tmp-{tag}"
        tmp = self.root / tmp_tag
        rank = distributed.rank()
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier()
        engine.save_checkpoint(str(self.root), tag=tmp_tag, client_state={"step": step},
                               save_latest=False)
        torch.save(rank_state, tmp / f"rank_{rank}.pt")
        if rank == 0:
            shared_state = {**shared_state, "world_size": distributed.world_size()}
            (tmp / "trainer_state.json").write_text(json.dumps(shared_state, indent=1))
            tokenizer.save_pretrained(tmp / "tokenizer")
        _fsync_own_files(tmp, rank)
        distributed.barrier()
        if os.environ.get(CRASH_ENV) == str(step):
            os._exit(17)
        final = self.root / tag
        if rank == 0:
            atomic.fsync_tree(tmp)
            atomic.write_text(tmp / "COMPLETE", str(step))
            if final.exists():
                shutil.rmtree(final)
            atomic.replace(tmp, final)
            atomic.write_text(self.root / "latest", tag)
            self._retain()
        distributed.barrier()
        return final

    def _retain(self) -> None:
        steps = self.complete_steps()
        for _, path in steps[:-self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)
        for p in self.root.glob(".tmp-step_*"):  # leftovers of crashed saves
            shutil.rmtree(p, ignore_errors=True)

    @staticmethod
    @distributed.under_io_timeout
    def load(engine, path: Path, load_optimizer: bool = True) -> tuple[dict, dict]:
        """Collective: restores the engine; returns (this rank's state, shared state).
        At another world size the model and optimizer go through DeepSpeed's universal
        format and the data stream state comes back re-mapped for this rank."""
        from . import elastic

        rank, world = distributed.rank(), distributed.world_size()
        shared = json.loads((path / "trainer_state.json").read_text())
        old_world = elastic.saved_world_size(path, shared)
        if old_world == world:
            load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name,
                                                  load_optimizer_states=load_optimizer,
                                                  load_lr_scheduler_states=False)
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
            rank_state = torch.load(path / f"rank_{rank}.pt", weights_only=True)
            return rank_state, shared
        log.info("checkpoint %s was written by %d ranks; resuming on %d", path.name, old_world, world)
        elastic.ensure_universal(path, rank)
        distributed.barrier()
        elastic.load_universal(engine, path, load_optimizer)
        return elastic.remapped_rank_state(path, old_world, rank, world), shared


def _fsync_own_files(tmp: Path, rank: int) -> None:
    """fsync the files this rank wrote: DeepSpeed's zero_pp_rank_<r>_* shards and rank_<r>.pt
    (rank 0 syncs the shared files in save)."""
    mine = re.compile(rf"(^|_)(pp_)?rank_{rank}(_|\.pt$)")
    for p in tmp.iterdir():
        if p.is_file() and mine.search(p.name):
            atomic.fsync_path(p)
