"""Elastic resume of the data stream: a mid-epoch state of N ranks continued on M ranks
trains every sample of the epoch exactly once, and the mix carries on."""
from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
import torch
from datakit import data_cfg

from delia_dist.data import DataError, build_train_stream, remap_stream_states

WORKERS = 2


def roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def sample_keys(batch):
    """Each packed segment's token ids: one whole sample (split_samples is off)."""
    ids, seg = batch["input_ids"].numpy(), batch["segment_ids"].numpy()
    for r in range(ids.shape[0]):
        for k in range(1, int(seg[r].max()) + 1):
            yield tuple(ids[r][seg[r] == k].tolist())


def streams(cfg, tok, world, states=None):
    out = []
    for rank in range(world):
        s = build_train_stream(cfg, tok, rank=rank, world_size=world, micro_batch_size=2,
                               num_workers=WORKERS)
        if states is not None:
            s.load_state_dict(roundtrip(states[rank]))
        out.append(s)
    return out


def run(stream, n, keys):
    for _ in range(n):
        try:
            keys.update(sample_keys(next(stream)))
        except StopIteration:
            return


@pytest.mark.parametrize("source,steps,pack", [("long", 3, "best_fit"), ("task", 2, "none")])
@pytest.mark.parametrize("worlds", [(2, 1), (1, 2), (2, 3), (2, 3, 1)])
def test_resized_epoch_trains_each_sample_once(shard_sets, tiny_tokenizer, source, steps, pack, worlds):
    """'long' has more shards than slots (shards dealt out), 'task' one shard (split by member)."""
    cfg = data_cfg([(source, shard_sets[source], 1.0, {"on_exhausted": "stop"})], seq_len=256, pack=pack)
    full = Counter()
    run(streams(cfg, tiny_tokenizer, 1)[0], 10**6, full)
    assert sum(full.values()) == json.loads(shard_sets[source].read_text())["samples"]

    trained = Counter()
    ranks = streams(cfg, tiny_tokenizer, worlds[0])
    for world in worlds[1:]:
        for s in ranks:
            run(s, steps, trained)
        assert max(trained.values()) == 1
        states = remap_stream_states([s.state_dict() for s in ranks], world)
        assert [st["layout"]["world_size"] for st in states] == [world] * world
        ranks = streams(cfg, tiny_tokenizer, world, states)
    assert 0 < sum(trained.values()) < sum(full.values()) * 0.6  # the changes came mid-epoch
    for s in ranks:
        run(s, 10**6, trained)
    assert trained == full


def token_shares(batches, n_sources):
    src = np.concatenate([b["source_ids"].numpy().ravel() for b in batches])
    counts = np.bincount(src[src >= 0], minlength=n_sources)
    return counts / counts.sum()


def test_token_shares_carry_on_across_resize(shard_sets, tiny_tokenizer):
    weights = {"long": 0.7, "short": 0.3}
    cfg = data_cfg([(n, shard_sets[n], w) for n, w in weights.items()], mix_tolerance=0.02, mix_window=200)
    old = streams(cfg, tiny_tokenizer, 2)
    before = [[next(s) for _ in range(60)] for s in old]
    states = remap_stream_states([s.state_dict() for s in old], 3)
    new = streams(cfg, tiny_tokenizer, 3, states)
    after = [[next(s) for _ in range(cfg.mix_window // 2)] for s in new]  # 2 rows a batch
    for rows in after + [before[0][-50:] + after[0][:50]]:
        shares = token_shares(rows, 2)
        assert np.abs(shares - list(weights.values())).max() <= cfg.mix_tolerance, shares
    # the per-source counters carry on summed over ranks
    tokens = [sum(s.stats()[n]["tokens"] for s in new) for n in weights]
    st_old = [sum(s.stats()[n]["tokens"] for s in old) for n in weights]
    assert all(t > o for t, o in zip(tokens, st_old))


def test_same_world_size_is_unchanged(shard_sets, tiny_tokenizer):
    cfg = data_cfg([("long", shard_sets["long"], 1.0)])
    a = streams(cfg, tiny_tokenizer, 2)
    for s in a:
        run(s, 3, Counter())
    states = remap_stream_states([s.state_dict() for s in a], 2)
    b = streams(cfg, tiny_tokenizer, 2, states)
    for x, y in zip(a, b):
        for _ in range(5):
            bx, by = next(x), next(y)
            assert all(torch.equal(bx[k], by[k]) for k in bx)


def test_changed_sources_or_seq_len_name_the_difference(shard_sets, tiny_tokenizer):
    cfg = data_cfg([("long", shard_sets["long"], 0.5), ("short", shard_sets["short"], 0.5)])
    old = streams(cfg, tiny_tokenizer, 2)
    states = remap_stream_states([s.state_dict() for s in old], 1)
    other_len = data_cfg([("long", shard_sets["long"], 0.5), ("short", shard_sets["short"], 0.5)],
                         seq_len=256)
    with pytest.raises(DataError, match=r"seq_len: checkpoint 128, config 256"):
        streams(other_len, tiny_tokenizer, 1, states)
    other_src = data_cfg([("long", shard_sets["long"], 0.5), ("task", shard_sets["task"], 0.5)])
    with pytest.raises(DataError, match=r"sources: checkpoint \['long', 'short'\], config \['long', 'task'\]"):
        streams(other_src, tiny_tokenizer, 1, states)
    with pytest.raises(DataError, match="out of order"):
        remap_stream_states([old[1].state_dict(), old[0].state_dict()], 1)


@pytest.mark.parametrize("new_world", [1, 3])
def test_resize_while_slots_are_in_different_epochs(shard_sets, tiny_tokenizer, new_world):
    """Slots with fewer shards start epoch 1 while others still read epoch 0: the rest of
    both epochs is dealt out, so over 2 epochs every sample is trained exactly twice."""
    cfg = data_cfg([("long", shard_sets["long"], 1.0, {"max_epochs": 2})], seq_len=256, pack="none",
                   shuffle_buffer=4)
    full = Counter()
    run(streams(cfg, tiny_tokenizer, 1)[0], 10**6, full)
    assert set(full.values()) == {2}

    trained = Counter()
    old = streams(cfg, tiny_tokenizer, 2)
    for _ in range(400):
        for s in old:
            run(s, 1, trained)
        epochs = {r["epoch"] for s in old for r in s.state_dict()["sources"][0]["readers"]}
        if len(epochs) > 1:
            break
    assert epochs == {0, 1}
    new = streams(cfg, tiny_tokenizer, new_world, remap_stream_states([s.state_dict() for s in old], new_world))
    for s in new:
        run(s, 10**6, trained)
    assert trained == full
    assert all(s.stats()["long"]["epochs"] == 2 for s in new)
