"""Tracker against the embedded sqlite store and a real MLflow server: one run, params,
metrics and artifacts as expected; resumes continue the run; a dead server costs nothing
and loses nothing; secrets never reach MLflow."""
from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest

from delia_dist.config import TrackingConfig, load_config, to_dict
from delia_dist.tracking import Tracker


def history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_sqlite_default_one_run_params_metrics_artifact_and_resume(tmp_path, repo_root):
    cfg = load_config(repo_root / "configs/tiny_cpu.yaml")
    t = Tracker(TrackingConfig(experiment="unit"), tmp_path, enabled=True)
    t.start(to_dict(cfg), tags={"world_size": "2"})
    for step in range(1, 4):
        t.log_metrics({"loss": 1.0 / step, "loss/diverse": 2.0 / step, "align/<sep>/json/l0": 0.5}, step)
    t.close()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["train.lr"] == "0.003"
    assert run.data.params["data.sources.diverse.weight"] == "0.8"
    assert run.data.tags["world_size"] == "2" and run.info.status == "FINISHED"
    assert history(client, run.info.run_id, "loss/diverse")[-1] == (3, pytest.approx(2 / 3))
    assert "align/_sep_/json/l0" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]

    resumed = Tracker(TrackingConfig(experiment="unit"), tmp_path, enabled=True)
    resumed.load_state_dict(t.state_dict())
    resumed.start({}, tags={})
    resumed.log_metrics({"loss": 0.1}, step=4)
    resumed.close()
    assert resumed.run_id == t.run_id
    assert [s for s, _ in history(client, t.run_id, "loss")] == [1, 2, 3, 4]
    assert len(client.search_runs([client.get_experiment_by_name("unit").experiment_id])) == 1


def test_disabled_tracker_is_a_noop(tmp_path):
    t = Tracker(TrackingConfig(), tmp_path, enabled=False)
    t.start({"a": 1})
    t.log_metrics({"loss": 1.0}, 1)
    t.close()
    assert t.run_id is None and not (tmp_path / "mlflow.db").exists()


def test_server_down_mid_run_loses_nothing(tmp_path, mlflow_server):
    t = Tracker(TrackingConfig(uri=mlflow_server.uri, experiment="outage"), tmp_path, enabled=True)
    t.retry_after_s = 0.5
    t.start({"x": 1})
    t.log_metrics({"loss": 1.0}, 1)
    mlflow_server.stop()
    slowest = 0.0
    for step in range(2, 12):
        t0 = time.monotonic()
        t.log_metrics({"loss": float(step)}, step)
        slowest = max(slowest, time.monotonic() - t0) if step > 2 else slowest
    assert slowest < 1.0  # after the first failure, logging costs no waiting
    assert t._queue  # held back, not dropped
    mlflow_server.start()
    time.sleep(0.6)
    t.log_metrics({"loss": 12.0}, 12)
    t.close()
    client = mlflow.tracking.MlflowClient(mlflow_server.uri)
    assert [s for s, _ in history(client, t.run_id, "loss")] == list(range(1, 13))


def test_server_never_answers_spills_and_replays(tmp_path, mlflow_server):
    mlflow_server.stop()
    t = Tracker(TrackingConfig(uri=mlflow_server.uri, experiment="late"), tmp_path / "run", enabled=True)
    t.retry_after_s = 0.2
    t.start({"x": 1})
    for step in range(1, 6):
        t.log_metrics({"loss": float(step)}, step)
    t.close()
    assert t.run_id is None and (tmp_path / "run/mlflow-pending.jsonl").is_file()
    mlflow_server.start()
    t2 = Tracker(TrackingConfig(uri=mlflow_server.uri, experiment="late"), tmp_path / "run", enabled=True)
    t2.start({"x": 1})
    t2.close()
    client = mlflow.tracking.MlflowClient(mlflow_server.uri)
    assert [s for s, _ in history(client, t2.run_id, "loss")] == [1, 2, 3, 4, 5]
    assert not (tmp_path / "run/mlflow-pending.jsonl").exists()


def test_secrets_reach_no_param_tag_or_artifact(tmp_path, monkeypatch, repo_root):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-abcdefgh1234")
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETtoken98765")
    cfg = load_config(repo_root / "configs/tiny_cpu.yaml",
                      ["tracking.tags={team: nlp, api_token: tok-SECRET-777, note: 'key sk-test-SECRET-abcdefgh1234'}",
                       "generate.diversify.base_url=https://user:pwSECRET@llm.example/v1"])
    t = Tracker(TrackingConfig(experiment="secrets", tags=cfg.tracking.tags), tmp_path, enabled=True)
    t.start(to_dict(cfg), tags={"hub": "https://x:hf_SECRETtoken98765@hub"})
    t.log_table([{"input": "uses sk-test-SECRET-abcdefgh1234"}], "rows.jsonl")
    t.close()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(t.run_id)
    texts = [*run.data.params.values(), *run.data.params.keys(), *run.data.tags.values()]
    art_root = Path(run.info.artifact_uri.removeprefix("file://"))
    texts += [p.read_text() for p in art_root.rglob("*") if p.is_file()]
    assert run.data.tags["team"] == "nlp" and run.data.params["generate.diversify.base_url"].startswith("https://***@")
    for text in texts:
        assert "SECRET" not in text, text[:200]
