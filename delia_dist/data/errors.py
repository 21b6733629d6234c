"""Data errors. A DataError stops the run with a message naming the file and member; a
RecordError is a per-sample problem the reader counts as a skip under its `reason`."""
from __future__ import annotations

from ..errors import UserError


class DataError(UserError):
    """Unusable input (missing or corrupt shard, tokenizer mismatch): names the file."""


class RecordError(ValueError):
    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)
