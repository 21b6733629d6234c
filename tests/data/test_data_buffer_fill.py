"""Shuffle buffers fill before step 1, on every rank and for every source, so that no step
reads a whole buffer when the mixer first draws from a rare source (at different steps on
different ranks, which the others would wait for in the step's all-reduce)."""
from __future__ import annotations

import logging

import pytest
import torch
from datakit import data_cfg, roundtrip

from delia_dist.data import build_train_stream

BUFFER = 32


def cfg_of(shard_sets):
    # The 70B config's shape: a large diverse source and a downstream one at a tiny weight.
    return data_cfg([("long", shard_sets["long"], 0.97), ("task", shard_sets["task"], 0.03)],
                    shuffle_buffer=BUFFER)


def build(cfg, tok, rank=0, world=2):
    return build_train_stream(cfg, tok, rank=rank, world_size=world, micro_batch_size=2, num_workers=2)


def reads_per_draw(stream, n_batches: int) -> dict[str, int]:
    """The most shard samples any one draw from each source read while making n batches."""
    most = {}
    for source in stream.sources:
        for reader in source.readers:
            raw, nxt = reader._next_raw, reader.next
            count = [0]

            def counted_raw(raw=raw, count=count):
                count[0] += 1
                return raw()

            def counted_next(nxt=nxt, count=count, name=source.policy.name):
                count[0] = 0
                try:
                    return nxt()
                finally:
                    most[name] = max(most.get(name, 0), count[0])
            reader._next_raw, reader.next = counted_raw, counted_next
    for _ in range(n_batches):
        next(stream)
    return most


@pytest.mark.parametrize("rank", [0, 1])
def test_every_buffer_is_full_before_the_first_step(shard_sets, tiny_tokenizer, rank, caplog):
    cfg = cfg_of(shard_sets)
    lazy = reads_per_draw(build(cfg, tiny_tokenizer, rank), 20)
    # Without the fill, the first draw from each source reads its whole buffer: the stall.
    assert lazy["task"] >= BUFFER and lazy["long"] >= BUFFER

    stream = build(cfg, tiny_tokenizer, rank)
    with caplog.at_level(logging.INFO, logger="delia_dist.data"):
        held = stream.fill_buffers()
    assert held == {"long": 2 * BUFFER, "task": 2 * BUFFER}
    assert all(len(r.buffer) == BUFFER for s in stream.sources for r in s.readers)
    assert any("shuffle buffers filled before step 1" in m for m in caplog.messages)
    most = reads_per_draw(stream, 20)
    assert "task" in most  # the rare source was drawn from in these steps
    assert max(most.values()) <= 1, most  # each draw tops up one sample, no more


def test_filled_stream_yields_the_same_batches_and_resumes_exactly(shard_sets, tiny_tokenizer):
    cfg = cfg_of(shard_sets)
    K, M = 7, 25
    lazy = build(cfg, tiny_tokenizer)
    full = [next(lazy) for _ in range(K + M)]
    filled = build(cfg, tiny_tokenizer)
    filled.fill_buffers()
    first = [next(filled) for _ in range(K)]
    resumed = build(cfg, tiny_tokenizer)
    resumed.load_state_dict(roundtrip(filled.state_dict()))
    resumed.fill_buffers()  # what the trainer does after a resume
    for a, b in zip(full, first + [next(resumed) for _ in range(M)]):
        assert all(torch.equal(a[k], b[k]) for k in a)
