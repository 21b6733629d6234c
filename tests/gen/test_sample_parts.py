"""How `delia data sample` splits work into parts and resumes, with the generator replaced
by a deterministic stand-in (vLLM itself is exercised in test_sample.py): every query lands
in exactly one part across tasks, finished parts are never regenerated, an interrupted part
is regenerated from scratch, empty parts never start vLLM, and Slurm array ids default the
task index."""
from __future__ import annotations

import json

import pytest

from delia_dist import cli
from delia_dist.gen import sample as sample_mod

N_QUERIES = 7


class FakeGenerator:
    """Answers each chat with n texts derived from its last user turn; records calls."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls, self.fail_on_call = [], fail_on_call

    def __call__(self, model_dir, chats, *, n, seed, **kw):
        self.calls.append((len(chats), seed))
        if self.fail_on_call == len(self.calls):
            raise RuntimeError("node died")
        return [[f"answer {j} to {c[-1]['content']}" for j in range(n)] for c in chats]


@pytest.fixture
def queries(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"query": f"q{i}", "reference": f"r{i}"}) + "\n" for i in range(N_QUERIES)))
    return path


def run_cli(tokenizer_dir, queries, out, *extra):
    return cli.main(["data", "sample", "--model", str(tokenizer_dir), "--input", str(queries), "--out", str(out),
                     *extra])


def part_records(part_dir):
    from delia_dist.data.shards import iter_shard, load_manifest
    manifest = load_manifest(str(part_dir / "manifest.json"))
    return [json.loads(p["json"]) for s in manifest["shards"] for _, p in iter_shard(str(part_dir / s["path"]))]


def test_tasks_cover_every_query_once_and_reruns_skip_done_parts(tiny_tokenizer_dir, queries, tmp_path,
                                                                  monkeypatch):
    gen = FakeGenerator()
    monkeypatch.setattr(sample_mod, "generate_chat", gen)
    out = tmp_path / "out"
    for task in range(2):
        assert run_cli(tiny_tokenizer_dir, queries, out, "--task-index", str(task), "--num-tasks", "2",
                       "--parts-per-task", "2") == 0
    parts = sorted(out.glob("part-*"))
    assert [p.name for p in parts] == [f"part-{i:05d}" for i in range(4)]
    seen = sorted(r["meta"]["query_index"] for p in parts for r in part_records(p))
    assert seen == list(range(N_QUERIES))
    for p in parts:
        for r in part_records(p):
            i = r["meta"]["query_index"]
            assert r["messages"] == [{"role": "user", "content": f"q{i}"},
                                     {"role": "assistant", "content": f"answer 0 to q{i}"}]
    assert sorted(seed for _, seed in gen.calls) == [0, 1, 2, 3]  # seed + part: parts differ, reruns agree
    calls = len(gen.calls)
    assert run_cli(tiny_tokenizer_dir, queries, out, "--task-index", "1", "--num-tasks", "2",
                   "--parts-per-task", "2") == 0
    assert len(gen.calls) == calls


def test_interrupted_part_is_regenerated_from_scratch(tiny_tokenizer_dir, queries, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(sample_mod, "generate_chat", FakeGenerator(fail_on_call=2))
    with pytest.raises(RuntimeError, match="node died"):
        run_cli(tiny_tokenizer_dir, queries, out, "--parts-per-task", "2")
    assert (out / "part-00000/DONE").is_file() and not (out / "part-00001").exists()
    # a task killed while writing part 1 leaves a stale shard and no DONE
    (out / "part-00001").mkdir()
    (out / "part-00001/shard-000009.tar").write_bytes(b"torn")
    gen = FakeGenerator()
    monkeypatch.setattr(sample_mod, "generate_chat", gen)
    assert run_cli(tiny_tokenizer_dir, queries, out, "--parts-per-task", "2") == 0
    assert gen.calls == [(3, 1)]  # only part 1 (queries 1, 3, 5), with its own seed
    assert not (out / "part-00001/shard-000009.tar").exists()
    done = json.loads((out / "part-00001/DONE").read_text())
    assert done["queries"] == 3 and done["samples"] == 3 and done["skipped"] == {}


def test_parts_without_queries_are_done_without_starting_vllm(tiny_tokenizer_dir, tmp_path, monkeypatch):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "only one"},
                                             {"role": "assistant", "content": "ref"}]}) + "\n")
    gen = FakeGenerator()
    monkeypatch.setattr(sample_mod, "generate_chat", gen)
    assert run_cli(tiny_tokenizer_dir, path, tmp_path / "out", "--parts-per-task", "3", "--set",
                   "generate.sample.n=2") == 0
    assert gen.calls == [(1, 0)]
    assert [len(part_records(tmp_path / f"out/part-{i:05d}")) for i in range(3)] == [2, 0, 0]
    assert all((tmp_path / f"out/part-{i:05d}/DONE").is_file() for i in range(3))


def test_slurm_array_ids_default_the_task(tiny_tokenizer_dir, queries, tmp_path, monkeypatch, capsys):
    gen = FakeGenerator()
    monkeypatch.setattr(sample_mod, "generate_chat", gen)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert run_cli(tiny_tokenizer_dir, queries, tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*")) == ["part-00002"] and gen.calls == [(2, 2)]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")  # --array=1-3: ids not 0..N-1
    assert run_cli(tiny_tokenizer_dir, queries, tmp_path / "out") == 2
    assert "--array=0-2" in capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ('["a list"]', "q.jsonl:2: a record must be a JSON object"),
    ('{"query": "x", "reference": 3}', "q.jsonl:2: 'reference' must be a string"),
    ('{"text": "x"}', "q.jsonl:2: needs 'query' or 'messages'"),
    ('{"query": ', "q.jsonl:2: invalid JSON"),
])
def test_bad_query_lines_name_file_and_line(tiny_tokenizer_dir, tmp_path, line, message, capsys):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"query": "fine"}) + "\n" + line + "\n")
    assert run_cli(tiny_tokenizer_dir, path, tmp_path / "out") == 2
    assert message in capsys.readouterr().err


def test_rerun_with_another_split_or_settings_is_refused(tiny_tokenizer_dir, queries, tmp_path, monkeypatch,
                                                          capsys):
    monkeypatch.setattr(sample_mod, "generate_chat", FakeGenerator())
    out = tmp_path / "out"
    assert run_cli(tiny_tokenizer_dir, queries, out, "--task-index", "0", "--num-tasks", "2") == 0
    capsys.readouterr()
    # part-00000 of a 3-way split holds other queries than the finished part-00000 of the 2-way one
    assert run_cli(tiny_tokenizer_dir, queries, out, "--task-index", "1", "--num-tasks", "3") == 2
    assert "other parts" in capsys.readouterr().err
    assert run_cli(tiny_tokenizer_dir, queries, out, "--task-index", "1", "--num-tasks", "2",
                   "--set", "generate.sample.temperature=0.2") == 2
    assert "other temperature" in capsys.readouterr().err
    assert not (out / "part-00001").exists()


def test_part_queries_are_disjoint_and_complete():
    for n_queries, n_parts in [(0, 3), (7, 1), (7, 4), (100, 32)]:
        parts = [sample_mod.part_queries(n_queries, p, n_parts) for p in range(n_parts)]
        assert sorted(i for part in parts for i in part) == list(range(n_queries))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("key, value, message", [
    ("n", "0", "n: must be >= 1"), ("top_p", "0", "top_p: must be in (0, 1]"),
    ("temperature", "-1", "temperature: must be >= 0"), ("max_shard_mb", "0", "max_shard_mb: must be > 0"),
])
def test_bad_sample_settings_are_named(tiny_tokenizer_dir, queries, tmp_path, key, value, message, capsys):
    assert run_cli(tiny_tokenizer_dir, queries, tmp_path / "out", "--set", f"generate.sample.{key}={value}") == 2
    assert message in capsys.readouterr().err
