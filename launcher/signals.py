"""Preemption signals become a flag the trainer polls at step boundaries.

Slurm sends USR1 ahead of the time limit (sbatch --signal) and TERM on preemption; a
handler that only sets a flag keeps the rank inside a consistent step, and the trainer
all-reduces the flag so every rank stops at the same step.
"""
from __future__ import annotations

import signal
import threading


class StopFlag:
    def __init__(self):
        self._event = threading.Event()
        self.signal: int | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, signum: int | None = None) -> None:
        self.signal = signum
        self._event.set()

    @classmethod
    def install(cls, signals=(signal.SIGUSR1, signal.SIGTERM)) -> "StopFlag":
        flag = cls()
        for sig in signals:
            signal.signal(sig, lambda signum, frame: flag.set(signum))
        return flag
