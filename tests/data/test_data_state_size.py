"""The stream state stores buffered samples by reference: its size does not grow with
sample length, and stream_state_bytes (what `delia plan` reports) bounds it."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from datakit import data_cfg

from delia_dist.config import load_config
from delia_dist.data import build_train_stream, stream_state_bytes

ROOT = Path(__file__).resolve().parents[2]


def saved_bytes(sd) -> int:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return len(buf.getvalue())


@pytest.mark.parametrize("workers,names", [(1, ("short",)), (2, ("long", "short"))])
def test_state_at_shuffle_buffer_4000_is_small_and_resumes(shard_sets, tiny_tokenizer, workers, names):
    cfg = data_cfg([(n, shard_sets[n], 1 / len(names)) for n in names], shuffle_buffer=4000,
                   num_workers=workers)
    stream = build_train_stream(cfg, tiny_tokenizer, micro_batch_size=2)
    for _ in range(5):
        next(stream)
    sd = stream.state_dict()
    buffered = sum(len(r["buffer"]["member"]) for s in sd["sources"] for r in s["readers"])
    assert buffered >= 0.99 * 4000 * workers * len(names)  # every buffer full (sources repeat)
    size = saved_bytes(sd)
    # before: 3.37 MB for one short-sample source and one worker (token arrays)
    assert size < 400_000 * workers * len(names) / 2
    bound = stream_state_bytes(4000, workers, cfg.seq_len, n_sources=len(names), pack_buffer=cfg.pack_buffer)
    assert size <= bound <= 1.25 * size, (size, bound)

    resumed = build_train_stream(cfg, tiny_tokenizer, micro_batch_size=2)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(10):
        a, b = next(stream), next(resumed)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_llama3_70b_state_arithmetic():
    """configs/llama3_70b.yaml on 8 x 8 H100s: 64 ranks, 4 workers, 2 sources, buffer 100000."""
    cfg = load_config(ROOT / "configs" / "llama3_70b.yaml").data
    ranks = 64
    assert (cfg.shuffle_buffer, cfg.num_workers, len(cfg.sources), cfg.seq_len) == (100_000, 4, 2, 8192)
    args = dict(shuffle_buffer=cfg.shuffle_buffer, num_workers=cfg.num_workers, seq_len=cfg.seq_len,
                n_sources=len(cfg.sources), pack_buffer=cfg.pack_buffer)
    before = stream_state_bytes(**args, tokens_per_sample=1000, by_reference=False)
    after = stream_state_bytes(**args)
    # token arrays of ~1k-token samples: 2 sources x 4 workers x 100000 x 8 kB = 6.4 GB a
    # rank, 410 GB a checkpoint; by reference 16 MB a rank, 1.03 GB a checkpoint
    assert 6.4e9 < before < 6.5e9 and 4.1e11 < before * ranks < 4.2e11
    assert 1.6e7 < after < 1.61e7 and after * ranks < 1.04e9
