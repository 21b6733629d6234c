"""Errors the CLI shows as one line (exit code 2) instead of a traceback."""
import os


class UserError(Exception):
    """An expected failure caused by input (bad file, missing checkpoint, bad record)."""


def debug_enabled() -> bool:
    """--debug or DELIA_DEBUG=1: tracebacks also for errors that name their cause."""
    return os.environ.get("DELIA_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
