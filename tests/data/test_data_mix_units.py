"""The paper's mixing unit (diverse samples per downstream sample) next to token shares, and
downstream-once (every downstream record exactly once, the authors' one epoch)."""
from __future__ import annotations

import json

import pytest
import torch
from datakit import data_cfg, roundtrip

from delia_dist.data import build_train_stream
from delia_dist.data.mix_plan import resolve_mix


def drawn(stream) -> list:
    """Record every sample the mixer hands the packer: (source index, (epoch, shard, member))."""
    seen, draw = [], stream.packer.next_sample

    def wrapped():
        s = draw()
        seen.append((s.source, tuple(int(x) for x in s.ref)))
        return s
    stream.packer.next_sample = wrapped
    return seen



@pytest.mark.parametrize("ratio", [0.5, 3.0, 7.0])
def test_sample_ratio_draws_r_diverse_per_downstream(shard_sets, tiny_tokenizer, ratio):
    cfg = data_cfg([("long", shard_sets["long"], 0.5), ("short", shard_sets["short"], 0.5),
                    ("task", shard_sets["task"], 0.0, {"kind": "downstream"})], diverse_ratio=ratio)
    stream = build_train_stream(cfg, tiny_tokenizer, micro_batch_size=4)
    for _ in range(40):
        next(stream)
    n = stream.stats()
    down, div = n["task"]["samples"], n["long"]["samples"] + n["short"]["samples"]
    assert down > 10
    assert abs(div - ratio * down) <= ratio + 1  # within one draw of the ratio at every point
    assert abs(n["long"]["samples"] - n["short"]["samples"]) <= 1  # weight splits a kind's samples
    # by tokens the same weights give a very different sample mix: the unit matters
    tok = build_train_stream(data_cfg([("long", shard_sets["long"], 0.5), ("short", shard_sets["short"], 0.5),
                                       ("task", shard_sets["task"], 0.0, {"kind": "downstream"})]),
                             tiny_tokenizer, micro_batch_size=4)
    for _ in range(10):
        next(tok)
    assert tok.stats()["task"]["samples"] == 0


def test_resolved_shares_follow_the_manifests(shard_sets, tiny_tokenizer):
    man = {k: json.loads(v.read_text()) for k, v in shard_sets.items()}
    cfg = data_cfg([("long", shard_sets["long"], 1.0), ("task", shard_sets["task"], 0.0, {"kind": "downstream"})],
                   diverse_ratio=4.0)
    mix = resolve_mix(cfg, tokens_per_step=512)
    mean = {k: m["tokens"] / m["samples"] for k, m in man.items()}
    long_share = 4 * mean["long"] / (4 * mean["long"] + mean["task"])
    assert mix.unit == "samples" and mix.diverse_per_downstream == pytest.approx(4.0)
    assert mix.sources[0].token_share == pytest.approx(long_share)
    assert mix.sources[1].sample_share == pytest.approx(0.2)
    assert mix.expected_steps is None  # no max_steps, budget or downstream_once: unknown, said so
    once = resolve_mix(data_cfg([("long", shard_sets["long"], 1.0),
                                 ("task", shard_sets["task"], 0.0, {"kind": "downstream"})],
                                diverse_ratio=4.0, downstream_once=True), tokens_per_step=512)
    total = man["task"]["tokens"] / (1 - long_share)
    assert once.expected_tokens == int(total) and once.expected_steps == -(-int(total) // 512)
    assert once.params()["long.token_share"] == pytest.approx(long_share, abs=1e-6)
    by_tokens = resolve_mix(data_cfg([("long", shard_sets["long"], 0.75), ("task", shard_sets["task"], 0.25,
                                                                         {"kind": "downstream"})]), 512, 10)
    ratio = (0.75 / mean["long"]) / (0.25 / mean["task"])
    assert by_tokens.diverse_per_downstream == pytest.approx(ratio) and by_tokens.expected_steps == 10


@pytest.mark.parametrize("ratio", [None, 2.0])
def test_downstream_once_sees_every_record_exactly_once(shard_sets, tiny_tokenizer, ratio):
    """Over 2 ranks x 2 workers, with the shipped configs' max_epochs: 1000 on the downstream
    source: each downstream record once, then the stream ends."""
    n_task = json.loads(shard_sets["task"].read_text())["samples"]
    cfg = data_cfg([("long", shard_sets["long"], 0.7), ("task", shard_sets["task"], 0.3,
                                                        {"kind": "downstream", "max_epochs": 1000})],
                   diverse_ratio=ratio, downstream_once=True)
    seen = []
    for rank in range(2):
        stream = build_train_stream(cfg, tiny_tokenizer, rank=rank, world_size=2, micro_batch_size=2, num_workers=2)
        got = drawn(stream)
        for _ in stream:
            pass
        seen += [ref for src, ref in got if src == 1]
        assert stream.stats()["task"]["samples"] == sum(1 for src, _ in got if src == 1)
    assert len(seen) == n_task and len(set(seen)) == n_task


def test_downstream_once_resumes_exactly_across_the_end(shard_sets, tiny_tokenizer):
    cfg = data_cfg([("long", shard_sets["long"], 0.5), ("short", shard_sets["short"], 0.5),
                    ("task", shard_sets["task"], 0.0, {"kind": "downstream"})],
                   diverse_ratio=2.0, downstream_once=True)
    full = list(build_train_stream(cfg, tiny_tokenizer, micro_batch_size=2))
    k = len(full) - 3
    first = build_train_stream(cfg, tiny_tokenizer, micro_batch_size=2)
    for _ in range(k):
        next(first)
    resumed = build_train_stream(cfg, tiny_tokenizer, micro_batch_size=2)
    resumed.load_state_dict(roundtrip(first.state_dict()))
    rest = list(resumed)
    assert len(rest) == 3
    for a, b in zip(rest, full[k:]):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_ratio_config_checks(shard_sets):
    from delia_dist.config import ConfigValueError
    with pytest.raises(ConfigValueError, match="diverse_ratio: must be >= 0"):
        data_cfg([("task", shard_sets["task"], 1.0, {"kind": "downstream"})], diverse_ratio=-1)
    with pytest.raises(ConfigValueError, match="needs a kind: downstream source"):
        data_cfg([("long", shard_sets["long"], 1.0)], diverse_ratio=5)
    with pytest.raises(ConfigValueError, match="downstream_once: needs a kind: downstream"):
        data_cfg([("long", shard_sets["long"], 1.0)], downstream_once=True)
