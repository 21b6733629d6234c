"""The training stream: token shares, exact resume, packing boundaries, rank split."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datakit import INSTRUCTION, data_cfg, roundtrip, task_records, write_shards

from delia_dist.data import DataError, build_train_stream


def take(stream, n):
    return [next(stream) for _ in range(n)]


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_token_shares_within_tolerance(shard_sets, tiny_tokenizer):
    weights = {"long": 0.6, "short": 0.3, "task": 0.1}
    cfg = data_cfg([(n, shard_sets[n], w) for n, w in weights.items()])
    stream = build_train_stream(cfg, tiny_tokenizer, micro_batch_size=8)
    src = torch.cat([b["source_ids"] for b in take(stream, 150)]).numpy()  # 1200 rows
    names = stream.source_names
    rows, tolerance = 200, 0.02  # the deficit mixer's bound over any 200-row window
    for start in range(0, len(src) - rows + 1, 100):
        window = src[start:start + rows]
        counts = np.bincount(window[window >= 0], minlength=len(names))
        shares = counts / counts.sum()
        for i, n in enumerate(names):
            assert abs(shares[i] - weights[n]) <= tolerance, (start, n, shares)
    # samples are far from proportional: the short source needs many more per token
    st = stream.stats()
    assert st["short"]["samples"] > st["long"]["samples"] * 0.5 * 2
    assert st["task"]["epochs"] >= 1  # 40 samples, repeated
    assert stream.packing_efficiency > 0.95


@pytest.mark.parametrize("world_size,workers", [(1, 1), (2, 2)])
def test_resume_equals_uninterrupted(shard_sets, tiny_tokenizer, world_size, workers):
    cfg = data_cfg([("long", shard_sets["long"], 0.5), ("short", shard_sets["short"], 0.4),
                    ("task", shard_sets["task"], 0.1)])
    K, M = 7, 30
    for rank in range(world_size):
        def build():
            return build_train_stream(cfg, tiny_tokenizer, rank=rank, world_size=world_size,
                                      micro_batch_size=2, num_workers=workers)
        full = take(build(), K + M)
        first = build()
        take(first, K)
        sd = roundtrip(first.state_dict())
        stats = first.stats()
        resumed = build()
        resumed.load_state_dict(sd)
        assert resumed.stats() == stats
        same(take(resumed, M), full[K:])


def test_ranks_and_workers_read_disjoint_samples(shard_sets, tiny_tokenizer):
    """One epoch of a source split over 2 ranks x 2 workers covers each sample exactly once."""
    manifest = json.loads(shard_sets["long"].read_text())
    assert len(manifest["shards"]) >= 4
    cfg = data_cfg([("long", shard_sets["long"], 1.0, {"on_exhausted": "stop"})],
                   seq_len=4096, pack="none")
    seen = []
    for rank in range(2):
        stream = build_train_stream(cfg, tiny_tokenizer, rank=rank, world_size=2, num_workers=2)
        for b in stream:
            if (b["segment_ids"] > 0).any():
                n = int((b["segment_ids"][0] > 0).sum())
                seen.append(tuple(b["input_ids"][0, :n].tolist()))
    assert len(seen) == manifest["samples"] == len(set(seen))


def test_small_source_is_split_by_sample_across_slots(tmp_path, tiny_tokenizer):
    """Fewer shards than ranks x workers: every slot still gets its own samples."""
    m = write_shards(tmp_path / "one", tiny_tokenizer, task_records(9), max_shard_bytes=1 << 30)
    cfg = data_cfg([("t", m, 1.0, {"on_exhausted": "stop"})], pack="none")
    counts = []
    for rank in range(2):
        stream = build_train_stream(cfg, tiny_tokenizer, rank=rank, world_size=2, num_workers=2)
        counts.append(sum(1 for _ in stream))
        assert stream.stats()["t"]["samples"] == counts[-1]
    assert sum(counts) == 9 and min(counts) >= 4


def check_packed_rows(batch, pad_id):
    ids, labels, pos, seg, src = (batch[k].numpy() for k in
                                  ("input_ids", "labels", "position_ids", "segment_ids", "source_ids"))
    for r in range(ids.shape[0]):
        L = ids.shape[1]
        for t in range(L):
            if seg[r, t] == 0:
                assert labels[r, t] == -100 and src[r, t] == -1 and ids[r, t] == pad_id
                continue
            last = t == L - 1 or seg[r, t + 1] != seg[r, t]
            if last:
                # the last token of a sample never predicts the next sample's first token
                assert labels[r, t] == -100
            elif labels[r, t] != -100:
                assert labels[r, t] == ids[r, t + 1]
            first = t == 0 or seg[r, t - 1] != seg[r, t]
            assert pos[r, t] == (0 if first else pos[r, t - 1] + 1)


def test_packing_keeps_labels_inside_samples(shard_sets, tiny_tokenizer):
    cfg = data_cfg([("long", shard_sets["long"], 0.5), ("short", shard_sets["short"], 0.5)], seq_len=96)
    stream = build_train_stream(cfg, tiny_tokenizer, micro_batch_size=4)
    multi = 0
    for b in take(stream, 20):
        check_packed_rows(b, tiny_tokenizer.pad_token_id)
        multi += int((b["segment_ids"].max(dim=1).values > 1).sum())
    assert multi > 20  # rows really hold several samples
    # loss is only on assistant tokens: the user turn of every sample is masked
    b = next(stream)
    assistant = tiny_tokenizer.convert_tokens_to_ids("<|assistant|>")
    row_ids, row_labels = b["input_ids"][0].tolist(), b["labels"][0].tolist()
    k = row_ids.index(assistant)
    assert all(x == -100 for x in row_labels[:k + 1])


def test_split_samples_fills_rows(shard_sets, tiny_tokenizer):
    cfg = data_cfg([("long", shard_sets["long"], 1.0)], seq_len=64, split_samples=True)
    stream = build_train_stream(cfg, tiny_tokenizer, micro_batch_size=4)
    batches = take(stream, 10)
    assert stream.packing_efficiency == 1.0
    assert stream.stats()["long"]["truncated"] == 0
    # a continued sample keeps counting positions in the next row
    assert any(int(b["position_ids"][r, 0]) > 0 for b in batches for r in range(4))


@pytest.mark.parametrize("policy", ["truncate", "skip"])
def test_overlong_samples_are_counted(shard_sets, tiny_tokenizer, policy):
    cfg = data_cfg([("long", shard_sets["long"], 1.0, {"on_exhausted": "stop"})], seq_len=48,
                   overlong=policy)
    stream = build_train_stream(cfg, tiny_tokenizer, micro_batch_size=4)
    batches = list(stream)
    st = stream.stats()["long"]
    n_over = st["truncated"] if policy == "truncate" else st["skipped"].get("overlong", 0)
    assert n_over > 10
    assert st["samples"] + st["skipped"].get("overlong", 0) == 300
    assert sum(int((b["segment_ids"] > 0).sum()) for b in batches) == st["tokens"]


def test_stop_and_max_epochs_end_the_stream(shard_sets, tiny_tokenizer):
    cfg = data_cfg([("long", shard_sets["long"], 0.5), ("task", shard_sets["task"], 0.5,
                                                         {"max_epochs": 2})])
    stream = build_train_stream(cfg, tiny_tokenizer, micro_batch_size=2)
    list(stream)
    st = stream.stats()
    assert st["task"]["epochs"] == 2 and st["task"]["samples"] == 80
    with pytest.raises(StopIteration):
        next(stream)


def test_paraphrases_drawn_per_sample_and_resumable(tmp_path, shard_sets, tiny_tokenizer):
    paraphrases = ['Render in English:\n{source}\nAnswer as {"text": ...}',
                   'English please:\n{source}\nAnswer as {"text": ...}']
    path = tmp_path / "para.jsonl"
    path.write_text(json.dumps({"original": INSTRUCTION, "paraphrases": paraphrases}) + "\n")
    cfg = data_cfg([("task", shard_sets["task"], 1.0, {"paraphrases": str(path), "kind": "downstream"})],
                   pack="none", seq_len=256)

    def texts(stream, n):
        out = []
        for b in take(stream, n):
            k = int((b["segment_ids"][0] > 0).sum())
            out.append(tiny_tokenizer.decode(b["input_ids"][0, :k]))
        return out

    stream = build_train_stream(cfg, tiny_tokenizer)
    seen = texts(stream, 60)
    heads = {t.split("<|user|>\n", 1)[1].split(":", 1)[0] for t in seen}
    assert heads == {"Translate to English", "Render in English", "English please"}
    assert all('Answer as {"text": ...}' in t and "{source}" not in t for t in seen)
    assert stream.stats()["task"]["retokenized"] >= 60
    again = build_train_stream(cfg, tiny_tokenizer)
    assert texts(again, 60) == seen  # seeded
    resumed = build_train_stream(cfg, tiny_tokenizer)
    texts(resumed, 25)
    sd = roundtrip(resumed.state_dict())
    fresh = build_train_stream(cfg, tiny_tokenizer)
    fresh.load_state_dict(sd)
    assert texts(fresh, 35) == seen[25:]


def test_added_tokens_trigger_retokenization(tmp_path, tiny_tokenizer_dir):
    from transformers import AutoTokenizer
    base = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    records = task_records(6)
    records[0]["instruction"] = "Follow the <sep> format:\n{source}"
    m = write_shards(tmp_path / "t", base, records)
    train_tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    train_tok.add_special_tokens({"additional_special_tokens": ["<sep>"]})
    sep = train_tok.convert_tokens_to_ids("<sep>")
    cfg = data_cfg([("t", m, 1.0, {"on_exhausted": "stop"})], pack="none", seq_len=256)
    stream = build_train_stream(cfg, train_tok)
    rows = [b["input_ids"][0] for b in stream]
    assert len(rows) == 6
    assert sum(int((r == sep).sum()) for r in rows) == 1
    assert stream.stats()["t"]["retokenized"] == 1


def test_tokenizer_mismatch_names_both(tmp_path, shard_sets, tiny_tokenizer):
    from transformers import AutoTokenizer

    from delia_dist.model.tiny import synthetic_corpus, train_tokenizer
    train_tokenizer(tmp_path / "other", texts=synthetic_corpus(500, seed=7), vocab_size=400)
    other = AutoTokenizer.from_pretrained(tmp_path / "other")
    cfg = data_cfg([("long", shard_sets["long"], 1.0)])
    with pytest.raises(DataError) as e:
        build_train_stream(cfg, other)
    msg = str(e.value)
    assert "tokenizer mismatch" in msg and "manifest.json" in msg and str(tmp_path / "other") in msg
    assert json.loads(shard_sets["long"].read_text())["tokenizer"]["fingerprint"] in msg


def test_state_rejects_other_layout(shard_sets, tiny_tokenizer):
    cfg = data_cfg([("long", shard_sets["long"], 1.0)])
    sd = build_train_stream(cfg, tiny_tokenizer, rank=0, world_size=2).state_dict()
    with pytest.raises(DataError, match="world_size"):
        build_train_stream(cfg, tiny_tokenizer, rank=0, world_size=4).load_state_dict(sd)


def test_resume_after_shard_changed_names_it(tmp_path, shard_sets, tiny_tokenizer):
    """Buffered samples are re-read on resume: a shard cut shorter since the checkpoint is an
    error naming it, not a silent different sample."""
    import shutil
    d = tmp_path / "long"
    shutil.copytree(shard_sets["long"].parent, d)
    cfg = data_cfg([("long", d / "manifest.json", 1.0)], shuffle_buffer=64)
    stream = build_train_stream(cfg, tiny_tokenizer, micro_batch_size=2)
    take(stream, 3)
    sd = roundtrip(stream.state_dict())
    refs = sd["sources"][0]["readers"][0]["buffer"]
    shard = sorted(d.glob("*.tar"))[int(refs["shard"][0])]
    shard.write_bytes(b"")  # an empty file is an archive without its end block
    with pytest.raises(DataError, match=shard.name):
        build_train_stream(cfg, tiny_tokenizer, micro_batch_size=2).load_state_dict(sd)
