"""What the benchmarks print about the machine, in one place (imported by name: bench scripts
run as `python bench/X.py`, so bench/ is on sys.path)."""
from __future__ import annotations

import platform
import subprocess


def cpu_model() -> str:
    """lscpu's 'Model name' (platform.processor() is often empty or just 'x86_64')."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
