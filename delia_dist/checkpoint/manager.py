"""Atomic, resumable, sharded checkpoints composed from the run's stateful parts.

Layout: <dir>/step_<N>/ holds DeepSpeed's per-rank model and optimizer shards (the engine
part), one rank_<r>.pt per rank (the per-rank parts: RNG states, data-stream position),
trainer_state.json (step, shared parts, records, world size; trainer_state.py), the
tokenizer, and COMPLETE. The parts are declared once (parts.Parts) and composed here:
save_step/restore for the trainer, over save/load, the single entry points that write and
read a step directory.

Everything is written under .tmp-step_<N>; each rank fsyncs the files it wrote (on a
shared filesystem only the writing node can flush its cache), then rank 0 fsyncs the whole
directory, adds COMPLETE, renames the directory, fsyncs the parent and moves `latest`
(write, fsync, os.replace, fsync parent). A crash or power cut mid-save always leaves the
previous checkpoint as the newest loadable one. A checkpoint loads on any world size: only
the engine's load and the per-rank states differ (elastic.py), the rest is one path.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import torch

from .. import atomic, distributed
from . import CheckpointError, trainer_state
from .parts import Parts, rng_state  # noqa: F401  (rng_state: tools import it from here)
from .trainer_state import TrainerState

log = logging.getLogger(__name__)
STEP_DIR = re.compile(r"^step_(\d+)$")
# Fault injection for the killed-mid-save test: exit after the shards, before the rename.
CRASH_ENV = "DELIA_TEST_CRASH_DURING_SAVE"


def is_complete(path: Path) -> bool:
    return (path / "COMPLETE").is_file()


class EngineShards:
    """The engine part (model + optimizer in DeepSpeed). It has no state_dict here: a 70B
    one would be gathered on each rank, so DeepSpeed writes and reads its own per-rank shard
    files. At another world size they load through the universal format (elastic.py)."""

    def __init__(self, engine):
        self.engine = engine

    def save(self, root: Path, tag: str, step: int) -> None:
        self.engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)

    def load(self, path: Path, load_optimizer: bool) -> None:
        """At the world size that wrote `path`."""
        load_path, _ = self.engine.load_checkpoint(str(path.parent), tag=path.name,
                                                   load_optimizer_states=load_optimizer, load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")

    def load_universal(self, path: Path, load_optimizer: bool) -> None:
        """At another world size: rank 0 converts `path` once, every rank loads its share."""
        from . import elastic
        elastic.ensure_universal(path, distributed.rank())
        distributed.barrier()
        elastic.load_universal(self.engine, path, load_optimizer)


class CheckpointManager:
    """Where step directories live (resolve, retention), how one is written and read
    (save, load), and, once composed with the run's parts, saving and restoring the run."""

    def __init__(self, root: str | os.PathLike, keep_last: int):
        self.root, self.keep_last = Path(root), keep_last
        self.engine = self.tokenizer = self.parts = None

    def compose(self, engine, tokenizer, parts: Parts) -> None:
        """The run's parts, declared once: save_step and restore handle each by its name."""
        self.engine, self.tokenizer, self.parts = engine, tokenizer, parts

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

    def save_step(self, step: int) -> Path:
        """Collective: the composed parts' states at `step`, saved."""
        rank_state, shared = self.parts.state_dicts()
        return self.save(self.engine, step, rank_state, shared, self.tokenizer)

    def restore(self, path: Path) -> TrainerState:
        """Collective: every composed part back as saved in `path`, at this or another world
        size. Returns the saved trainer state (its step, world size and records)."""
        rank_state, saved = self.load(self.engine, path)
        rank_file = (path / f"rank_{distributed.rank()}.pt" if saved.world_size == distributed.world_size()
                     else f"{path}/rank_*.pt (re-mapped from {saved.world_size} ranks)")
        self.parts.load_state_dicts(rank_state, rank_file, saved.parts, saved.file)
        return saved

    @distributed.under_io_timeout
    def save(self, engine, step: int, rank_state: dict, shared_state: dict, tokenizer) -> Path:
        """Collective: every rank calls it. rank_state is this rank's; shared_state is taken
        from rank 0. Returns the final directory."""
        tag = f"step_{step}"
        tmp_tag = f".tmp-{tag}"
        tmp = self.root / tmp_tag
        rank = distributed.rank()
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier()
        EngineShards(engine).save(self.root, tmp_tag, step)
        torch.save(rank_state, tmp / f"rank_{rank}.pt")
        if rank == 0:
            trainer_state.write(tmp, step, distributed.world_size(), shared_state)
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
    def load(engine, path: Path, load_optimizer: bool = True) -> tuple[dict, TrainerState]:
        """Collective: restores the engine; returns (this rank's states, the shared trainer
        state). Same size and another size differ only here: in how the engine loads and in
        where this rank's states come from (its own rank file, or every old rank's re-mapped)."""
        from . import elastic

        rank, world = distributed.rank(), distributed.world_size()
        saved = trainer_state.read(path)
        shards = EngineShards(engine)
        if saved.world_size == world:
            shards.load(path, load_optimizer)
            return _read_rank_file(path / f"rank_{rank}.pt"), saved
        log.info("checkpoint %s was written by %d ranks; resuming on %d", path.name, saved.world_size, world)
        shards.load_universal(path, load_optimizer)
        return elastic.remapped_rank_state(path, saved.world_size, rank, world), saved


def _read_rank_file(file: Path) -> dict:
    try:
        return torch.load(file, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing (each rank resumes its RNG and data position from it)") from None


def _fsync_own_files(tmp: Path, rank: int) -> None:
    """fsync the files this rank wrote: DeepSpeed's zero_pp_rank_<r>_* shards and rank_<r>.pt
    (rank 0 syncs the shared files in save)."""
    mine = re.compile(rf"(^|_)(pp_)?rank_{rank}(_|\.pt$)")
    for p in tmp.iterdir():
        if p.is_file() and mine.search(p.name):
            atomic.fsync_path(p)
