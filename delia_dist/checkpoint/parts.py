"""The run's stateful parts, declared once by name, and the RNG adapter.

A checkpoint is the engine's own shard files plus named parts, each with state_dict /
load_state_dict. Per-rank parts differ between ranks (RNG streams, data-stream position)
and go to rank_<r>.pt; shared parts are the same on every rank (lr schedule, counters,
tracker run) and go to trainer_state.json from rank 0; records (resolved config, new-token
report) are written for readers (export, the next run's config) and never loaded back. A
part missing from a checkpoint is an error naming the part and the file, not a silent
fresh start of that part.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from . import CheckpointError


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


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


class RNG:
    """Python, numpy, torch and CUDA generators as one part: DeepSpeed does not save them, and
    without them dropout diverges after a resume. Tensors only, so torch.load(weights_only)."""

    def state_dict(self) -> dict:
        return rng_state()

    def load_state_dict(self, state: dict) -> None:
        set_rng_state(state)


@dataclass
class Parts:
    per_rank: dict[str, Stateful] = field(default_factory=dict)
    shared: dict[str, Stateful] = field(default_factory=dict)
    records: dict[str, Callable[[], Any]] = field(default_factory=dict)

    def __post_init__(self):
        names = [*self.per_rank, *self.shared, *self.records]
        if len(set(names)) != len(names) or {"step", "world_size"} & set(names):
            raise ValueError(f"checkpoint part names must be unique and not step/world_size: {names}")

    def state_dicts(self) -> tuple[dict, dict]:
        """(this rank's states, the shared states and records)."""
        return ({n: p.state_dict() for n, p in self.per_rank.items()},
                {**{n: p.state_dict() for n, p in self.shared.items()}, **{n: f() for n, f in self.records.items()}})

    def load_state_dicts(self, rank_state: dict, rank_file: Path | str, shared: dict, shared_file: Path | str) -> None:
        """Per-rank parts first, in declared order, then shared ones; records are not loaded."""
        for states, parts, file in ((rank_state, self.per_rank, rank_file), (shared, self.shared, shared_file)):
            for name, part in parts.items():
                if name not in states:
                    raise CheckpointError(f"{file}: no {name!r} part in this checkpoint (it holds {sorted(states)})")
                part.load_state_dict(states[name])
