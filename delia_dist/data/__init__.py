"""Streaming training data: shards -> per-rank readers -> token-budget mixer -> packer.

`ShardWriter` writes tokenized webdataset shards with a manifest; `build_train_stream`
returns the resumable stream of packed micro-batches the trainer consumes.
"""
from .errors import DataError, RecordError
from .shards import ShardWriter
from .stream import TrainStream, build_train_stream

__all__ = ["DataError", "RecordError", "ShardWriter", "TrainStream", "build_train_stream"]
