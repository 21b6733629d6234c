"""Experiment matrix: named runs, each a set of overrides on the base config."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .errors import ConfigValueError


@dataclass
class RunSpec:
    name: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class ExperimentConfig:
    runs: list[RunSpec] = field(default_factory=list)
    backend: Literal["local", "slurm"] = "local"
    # Ranks per run on this machine (local backend).
    nproc: int = 2
    # sbatch script for the slurm backend; gets DELIA_CONFIG and DELIA_OVERRIDES.
    slurm_script: str = "slurm/delia_tiny.sh"
    # Also evaluate model.name_or_path untouched (row "base"): the before-training score.
    eval_base: bool = False

    def validate(self) -> None:
        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            raise ConfigValueError("runs", f"duplicate run names in {names}")
