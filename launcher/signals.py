"""Preemption signals become a flag the trainer polls at step boundaries.

Slurm sends USR1 ahead of the time limit (sbatch --signal, forwarded by the batch script
to srun, which forwards it to every task) and TERM on preemption; a handler that only
sets a flag keeps the rank inside a consistent step, and the trainer all-reduces the
flag so every rank stops at the same step, checkpoints and exits 75.
"""
from __future__ import annotations

import os
import signal
import threading


class StopFlag:
    def __init__(self, rank: int = 0):
        self._event = threading.Event()
        self.rank = rank
        self.signal: int | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self, signum: int | None = None) -> None:
        if not self._event.is_set():
            name = signal.Signals(signum).name if signum else "stop request"
            # os.write, not print: a handler can interrupt a print on the same stream.
            os.write(2, f"[rank {self.rank}] {name}: stopping at the next step boundary "
                        f"to checkpoint\n".encode())
        self.signal = signum
        self._event.set()

    @classmethod
    def install(cls, signals=(signal.SIGUSR1, signal.SIGTERM), rank: int = 0) -> "StopFlag":
        flag = cls(rank)
        for sig in signals:
            signal.signal(sig, lambda signum, frame: flag.set(signum))
        return flag
