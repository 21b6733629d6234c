"""Experiment matrix: named runs, each a set of overrides on the base config, optionally
repeated per seed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from .errors import ConfigValueError


@dataclass
class RunSpec:
    name: str
    overrides: list[str] = field(default_factory=list)
    # Equal-compute control: train as many optimizer steps as the named run (listed before
    # this one) did; its steps as trained in this matrix, else its resolved train.max_steps.
    # A step count typed twice drifts apart when one of the two is edited.
    steps_from: Optional[str] = None


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
    # Each run repeated once per seed as run "<name>-s<seed>" with train.seed and data.seed
    # set to it (tags group=<name>, seed=<seed>); the report gives the mean and an interval
    # over seeds. Empty: each run once, with the config's own seeds.
    seeds: list[int] = field(default_factory=list)

    def validate(self) -> None:
        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            raise ConfigValueError("runs", f"duplicate run names in {names}")
        for i, r in enumerate(self.runs):
            if r.steps_from is not None and r.steps_from not in names[:i]:
                raise ConfigValueError(
                    "runs", f"{r.name}: steps_from {r.steps_from!r} must name a run listed before it "
                            f"(runs before it: {names[:i]})")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ConfigValueError("seeds", f"must be distinct integers >= 0, got {self.seeds}")
