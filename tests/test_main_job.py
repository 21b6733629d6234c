"""The main job, shortened: synthetic data -> shards -> baseline and DELIA trained with 2
ZeRO-3 ranks -> export -> evaluation -> comparison table, report and MLflow runs."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tiny_delia_experiment_end_to_end(tmp_path):
    env_cmd = [sys.executable, "-m", "delia_dist.cli"]
    synth = subprocess.run(env_cmd + ["data", "synth", "runs/tiny", "--train", "120", "--eval", "12",
                                      "--diverse", "800"], cwd=tmp_path, capture_output=True, text=True)
    assert synth.returncode == 0, synth.stderr[-3000:]
    proc = subprocess.run(env_cmd + ["experiment", str(REPO / "configs/tiny_cpu.yaml"), "--only",
                                     "baseline,delia-1x", "--set", "train.max_steps=12",
                                     "--set", "checkpoint.every_steps=6"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("run "))
    rows = {l.split()[0]: l.split() for l in lines[header + 2:header + 4]}
    assert set(rows) == {"baseline", "delia-1x"}
    cols = lines[header].split()
    for row in rows.values():
        assert row[1] == "12"  # steps
        assert all(re.fullmatch(r"-?\d+\.\d+", v) for v in row[2:]), row
    share = cols.index("diverse_share")
    assert float(rows["baseline"][share]) == 0.0 and 0.3 < float(rows["delia-1x"][share]) < 0.7
    report = tmp_path / "runs/tiny/report"
    assert (report / "report.md").is_file() and (report / "loss_per_source.png").stat().st_size > 10_000
    assert (report / "eval_vs_diverse_scale.png").is_file() and (report / "token_alignment.png").is_file()

    import mlflow
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/runs/tiny/mlflow.db")
    exp = client.get_experiment_by_name("tiny-delia")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("delia.kind") == "matrix")
    runs = [r for r in runs if r is not parent]
    assert sorted(r.info.run_name for r in runs) == ["baseline", "delia-1x"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    for r in runs:
        assert r.info.status == "FINISHED"
        assert {"eval/translation/bleu", "eval/format/accuracy", "loss/downstream",
                "align/_sep_/json/l0"} <= r.data.metrics.keys()
        assert r.data.params["data.sources.downstream.weight"] in ("1.0", "0.5")
