"""Checkpoints: sharded atomic save/load, elastic resume, reading ZeRO shards, HF export."""
from ..errors import UserError


class CheckpointError(UserError):
    """A step directory that cannot be resumed or read (missing file or part): names the file."""
