"""Streaming training data: shards -> per-rank readers -> token-budget mixer -> packer.

`ShardWriter` writes tokenized webdataset shards with a manifest; `build_train_stream`
returns the resumable stream of packed micro-batches the trainer consumes.

Stored ids vs. the training tokenizer: every shard keeps the record JSON beside its ids.
Ids are used as stored when the manifest's tokenizer fingerprint equals the training
tokenizer's. When the training tokenizer only *added* tokens since sharding (the trainer
adds <sep> etc. before building the stream), stored ids stay valid for every record that
does not contain an added token's text; those that do are re-tokenized on read (a bytes
search of the record JSON, so the large diverse corpus keeps its stored ids). Sources
with paraphrases re-tokenize each sample whose instruction has paraphrases (downstream
data is small). Any other fingerprint difference is an error naming both tokenizers.
"""
from .errors import DataError, RecordError
from .refs import stream_state_bytes
from .remap import remap_stream_states
from .shards import ShardWriter
from .stream import TrainStream, build_train_stream

__all__ = ["DataError", "RecordError", "ShardWriter", "TrainStream", "build_train_stream",
           "remap_stream_states", "stream_state_bytes"]
