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


def _tiny(repo_root, tmp_path, *over):
    from delia_dist.config import load_config
    return load_config(repo_root / "configs/tiny_cpu.yaml",
                       [f"run_dir={tmp_path / 'm'}", "tracking.system_metrics=false", *over], check_paths=False)


def test_child_tags_name_base_run_seed_and_overrides(repo_root, tmp_path):
    from types import SimpleNamespace

    from delia_dist.experiment.run_tracking import child_tags
    cfg = _tiny(repo_root, tmp_path, "train.seed=2")
    over = ["data.sources.diverse.weight=0.5", "train.seed=2", "train.max_steps=3", f"run_dir={tmp_path}/x",
            "tracking.uri=sqlite:///x.db", "tracking.run_name=delia-1x-s2"]
    plain = child_tags("delia-1x-s2", over, ["train.max_steps=3"], cfg, "c.yaml", "a" * 32)
    assert plain["delia.run"] == "delia-1x-s2" and "delia.seed" not in plain  # no experiment.seeds: a plain name
    assert plain["mlflow.parentRunId"] == "a" * 32 and plain["delia.kind"] == "run"
    note = plain["mlflow.note.content"]
    assert note.startswith("**delia-1x-s2**: `c.yaml` with\n- `data.sources.diverse.weight=0.5`\n- `train.seed=2`")
    assert "for every run of the matrix:\n- `train.max_steps=3`" in note and "run_dir" not in note \
        and "x.db" not in note
    # experiment.seeds (engineer "matrix") repeats each run as <name>-s<seed> with train.seed set.
    seeded = SimpleNamespace(experiment=SimpleNamespace(seeds=[0, 1, 2]), train=cfg.train)
    tags = child_tags("delia-1x-s2", over, [], seeded, "c.yaml", None)
    assert (tags["delia.run"], tags["delia.seed"]) == ("delia-1x", "2") and "mlflow.parentRunId" not in tags


def test_parent_run_is_new_per_invocation_and_reopened_on_resume(repo_root, tmp_path):
    import mlflow

    from delia_dist.experiment.run_tracking import matrix_parent
    cfg = _tiny(repo_root, tmp_path)
    plan = plan_runs(str(repo_root / "configs/tiny_cpu.yaml"), [f"run_dir={tmp_path / 'm'}"], check_paths=False)
    ids = []
    for resume in (False, True, False):
        with matrix_parent(cfg, "configs/tiny_cpu.yaml", plan, [], resume) as parent:
            ids.append(parent.run_id)
    assert ids[0] == ids[1] != ids[2] and None not in ids
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/m/mlflow.db")
    run = client.get_run(ids[0])
    assert run.info.run_name == "tiny-delia" and run.info.status == "FINISHED"
    assert run.data.tags["delia.kind"] == "matrix" and run.data.params["train.lr"] == "0.003"
    assert f"| {plan[0][0]} | `data.sources.diverse.weight=0.0`" in run.data.tags["mlflow.note.content"]
    assert client.get_experiment(run.info.experiment_id).artifact_location == \
        (tmp_path / "m/mlartifacts/tiny-delia").as_uri()


def test_a_failed_run_is_described_and_marked_failed(repo_root, tmp_path):
    """The trainer created the run, then training failed: the run is FAILED, in its group."""
    import mlflow

    from delia_dist.experiment.run_tracking import mark_failed
    from delia_dist.tracking import Tracker
    cfg = _tiny(repo_root, tmp_path, f"tracking.uri=sqlite:///{tmp_path}/m/mlflow.db")  # as plan_runs sets it
    run_dir = tmp_path / "m" / "baseline"
    trainer = Tracker(cfg.tracking, run_dir)
    trainer.start({}, tags={})  # records <run_dir>/mlflow-run.json, as the trainer's rank 0 does
    trainer.close("RUNNING")  # the trainer died: its run is left RUNNING
    mark_failed(cfg, run_dir, {"mlflow.parentRunId": "b" * 32, "delia.run": "baseline"})
    run = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/m/mlflow.db").get_run(trainer.run_id)
    assert run.info.status == "FAILED" and run.data.tags["mlflow.parentRunId"] == "b" * 32
    mark_failed(cfg, tmp_path / "m" / "never-started", {})  # no run recorded: nothing to do
