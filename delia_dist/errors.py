"""Errors the CLI shows as one line (exit code 2) instead of a traceback."""


class UserError(Exception):
    """An expected failure caused by input (bad file, missing checkpoint, bad record)."""
