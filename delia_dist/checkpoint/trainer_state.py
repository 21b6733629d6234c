"""trainer_state.json, the shared half of a step directory; read and written only here.

Rank 0 writes one JSON document: the step, each shared part's state by name (schedule,
counters, tracker), the records written for readers (resolved config, new-token report)
and the world size that wrote the step. Step directories written before `world_size` was
recorded still resume: their size is the number of rank_<r>.pt files.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import CheckpointError

FILE = "trainer_state.json"
RANK_FILE = re.compile(r"^rank_(\d+)\.pt$")


@dataclass
class TrainerState:
    file: Path
    step: int
    world_size: int  # ranks that wrote the step directory
    parts: dict[str, Any]  # everything else by name: shared parts' states and records

    def part(self, name: str) -> Any:
        if name not in self.parts:
            raise CheckpointError(f"{self.file}: no {name!r} in this checkpoint (it holds {sorted(self.parts)})")
        return self.parts[name]

    def config(self):
        """The resolved config the run was saved with."""
        from ..config import config_from_dict
        return config_from_dict(self.part("config"))


def write(step_dir: Path, step: int, world_size: int, parts: dict[str, Any]) -> None:
    """Written under the step's temporary directory, fsynced with it (see manager.save)."""
    (step_dir / FILE).write_text(json.dumps({"step": step, **parts, "world_size": world_size}, indent=1))


def read(step_dir: Path) -> TrainerState:
    file = step_dir / FILE
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing; {step_dir} is not a delia step directory") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file}: unreadable ({e})") from None
    if not isinstance(raw, dict) or "step" not in raw:
        raise CheckpointError(f"{file}: not a trainer state (no 'step' key)")
    world = raw.pop("world_size", None)
    step = int(raw.pop("step"))
    return TrainerState(file, step, int(world) if world is not None else _counted_world_size(step_dir), raw)


def _counted_world_size(step_dir: Path) -> int:
    ranks = sorted(int(m.group(1)) for p in step_dir.iterdir() if (m := RANK_FILE.match(p.name)))
    if not ranks or ranks != list(range(len(ranks))):
        raise CheckpointError(f"{step_dir}: rank_<r>.pt files are missing or not contiguous: ranks {ranks}")
    return len(ranks)
