"""ShardWriter and `delia data shard`: what goes into a shard comes back out, bad lines counted."""
from __future__ import annotations

import json

import numpy as np
from datakit import INSTRUCTION, chat_records, task_records, write_shards

from delia_dist.cli import main
from delia_dist.data.records import to_messages, tokenize_messages
from delia_dist.data.shards import iter_shard, load_manifest


def test_writer_roundtrip_and_manifest(tmp_path, tiny_tokenizer):
    records = chat_records(40) + task_records(5)
    m = load_manifest(str(write_shards(tmp_path, tiny_tokenizer, records, max_shard_bytes=20_000)))
    assert len(m["shards"]) > 1 and m["samples"] == 45
    assert m["tokenizer"]["vocab_size"] == len(tiny_tokenizer) and len(m["tokenizer"]["fingerprint"]) == 32
    got = [parts for s in m["shards"] for _, parts in iter_shard(s["url"])]
    assert [sum(1 for _ in iter_shard(s["url"])) for s in m["shards"]] == [s["samples"] for s in m["shards"]]
    assert sum(len(p["ids"]) // 4 for p in got) == m["tokens"]
    for rec, parts in zip(records, got):
        assert json.loads(parts["json"]) == rec
        ids, mask = tokenize_messages(tiny_tokenizer, to_messages(rec))
        assert np.array_equal(np.frombuffer(parts["ids"], "<i4"), ids)
        assert np.array_equal(np.frombuffer(parts["mask"], np.uint8), mask)
    # the loss mask covers exactly the assistant reply (+ its end marker)
    ids, mask = tokenize_messages(tiny_tokenizer, to_messages(records[0]))
    reply = tiny_tokenizer.decode(ids[mask == 1])
    assert reply == records[0]["messages"][1]["content"] + "<|end|>"


def test_downstream_record_keeps_json_braces(tiny_tokenizer):
    rec = task_records(1)[0]
    msgs = to_messages(rec)
    assert msgs[0]["content"] == INSTRUCTION.replace("{source}", rec["fields"]["source"])
    assert '{"text": ...}' in msgs[0]["content"] and msgs[1] == {"role": "assistant", "content": rec["response"]}


def test_cli_shards_jsonl_counting_bad_lines(tmp_path, tiny_tokenizer_dir, capsys):
    src = tmp_path / "in.jsonl"
    lines = [json.dumps(r) for r in chat_records(10)]
    lines.insert(3, "{broken")
    lines.insert(6, json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    lines.insert(8, json.dumps({"instruction": "x"}))
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    rc = main(["data", "shard", str(src), "--out", str(out), "--tokenizer", str(tiny_tokenizer_dir),
               "--no-progress"])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["samples"] == 10
    printed = capsys.readouterr().out
    assert "skipped 3" in printed and "bad_json" in printed and "no_assistant" in printed

    rc = main(["data", "shard", str(src), "--out", str(tmp_path / "strict"), "--tokenizer",
               str(tiny_tokenizer_dir), "--on-bad", "error", "--no-progress"])
    assert rc == 2
    assert f"{src}:4" in capsys.readouterr().err


def test_cli_shards_hf_dataset_from_disk(tmp_path, tiny_tokenizer_dir):
    import datasets
    ds = datasets.Dataset.from_list([{"messages": r["messages"]} for r in chat_records(12)])
    ds.save_to_disk(str(tmp_path / "ds"))
    rc = main(["data", "shard", str(tmp_path / "ds"), "--out", str(tmp_path / "out"),
               "--tokenizer", str(tiny_tokenizer_dir), "--no-progress"])
    assert rc == 0
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["samples"] == 12


def test_cli_missing_input_is_one_line_error(tmp_path, tiny_tokenizer_dir, capsys):
    rc = main(["data", "shard", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"),
               "--tokenizer", str(tiny_tokenizer_dir), "--no-progress"])
    assert rc == 2 and "nope.jsonl" in capsys.readouterr().err


def test_cli_inspect_verifies_and_shows(tmp_path, tiny_tokenizer, tiny_tokenizer_dir, capsys):
    m = write_shards(tmp_path / "s", tiny_tokenizer, chat_records(15), max_shard_bytes=10_000)
    assert main(["data", "inspect", str(m), "--tokenizer", str(tiny_tokenizer_dir), "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "read 15 samples" in out and "[[" in out and "0 bad" in out


def test_cli_inspect_with_another_tokenizer_is_an_error(tmp_path, tiny_tokenizer, capsys):
    """As in training: ids sharded with one tokenizer are not checked against another."""
    from delia_dist.model.tiny import synthetic_corpus, train_tokenizer
    m = write_shards(tmp_path / "s", tiny_tokenizer, chat_records(5))
    train_tokenizer(tmp_path / "other", texts=synthetic_corpus(500, seed=7), vocab_size=400)
    assert main(["data", "inspect", str(m), "--tokenizer", str(tmp_path / "other")]) == 2
    assert "tokenizer mismatch" in capsys.readouterr().err
