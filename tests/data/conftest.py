"""Data-test fixtures (helpers live in datakit.py)."""
from __future__ import annotations

import pytest
from datakit import chat_records, task_records, write_shards


@pytest.fixture(scope="session")
def shard_sets(tmp_path_factory, tiny_tokenizer):
    """Three sources: two diverse chat sets of different lengths, one small downstream set."""
    root = tmp_path_factory.mktemp("shards")
    return {
        "long": write_shards(root / "long", tiny_tokenizer, chat_records(300, seed=1, mean_words=30)),
        "short": write_shards(root / "short", tiny_tokenizer, chat_records(300, seed=2, mean_words=6)),
        "task": write_shards(root / "task", tiny_tokenizer, task_records(40), max_shard_bytes=1 << 30),
    }


