"""Atomic, resumable, sharded checkpoints.

Layout: <dir>/step_<N>/ holds DeepSpeed's per-rank model and optimizer shards, one
rank_<r>.pt per rank (its RNG states and data-stream position), trainer_state.json (step,
counters, scheduler, tracker run, resolved config), the tokenizer, and COMPLETE.
Everything is written under .tmp-step_<N>; only after every rank finished does rank 0
add COMPLETE, rename the directory and move `latest` (write + os.replace), so a crash
mid-save always leaves the previous checkpoint as the newest loadable one.
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

from . import distributed

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
            (tmp / "trainer_state.json").write_text(json.dumps(shared_state, indent=1))
            tokenizer.save_pretrained(tmp / "tokenizer")
        distributed.barrier()
        if os.environ.get(CRASH_ENV) == str(step):
            os._exit(17)
        final = self.root / tag
        if rank == 0:
            (tmp / "COMPLETE").write_text(str(step))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            latest_tmp = self.root / ".latest.tmp"
            latest_tmp.write_text(tag)
            os.replace(latest_tmp, self.root / "latest")
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
    def load(engine, path: Path, load_optimizer: bool = True) -> tuple[dict, dict]:
        """Collective: restores the engine; returns (this rank's state, shared state)."""
        rank = distributed.rank()
        load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name,
                                              load_optimizer_states=load_optimizer,
                                              load_lr_scheduler_states=False)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
        rank_file = path / f"rank_{rank}.pt"
        if not rank_file.is_file():
            raise FileNotFoundError(f"{rank_file} missing: checkpoint was written by a different world size")
        rank_state = torch.load(rank_file, weights_only=True)
        shared = json.loads((path / "trainer_state.json").read_text())
        return rank_state, shared
