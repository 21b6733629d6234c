"""`delia --help` is the map of the tool: every command is reachable from it, each group
names its subcommands, and every line of the 'typical flow' names a real command."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from delia_dist import cli


def test_help_lists_every_command_and_group_members(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    names = [m.NAME for m in cli._command_modules()]
    groups = {}
    for name in names:
        words = name.split()
        if len(words) > 1:
            groups.setdefault(words[0], []).append(words[1])
        else:
            assert re.search(rf"^\s+{name}\b", out, re.M), name
    for group, members in groups.items():
        listed = re.escape(" | ".join(sorted(members)))
        assert re.search(rf"^\s+{group}\s+{listed}$", out, re.M), (group, out)


def test_every_typical_flow_line_is_a_real_command():
    names = {m.NAME for m in cli._command_modules()}
    lines = [l.split("#")[0].strip() for l in cli.EPILOG.splitlines() if l.strip().startswith("delia ")]
    assert len(lines) >= 6
    for line in lines:
        words = line.split()[1:]
        assert " ".join(words[:2]) in names or words[0] in names, line


def test_group_without_subcommand_prints_its_help_and_exits_2(capsys):
    assert cli.main(["data"]) == 2
    assert "diversify" in capsys.readouterr().out


def _delia(*args, env=None):
    return subprocess.run([sys.executable, "-m", "delia_dist.cli", *args], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120,
                          env={**os.environ, "DELIA_DEBUG": "", **(env or {})})


def test_errors_that_name_their_cause_are_one_line_unless_debug():
    bad = ("config", "show", "configs/tiny_cpu.yaml", "--set", "train.lrr=1")
    proc = _delia(*bad)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --set train.lrr=1: train.lrr: unknown key; did you mean 'lr'? (valid keys: betas, eps, grad_accum, "
        "grad_clip, lr, max_steps, micro_batch_size, min_lr_ratio, precision, profile, schedule, seed, "
        "warmup_steps, weight_decay)"]
    for debug in (_delia("--debug", *bad), _delia(*bad, env={"DELIA_DEBUG": "1"})):
        assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
        assert debug.stderr.rstrip().endswith(proc.stderr.strip())


def test_only_the_first_failing_rank_prints_the_cause(tmp_path, capsys, monkeypatch):
    """A shard missing on rank 2 of 4: rank 2 prints the one line; a rank seeing the same
    cause stays quiet; a rank whose collective lost rank 2 says so in one line; no
    tracebacks. A requeued launch has its own first failure; DELIA_DEBUG=1 shows all."""
    from delia_dist.data.errors import DataError
    from launcher.__main__ import report_failure
    from launcher.env import DistEnv

    monkeypatch.delenv("DELIA_DEBUG", raising=False)

    def fail(rank, error, restart=0):
        env = DistEnv(rank=rank, world_size=4, local_rank=rank, local_world_size=4, master_port=29555,
                      job_id="77", restart_count=restart)
        try:
            raise error
        except Exception as e:  # noqa: BLE001 - report_failure prints the active traceback
            report_failure(e, env, tmp_path)

    cause = "/data/d/shard-000003.tar: no such file or directory"
    fail(2, DataError(cause))
    fail(0, DataError(cause))
    fail(1, RuntimeError("Connection closed by peer [127.0.0.1]:1234"))
    assert capsys.readouterr().err.splitlines() == [
        f"[rank 2] error: {cause}",
        "[rank 1] training failed: RuntimeError: Connection closed by peer [127.0.0.1]:1234 "
        "(rank 2 failed first)"]
    # A timeout every rank sees is said by each: the first may be on a node that died.
    fail(3, RuntimeError("Connection closed by peer [127.0.0.1]:1234"))
    assert capsys.readouterr().err.splitlines() == [
        "[rank 3] training failed: RuntimeError: Connection closed by peer [127.0.0.1]:1234 "
        "(rank 2 failed first)"]
    fail(3, RuntimeError("boom: a bug"), restart=1)
    err = capsys.readouterr().err
    assert err.startswith("[rank 3] training failed: RuntimeError: boom: a bug\nTraceback")  # a bug: traceback
    monkeypatch.setenv("DELIA_DEBUG", "1")
    fail(0, DataError(cause), restart=1)
    err = capsys.readouterr().err
    assert err.startswith(f"[rank 0] error: {cause}\nTraceback") and "DataError" in err
