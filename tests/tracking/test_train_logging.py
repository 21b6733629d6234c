"""A 2-rank ZeRO-3 training logs exactly one MLflow run on a real server, with per-source
metrics and the config artifact; resuming it continues the same run, steps continuing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow

REPO = Path(__file__).resolve().parents[2]


def train(ws: Path, uri: str, steps: int) -> None:
    cmd = [sys.executable, "-m", "delia_dist.cli", "train", str(REPO / "configs/tiny_cpu.yaml"), "--nproc", "2",
           "--set", f"run_dir={ws / 'run'}", "--set", f"tracking.uri={uri}", "--set", "tracking.experiment=ci",
           "--set", f"train.max_steps={steps}", "--set", "checkpoint.every_steps=4", "--set", "tracking.log_every=2",
           "--set", "eval.every_steps=2", "--set", "tracking.system_metrics=false"]
    proc = subprocess.run(cmd, cwd=ws, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_two_rank_training_logs_one_run_and_resume_continues_it(tmp_path, mlflow_server):
    from delia_dist.data.synth import prepare_workspace
    prepare_workspace(tmp_path / "runs/tiny", n_train=60, n_eval=4, n_diverse=400)
    train(tmp_path, mlflow_server.uri, 4)
    client = mlflow.tracking.MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("ci")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    m = run.data.metrics
    assert {"loss", "loss/diverse", "loss/downstream", "tokens/diverse", "share/downstream", "lr",
            "tokens_per_s", "packing_efficiency", "align/_sep_/json/l0", "params/max_rank_fraction"} <= m.keys()
    assert run.data.params["data.sources.diverse.weight"] == "0.8" and run.data.tags["world_size"] == "2"
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
    # What the UI's runs table shows: the data sources with their role, the commit, the command.
    inputs = {d.dataset.name: d.tags[0].value for d in run.inputs.dataset_inputs}
    assert inputs == {"diverse": "diverse", "downstream": "downstream"}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == head and run.data.tags["mlflow.source.name"] == "delia train"

    train(tmp_path, mlflow_server.uri, 8)  # resumes from step 4 (checkpoint.resume=auto)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == run.info.run_id
    assert len(runs[0].inputs.dataset_inputs) == 2  # logged again by the resumed job, stored once
    steps = [x.step for x in client.get_metric_history(run.info.run_id, "loss")]
    assert steps == sorted(steps) and steps[-1] == 8 and len(set(steps)) == len(steps)
