"""The experiment matrix without training: which runs, with which overrides in which order,
and the exact command each backend gets (Slurm through a stand-in sbatch on PATH)."""
from __future__ import annotations

import os
import stat
import sys

import pytest

from delia_dist.experiment.matrix import plan_runs, train_command, train_run


def test_plan_applies_run_overrides_then_command_line(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = str(repo_root / "configs/tiny_cpu.yaml")
    plan = plan_runs(cfg_path, ["train.max_steps=3"], check_paths=False)
    names = [p[0] for p in plan]
    assert "baseline" in names and len(names) == len(set(names)) >= 4
    by = {name: cfg for name, _, _, cfg in plan}
    assert by["baseline"].data.sources[0].weight == 0.0 and by["baseline"].data.sources[1].weight == 1.0
    assert all(cfg.train.max_steps == 3 for cfg in by.values())  # --set wins over the matrix entry
    ablation = next(n for n in names if "no-paraphrase" in n)
    assert by[ablation].data.sources[1].instructions == "fixed" and by["baseline"].data.sources[1].paraphrases
    assert by["baseline"].data.sources[1].instructions == "paraphrased"
    control = next(n for n in names if n.startswith("equal-steps"))  # steps_from: the CLI's count wins
    assert by[control].train.max_steps == 3 and by[control].data.sources[0].weight == 0.0
    name, run_dir, over, cfg = next(p for p in plan if p[0] != "baseline")
    assert str(run_dir) == f"runs/tiny/{name}" and cfg.run_dir == str(run_dir)
    assert cfg.tracking.run_name == name and cfg.tracking.uri == plan[0][3].tracking.uri  # one store
    assert "train.max_steps=3" in over
    # --set run_dir moves the matrix; each run still gets its own directory and run name.
    moved = plan_runs(cfg_path, ["run_dir=elsewhere"], check_paths=False)
    assert [cfg.run_dir for _, _, _, cfg in moved] == [f"elsewhere/{n}" for n in names]
    assert [cfg.tracking.run_name for _, _, _, cfg in moved] == names
    assert [p[0] for p in plan_runs(cfg_path, only=["baseline"], check_paths=False)] == ["baseline"]
    with pytest.raises(ValueError, match=r"--only names \['nope'\] are not in experiment.runs"):
        plan_runs(cfg_path, only=["baseline", "nope"], check_paths=False)


def test_local_and_slurm_commands(repo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_path = str(repo_root / "configs/tiny_cpu.yaml")
    name, run_dir, over, cfg = plan_runs(cfg_path, only=["baseline"], check_paths=False)[0]
    cmd, env = train_command(cfg_path, over, cfg, run_dir, 2)
    assert cmd[:6] == [sys.executable, "-m", "delia_dist.cli", "train", cfg_path, "--nproc"] and cmd[6] == "2"
    assert [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set"] == over

    over = over + ["eval.alignment.layers=[0,1]"]  # a comma must survive the hand-over to Slurm
    _, _, _, cfg = plan_runs(cfg_path, ["experiment.backend=slurm"], only=["baseline"], check_paths=False)[0]
    cmd, env = train_command(cfg_path, over, cfg, run_dir, 2)
    assert cmd[0] == "sbatch" and "--wait" in cmd and "--export=ALL" in cmd
    assert cmd[-1] == str(repo_root / "slurm/delia_tiny.sh")
    assert env["DELIA_OVERRIDES"].split(" ") == over and env["DELIA_CONFIG"] == cfg_path

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"  # records what a real sbatch would hand the job, then "fails"
    fake.write_text('#!/bin/sh\nenv | grep ^DELIA_ > "$SBATCH_RECORD"\necho "$@" >> "$SBATCH_RECORD"\nexit 3\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_RECORD", str(tmp_path / "record"))
    with pytest.raises(RuntimeError, match=r"training baseline failed \(exit 3\)"):
        train_run(cfg_path, over, cfg, run_dir, 2)
    record = (tmp_path / "record").read_text()
    assert f"DELIA_OVERRIDES={' '.join(over)}\n" in record and "--job-name=delia-baseline" in record
