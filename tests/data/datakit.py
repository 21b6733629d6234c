"""Data-test helpers: chat and downstream records with long-tailed lengths, shard writing.

A module of its own (not conftest) so tests can import it by a unique name."""
from __future__ import annotations

import io
import random

import torch

from delia_dist.config import DataConfig, SourceConfig
from delia_dist.data import ShardWriter
from delia_dist.model.tiny import _WORDS

INSTRUCTION = 'Translate to English:\n{source}\nAnswer as {"text": ...}'


def words(rng, n):
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def chat_records(n, seed=0, mean_words=12):
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": words(rng, rng.randint(2, 10))},
                          {"role": "assistant",
                           "content": words(rng, max(1, int(rng.lognormvariate(0, 0.8) * mean_words)))}],
             "meta": {"i": i}} for i in range(n)]


def task_records(n, seed=1):
    rng = random.Random(seed)
    return [{"instruction": INSTRUCTION, "fields": {"source": words(rng, rng.randint(3, 12))},
             "response": words(rng, rng.randint(2, 8)), "meta": {"i": i}} for i in range(n)]


def write_shards(out_dir, tokenizer, records, max_shard_bytes=16_000):
    with ShardWriter(out_dir, tokenizer, max_shard_bytes=max_shard_bytes) as w:
        for r in records:
            w.write(r)
    return out_dir / "manifest.json"


def data_cfg(sources, **kw):
    """sources: [(name, manifest, weight, extra SourceConfig kwargs)]."""
    cfg = DataConfig(sources=[SourceConfig(name=n, shards=str(m), weight=w, **(x[0] if x else {}))
                              for n, m, w, *x in sources], **{"seq_len": 128, "shuffle_buffer": 32,
                                                             "pack_buffer": 16, **kw})
    cfg.validate()
    return cfg


def roundtrip(sd):
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would."""
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)
