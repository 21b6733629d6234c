"""An elastic resume re-maps the data states once: rank 0 reads every old rank's file and
writes one per new rank; every other rank reads only its own (at 70B every rank used to read
64 x ~16 MB and build ~51 M Python tuples)."""
from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from datakit import data_cfg

from delia_dist.checkpoint import elastic
from delia_dist.checkpoint.manager import rng_state
from delia_dist.data import build_train_stream, remap_stream_states


@pytest.fixture
def step_dir(tmp_path, shard_sets, tiny_tokenizer):
    """A step directory's rank_<r>.pt of 2 ranks, saved mid-epoch."""
    cfg = data_cfg([("long", shard_sets["long"], 0.7), ("task", shard_sets["task"], 0.3)])
    states = []
    for rank in range(2):
        s = build_train_stream(cfg, tiny_tokenizer, rank=rank, world_size=2, micro_batch_size=2, num_workers=2)
        for _ in range(3 + rank):
            next(s)
        states.append(s.state_dict())
        torch.save({"rng": rng_state(), "stream": s.state_dict(), "rank": rank}, tmp_path / f"rank_{rank}.pt")
    return tmp_path, states


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def loads(monkeypatch, step) -> Counter:
    """Which files torch.load reads, relative to the step directory."""
    seen = Counter()
    real = torch.load

    def counting(f, *a, **kw):
        seen[Path(f).relative_to(step).as_posix()] += 1
        return real(f, *a, **kw)
    monkeypatch.setattr(torch, "load", counting)
    return seen


def test_rank_zero_remaps_once_and_each_rank_reads_its_own(step_dir, monkeypatch):
    path, old = step_dir
    expected = remap_stream_states(old, 3)
    seen = loads(monkeypatch, path)
    got0 = elastic.remapped_rank_state(path, 2, 0, 3)
    assert sorted(n for n in seen if "rank_states" not in n) == ["rank_0.pt", "rank_1.pt"]
    for r in (1, 2):
        seen.clear()
        got = elastic.remapped_rank_state(path, 2, r, 3)
        assert list(seen) == [f"universal/rank_states_3/rank_{r}.pt"]  # its own file, nothing else
        assert same(got["stream"], expected[r]) and got["rank"] == r % 2  # the RNG of old rank r % 2
    assert same(got0["stream"], expected[0])
    # A later resume at this size reuses the files: rank 0 reads no old state again.
    seen.clear()
    elastic.remapped_rank_state(path, 2, 0, 3)
    assert list(seen) == ["universal/rank_states_3/rank_0.pt"]


def test_ranks_wait_for_rank_zero_and_hear_of_its_failure(step_dir, monkeypatch):
    path, _ = step_dir
    monkeypatch.setenv(elastic.WAIT_ENV, "60")
    got = {}
    waiter = threading.Thread(target=lambda: got.update(r1=elastic.remapped_rank_state(path, 2, 1, 3)))
    waiter.start()  # rank 1 before rank 0 has written anything: it waits on the filesystem
    elastic.remapped_rank_state(path, 2, 0, 3)
    waiter.join(60)
    assert got["r1"]["rank"] == 1

    (path / "rank_1.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        elastic.remapped_rank_state(path, 2, 0, 2)
    with pytest.raises(RuntimeError, match="rank 0 failed to re-map the data states of .* for 2 ranks"):
        elastic.remapped_rank_state(path, 2, 1, 2)
