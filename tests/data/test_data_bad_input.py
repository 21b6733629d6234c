"""Bad input never passes silently: a clear error naming the file/member, or a counted skip."""
from __future__ import annotations

import gzip
import io
import json
import logging
import shutil
import tarfile

import numpy as np
import pytest
from datakit import chat_records, data_cfg, write_shards

from delia_dist.data import DataError, build_train_stream
from delia_dist.data.records import tokenizer_info


def raw_shard(path, samples):
    """A tar of hand-made samples: [(key, {ext: bytes})]."""
    with tarfile.open(path, "w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def good_parts(ids=(1, 4, 20, 30, 5, 40, 41, 6), mask=(0, 0, 0, 0, 0, 1, 1, 1), record=None):
    return {"json": json.dumps(record or {"messages": []}).encode(),
            "ids": np.asarray(ids, "<i4").tobytes(), "mask": np.asarray(mask, np.uint8).tobytes()}


def manifest_for(dirpath, tokenizer, shards):
    """shards: {file name: sample count}."""
    (dirpath / "manifest.json").write_text(json.dumps({
        "format": "delia-shards/1",
        "shards": [{"path": n, "samples": c, "tokens": 0} for n, c in shards.items()],
        "samples": 0, "tokens": 0, "tokenizer": tokenizer_info(tokenizer)}))
    return dirpath / "manifest.json"


def test_malformed_records_are_counted_per_reason(tmp_path, tiny_tokenizer, caplog):
    good = good_parts()
    bad = dict(good_parts())
    samples = [("a0", good),
               ("a1", {**good, "ids": b"\x01\x02\x03"}),                       # not whole int32s
               ("a2", {**good, "mask": b"\x00\x01"}),                          # ids/mask length mismatch
               ("a3", good_parts(ids=(1, 4, 20, 9999, 5, 40, 41, 6))),          # id out of range
               ("a4", {"json": bad["json"]}),                                  # missing members
               ("a5", good_parts(mask=(0,) * 8)),                              # nothing to learn
               ("a6", good)]
    raw_shard(tmp_path / "s-0.tar", samples)
    m = manifest_for(tmp_path, tiny_tokenizer, {"s-0.tar": 7})
    cfg = data_cfg([("x", m, 1.0, {"on_exhausted": "stop"})], pack="none")
    stream = build_train_stream(cfg, tiny_tokenizer)
    with caplog.at_level(logging.WARNING, logger="delia_dist.data"):
        assert len(list(stream)) == 2
    st = stream.stats()["x"]
    assert st["samples"] == 2
    assert st["skipped"] == {"bad_ids": 1, "length_mismatch": 1, "token_out_of_range": 1,
                             "missing_member": 1, "no_loss_tokens": 1}
    assert "s-0.tar member a3" in caplog.text and "token_out_of_range" in caplog.text

    strict = build_train_stream(data_cfg([("x", m, 1.0)], bad_records="error"), tiny_tokenizer)
    with pytest.raises(DataError, match=r"s-0\.tar member a1\.ids"):
        next(strict)


def test_bad_json_counted_when_record_is_read(tmp_path, tiny_tokenizer):
    """Paraphrased sources re-tokenize from the record JSON, so they parse and check it."""
    from datakit import INSTRUCTION
    task = {"instruction": INSTRUCTION, "fields": {"source": "ég er"}, "response": "I am"}
    samples = [("b0", {**good_parts(), "json": json.dumps(task).encode()}),
               ("b1", {**good_parts(), "json": b"{not json"}),
               ("b2", {**good_parts(), "json": json.dumps({"instruction": 3}).encode()}),
               ("b3", {**good_parts(), "json": json.dumps({**task, "response": None}).encode()})]
    raw_shard(tmp_path / "t-0.tar", samples)
    m = manifest_for(tmp_path, tiny_tokenizer, {"t-0.tar": 4})
    para = tmp_path / "p.jsonl"
    para.write_text(json.dumps({"original": INSTRUCTION, "paraphrases": ["In English: {source}"]}) + "\n")
    cfg = data_cfg([("t", m, 1.0, {"on_exhausted": "stop", "paraphrases": str(para)})], pack="none")
    stream = build_train_stream(cfg, tiny_tokenizer)
    list(stream)
    st = stream.stats()["t"]
    assert st["skipped"] == {"bad_json": 1, "bad_record": 1}
    assert st["samples"] == 2  # b2 has no known instruction: its stored ids are used


@pytest.fixture
def copied_shards(tmp_path, shard_sets):
    src = shard_sets["long"].parent
    dst = tmp_path / "long"
    shutil.copytree(src, dst)
    return dst


def test_truncated_tar_names_file_and_member(copied_shards, tiny_tokenizer):
    shard = sorted(copied_shards.glob("*.tar"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2 + 100])
    cfg = data_cfg([("long", copied_shards / "manifest.json", 1.0, {"on_exhausted": "stop"})],
                   shuffle_shards=False)
    with pytest.raises(DataError) as e:
        list(build_train_stream(cfg, tiny_tokenizer))
    assert shard.name in str(e.value) and "member" in str(e.value)

    cfg.bad_shards = "skip"
    stream = build_train_stream(cfg, tiny_tokenizer)
    list(stream)
    st = stream.stats()["long"]
    assert st["skipped"] == {"corrupt_shard": 1}
    assert 0 < st["samples"] < 300


def test_bad_gzip_names_file(tmp_path, tiny_tokenizer):
    d = tmp_path / "gz"
    write_shards(d, tiny_tokenizer, chat_records(20))
    shard = d / "shard-000000.tar"
    gz = gzip.compress(shard.read_bytes())
    (d / "shard-000000.tar.gz").write_bytes(gz[:len(gz) // 2] + b"\x00garbage" * 10)
    cfg = data_cfg([("g", str(d / "*.tar.gz"), 1.0, {"on_exhausted": "stop"})])
    with pytest.raises(DataError, match=r"shard-000000\.tar\.gz: corrupt"):
        list(build_train_stream(cfg, tiny_tokenizer))


def test_gzip_and_pipe_shards_are_read(tmp_path, tiny_tokenizer):
    d = tmp_path / "p"
    write_shards(d, tiny_tokenizer, chat_records(30), max_shard_bytes=12_000)
    names = sorted(p.name for p in d.glob("*.tar"))
    assert len(names) >= 2
    for n in names:
        (d / (n + ".gz")).write_bytes(gzip.compress((d / n).read_bytes()))
    specs = [str(d / "*.tar.gz"), f"pipe:cat {d}/shard-{{000000..{len(names) - 1:06d}}}.tar"]
    for spec in specs:
        stream = build_train_stream(data_cfg([("p", spec, 1.0, {"on_exhausted": "stop"})]), tiny_tokenizer)
        list(stream)
        assert stream.stats()["p"]["samples"] == 30, spec


def test_failing_pipe_is_an_error(tiny_tokenizer):
    cfg = data_cfg([("p", "pipe:cat /nonexistent/shard.tar", 1.0)])
    with pytest.raises(DataError, match="nonexistent"):
        next(build_train_stream(cfg, tiny_tokenizer))


def test_shard_shorter_than_manifest_is_an_error(copied_shards, tiny_tokenizer):
    """A shard replaced by a shorter, well-formed one is caught through the manifest counts."""
    shard = sorted(copied_shards.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for m, data in members[:-3]:
            tar.addfile(m, io.BytesIO(data))
    cfg = data_cfg([("long", copied_shards / "manifest.json", 1.0)], shuffle_shards=False)
    with pytest.raises(DataError, match=shard.name + ".*manifest lists"):
        list(build_train_stream(cfg, tiny_tokenizer))


def test_missing_files_are_named(tmp_path, copied_shards, tiny_tokenizer):
    with pytest.raises(DataError, match="manifest not found"):
        build_train_stream(data_cfg([("x", str(tmp_path / "nope/manifest.json"), 1.0)]), tiny_tokenizer)
    with pytest.raises(DataError, match="no shard files match"):
        build_train_stream(data_cfg([("x", str(tmp_path / "nope/*.tar"), 1.0)]), tiny_tokenizer)
    gone = sorted(copied_shards.glob("*.tar"))[1]
    gone.unlink()
    with pytest.raises(DataError, match=gone.name):
        build_train_stream(data_cfg([("x", str(copied_shards / "manifest.json"), 1.0)]), tiny_tokenizer)


def test_overlong_skip_counted(tmp_path, tiny_tokenizer):
    ids = list(range(10, 10 + 200))
    raw_shard(tmp_path / "o-0.tar", [("o0", good_parts(ids=ids, mask=[1] * 200)), ("o1", good_parts())])
    m = manifest_for(tmp_path, tiny_tokenizer, {"o-0.tar": 2})
    stream = build_train_stream(data_cfg([("o", m, 1.0, {"on_exhausted": "stop"})], overlong="skip"),
                                tiny_tokenizer)
    list(stream)
    assert stream.stats()["o"]["skipped"] == {"overlong": 1}


@pytest.mark.parametrize("where", ["next_header", "next_member_data", "last_member_data"])
def test_truncated_tar_keeps_every_complete_sample(tmp_path, tiny_tokenizer, where):
    """With bad_shards: skip, a cut shard gives every sample whose members all precede the
    cut, then one counted skip."""
    d = tmp_path / "cut"
    write_shards(d, tiny_tokenizer, chat_records(20), max_shard_bytes=1 << 30)
    shard = d / "shard-000000.tar"
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    k = 11  # samples 0..k-1 are complete before the cut
    first_of_next, last_of_prev = members[3 * k], members[3 * k - 1]
    cut = {"next_header": first_of_next.offset + 100,
           "next_member_data": first_of_next.offset_data + first_of_next.size // 2,
           "last_member_data": last_of_prev.offset_data + last_of_prev.size // 2}[where]
    complete = k - 1 if where == "last_member_data" else k
    shard.write_bytes(shard.read_bytes()[:cut])
    cfg = data_cfg([("c", d / "manifest.json", 1.0, {"on_exhausted": "stop"})], pack="none",
                   bad_shards="skip", seq_len=512)
    stream = build_train_stream(cfg, tiny_tokenizer)
    assert len(list(stream)) == complete
    st = stream.stats()["c"]
    assert st["samples"] == complete and st["skipped"] == {"corrupt_shard": 1}


def test_inspect_counts_bad_members_by_reason(tmp_path, tiny_tokenizer, tiny_tokenizer_dir, capsys):
    """`delia data inspect` decodes as training does: a shard with bad members is not clean."""
    from delia_dist.cli import main
    record = chat_records(1)[0]
    ok = good_parts(record=record)
    samples = [("c0", ok),
               ("c1", {**ok, "json": b'{"messages": "caf\xe9"}'}),       # Latin-1, not UTF-8
               ("c2", {**ok, "json": b'{"messages": [}'}),                # malformed JSON
               ("c3", {**ok, "json": json.dumps({"messages": []}).encode()}),  # no messages
               ("c4", {**ok, "ids": b"\x01\x02\x03"}),                    # not whole int32s
               ("c5", good_parts(record=record, mask=(0,) * 8)),          # nothing to learn
               ("c6", ok)]
    raw_shard(tmp_path / "s-0.tar", samples)
    m = manifest_for(tmp_path, tiny_tokenizer, {"s-0.tar": 7})
    assert main(["data", "inspect", str(m), "--tokenizer", str(tiny_tokenizer_dir), "-n", "0"]) == 1
    out = capsys.readouterr().out
    assert "read 7 samples" in out and "5 bad (bad_ids 1, bad_json 1, bad_record 1, bad_utf8 1, " \
                                        "no_loss_tokens 1)" in out, out
    assert "s-0.tar member c1.json" in out and "not valid UTF-8" in out

    data = (tmp_path / "s-0.tar").read_bytes()
    (tmp_path / "s-0.tar").write_bytes(data[:len(data) // 2])
    assert main(["data", "inspect", str(m)]) == 1
    out = capsys.readouterr().out
    assert "corrupt_shard 1" in out and "s-0.tar" in out
