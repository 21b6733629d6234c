"""Checkpoint section."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import ConfigValueError


@dataclass
class CheckpointConfig:
    # Defaults to <run_dir>/checkpoints.
    dir: Optional[str] = None
    every_steps: int = 500
    keep_last: int = 3
    # auto: newest complete checkpoint if any; none: start fresh; or a checkpoint path.
    resume: str = "auto"
    save_on_exit: bool = True
    # Before each save, compare the room it needs (the previous checkpoint's size, or
    # `delia plan`'s estimate for the first) with the free space, and refuse a save that
    # cannot fit. false: for filesystems whose statvfs does not report real free space.
    check_space: bool = True
    # Aggregate write/read bandwidth of the checkpoint filesystem for one job, GB/s (1e9 B/s).
    # Bounds how long collectives may wait in a save or load (delia_dist/plan/checkpoint.py)
    # and gives `delia plan` its checkpoint seconds. 5: a conservative parallel-filesystem
    # (Lustre, GPFS) figure for 8 nodes; measure yours (e.g. fio or dd of a 10 GB file per node).
    fs_bandwidth_gbps: float = 5.0

    def validate(self) -> None:
        if self.every_steps < 1:
            raise ConfigValueError("every_steps", "must be >= 1")
        if self.keep_last < 1:
            raise ConfigValueError("keep_last", "must be >= 1 (the newest checkpoint is always kept)")
        if not self.fs_bandwidth_gbps > 0:
            raise ConfigValueError("fs_bandwidth_gbps", "must be > 0 (GB/s the checkpoint filesystem writes)")
