"""The JSONL shapes `delia data shard` accepts, and RecordErrors that name the missing key."""
from __future__ import annotations

import json

import pytest

from delia_dist.cli import main
from delia_dist.data.errors import RecordError
from delia_dist.data.records import to_messages


def _turn(user, reply, system=None):
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": reply}]


@pytest.mark.parametrize("record, expected", [
    ({"messages": _turn("hi", "hello")}, _turn("hi", "hello")),
    ({"instruction": "Say {x}", "fields": {"x": "yes"}, "response": "yes"}, _turn("Say yes", "yes")),
    ({"instruction": "Add.", "input": "2 + 2", "output": "4"}, _turn("Add.\n\n2 + 2", "4")),
    ({"instruction": "Greet.", "input": "", "output": "Hi", "system": "S"}, _turn("Greet.", "Hi", "S")),
    ({"prompt": "Q?", "response": "A."}, _turn("Q?", "A.")),
    ({"prompt": "Q?", "completion": "A.", "system": "S"}, _turn("Q?", "A.", "S")),
])
def test_accepted_shapes(record, expected):
    assert to_messages(record) == expected


def test_paraphrase_overrides_alpaca_instruction_too():
    assert to_messages({"instruction": "Add.", "input": "1+1", "output": "2"}, "Sum.")[0]["content"] == "Sum.\n\n1+1"


@pytest.mark.parametrize("record, names", [
    ({"instruction": "x"}, "'response'"),
    ({"instruction": "x", "input": "y"}, "'response'"),
    ({"instruction": 3, "output": "y"}, "'instruction' is a int"),
    ({"prompt": "x"}, "'response'"),
    ({"prompt": "x", "completion": None}, "'completion'"),
    ({"prompt": "x", "response": "y", "system": 1}, "'system'"),
    ({"question": "x", "answer": "y"}, "'messages', 'instruction', 'prompt'"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no assistant"),
])
def test_bad_records_name_the_key(record, names):
    with pytest.raises(RecordError, match=names):
        to_messages(record)


def test_cli_shards_every_shape(tmp_path, tiny_tokenizer_dir, capsys):
    src = tmp_path / "mixed.jsonl"
    rows = [{"messages": _turn("a b", "c d")}, {"instruction": "e", "input": "f", "output": "g h"},
            {"prompt": "i", "completion": "j k"}, {"instruction": "l {x}", "fields": {"x": "m"}, "response": "n"},
            {"question": "o"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["data", "shard", str(src), "--out", str(out), "--tokenizer", str(tiny_tokenizer_dir),
                 "--no-progress"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["samples"] == 4 and m["loss_tokens"] > 0
    assert "skipped 1" in capsys.readouterr().out
