"""README "Your model and your data", run as written: the fetch command, every JSONL shape
sharded with the real SmolLM2 tokenizer (each sample carries loss), and the config that
points at the local model directory trained for its 2 steps on 2 ZeRO-3 ranks."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Your model and your data")
    return text[start:text.index("\n## ", start + 1)]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def _delia(line: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    args = shlex.split(line.split("#", 1)[0])
    assert args[0] == "delia", line
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "delia_dist.cli", *args[1:]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_readme_your_model_section_as_written(smollm2_dir, tmp_path):
    section = _section()
    (tmp_path / ".cache" / "models").mkdir(parents=True)
    (tmp_path / ".cache" / "models" / "smollm2-135m-instruct").symlink_to(smollm2_dir)
    fetch_lines, run_lines = (b.strip().splitlines() for b in _blocks(section, "bash"))
    r = _delia(fetch_lines[0], tmp_path)  # the known name; the hub id needs the hub
    assert r.returncode == 0 and "up to date" in r.stdout, r.stdout + r.stderr

    (records,) = _blocks(section, "jsonl")
    (tmp_path / "my_data.jsonl").write_text(records)
    (config,) = _blocks(section, "yaml")
    assert config.startswith("# my_run.yaml")
    (tmp_path / "my_run.yaml").write_text(config)
    shard, train = run_lines
    r = _delia(shard, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(records.strip().splitlines())
    assert f"{n} samples" in r.stdout and "skipped 0" in r.stdout, r.stdout
    manifest = json.loads((tmp_path / "runs/mine/shards/task/manifest.json").read_text())
    assert manifest["samples"] == n, manifest
    from transformers import AutoTokenizer

    from delia_dist.data.records import to_messages, tokenize_messages
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    for line in records.strip().splitlines():  # each shape: the loss is on its reply
        msgs = to_messages(json.loads(line))
        ids, mask = tokenize_messages(tok, msgs)
        assert msgs[-1]["content"] in tok.decode(ids[mask.astype(bool)]), line

    r = _delia(train, tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rows = [json.loads(l) for l in (tmp_path / "runs/mine/metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert max(row["step"] for row in rows) == 2 and losses and all(l == l and l < 20 for l in losses), rows
