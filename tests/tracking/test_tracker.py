"""Tracker against the embedded sqlite store and a real MLflow server: one run, params,
metrics and artifacts as expected; resumes continue the run; a dead or hanging server
loses nothing and stores nothing twice; secrets never reach MLflow."""
from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import mlflow
import pytest

from delia_dist.config import TrackingConfig, load_config, to_dict
from delia_dist.tracking import MAX_PARAM_LEN, Tracker


def history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def undelivered(run_dir):
    """Events in the run directory's log past its "delivered up to" cursor."""
    events = run_dir / "mlflow-events.jsonl"
    if not events.exists():
        return []
    cursor = run_dir / "mlflow-events.cursor"
    offset = int(cursor.read_text()) if cursor.exists() else 0
    return [json.loads(line) for line in events.read_bytes()[offset:].splitlines()]


def undelivered_metrics(run_dir):
    return [m for e in undelivered(run_dir) if "m" in e for m in e["m"]]


def artifact_files(client, run_id, path=None):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += artifact_files(client, run_id, a.path) if a.is_dir else [a.path]
    return sorted(out)


def test_sqlite_default_one_run_params_metrics_artifacts_and_resume(tmp_path, repo_root):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = load_config(repo_root / "configs/tiny_cpu.yaml")
    t = Tracker(TrackingConfig(experiment="unit", system_metrics=False), tmp_path, enabled=True)
    t.start(to_dict(cfg), tags={"world_size": "2", "model": "tiny"})
    assert t.run_id is not None  # the local store answers within start()
    for step in range(1, 4):
        t.log_metrics({"loss": 1.0 / step, "loss/diverse": 2.0 / step, "align/<sep>/json/l0": 0.5}, step)
    (tmp_path / "notes.txt").write_text("hello\n")
    t.log_artifact(tmp_path / "notes.txt", "extra")
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    t.log_figure(fig, "curve.png")
    plt.close(fig)
    t.log_table([{"input": "a", "score": 1.0}], "eval_rows.jsonl")
    t.set_tags({"last_checkpoint": "/ckpt/step_3"})
    state = t.state_dict()
    t.close()

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["train.lr"] == "0.003"
    assert run.data.params["data.sources.diverse.weight"] == "0.8"
    assert run.data.params["model.new_tokens.0.token"] == "<sep>"  # a special token is no secret
    assert run.data.tags["world_size"] == "2" and run.data.tags["model"] == "tiny"
    assert run.data.tags["last_checkpoint"] == "/ckpt/step_3" and run.info.status == "FINISHED"
    assert history(client, run.info.run_id, "loss/diverse") == [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3))]
    assert "align/_sep_/json/l0" in run.data.metrics
    assert artifact_files(client, run.info.run_id) == [
        "config.yaml", "extra/notes.txt", "plots/curve.png", "tables/eval_rows.jsonl"]
    assert state == {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "last_step": 3}
    assert not list((tmp_path / "mlflow-outbox").iterdir())  # staged copies removed once uploaded

    resumed = Tracker(TrackingConfig(experiment="unit", system_metrics=False), tmp_path, enabled=True)
    resumed.load_state_dict(state)
    resumed.start({"name": "ignored on resume"}, tags={"restart_count": "1"})
    resumed.log_metrics({"loss": 0.1}, step=4)
    resumed.close()
    assert resumed.run_id == t.run_id
    assert [s for s, _ in history(client, t.run_id, "loss")] == [1, 2, 3, 4]
    run = client.get_run(t.run_id)
    assert run.data.tags["restart_count"] == "1" and run.info.status == "FINISHED"
    assert len(client.search_runs([client.get_experiment_by_name("unit").experiment_id])) == 1


def test_params_respect_mlflow_limits(tmp_path):
    config = {"many": {f"k{i:03d}": i for i in range(250)}, "long": "x" * 10_000, "name": "limits"}
    t = Tracker(TrackingConfig(experiment="limits", system_metrics=False), tmp_path, enabled=True)
    t.start(config)
    t.close()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(t.run_id)
    assert run.info.run_name == "limits"
    assert len(run.data.params) == 252 and run.data.params["many.k249"] == "249"
    assert run.data.params["long"] == "x" * MAX_PARAM_LEN
    art = Path(run.info.artifact_uri.removeprefix("file://")) / "config.yaml"
    assert "x" * 10_000 in art.read_text()  # the full config lives in the artifact


def test_disabled_tracker_is_a_noop(tmp_path):
    t = Tracker(TrackingConfig(), tmp_path, enabled=False)
    t.load_state_dict({"run_id": None})
    t.start({"a": 1})
    t.log_metrics({"loss": 1.0}, 1)
    t.log_table([{"a": 1}], "x.jsonl")
    t.set_tags({"a": "b"})
    t.close()
    assert t.run_id is None and not list(tmp_path.iterdir())


def test_server_killed_mid_run_then_back_loses_nothing(tmp_path, mlflow_server, caplog):
    cfg = TrackingConfig(uri=mlflow_server.uri, experiment="outage", system_metrics=False,
                         flush_interval_s=0.2, retry_after_s=0.5)
    t = Tracker(cfg, tmp_path, enabled=True)
    t.start({"x": 1}, wait_s=30)  # for a server, start() only waits when asked to
    assert t.run_id is not None
    t.log_metrics({"loss": 1.0, "loss/diverse": 1.5}, 1)
    assert t.flush(30)
    mlflow_server.stop()
    with caplog.at_level(logging.WARNING, logger="delia.tracking"):
        for step in range(2, 40):
            t.log_metrics({"loss": float(step), "loss/diverse": step + 0.5}, step)
            time.sleep(0.05)  # a training step; the sender meanwhile fails and backs off
        assert t._events.sync(30)  # the outage's values are on local disk, waiting past the cursor
        assert [m[3] for m in undelivered_metrics(tmp_path) if m[0] == "loss"] == list(range(2, 40))
        mlflow_server.start()  # same port, same backend store
        t.log_metrics({"loss": 40.0}, 40)
        assert t.flush(60), "queued metrics were not delivered after the server came back"
        t.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "delia.tracking"]
    assert len([m for m in messages if "unreachable" in m]) == 1, messages  # once, not per step
    back = [m for m in messages if "reachable again" in m]
    assert len(back) == 1 and " values delivered late" in back[0], messages
    client = mlflow.tracking.MlflowClient(mlflow_server.uri)
    assert history(client, t.run_id, "loss") == [(s, float(s)) for s in range(1, 41)]
    assert [s for s, _ in history(client, t.run_id, "loss/diverse")] == list(range(1, 40))
    assert client.get_run(t.run_id).info.status == "FINISHED"
    assert not (tmp_path / "mlflow-events.jsonl").exists()  # all delivered: the log is gone


@pytest.fixture
def hanging_server():
    """Accepts TCP connections (backlog) and never answers: the slow-server case."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_hanging_server_close_is_bounded_and_the_next_job_replays_once(tmp_path, hanging_server,
                                                                           mlflow_server, caplog):
    run_dir = tmp_path / "run"
    cfg = TrackingConfig(uri=hanging_server, experiment="late", system_metrics=False, close_timeout_s=0.5,
                         flush_interval_s=0.1)
    t = Tracker(cfg, run_dir, enabled=True)
    t.start({"x": 1})
    assert t.run_id is None  # start() did not wait for the server
    for step in range(1, 21):
        t.log_metrics({"loss": float(step), "lr": step / 1000}, step)
    c0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="delia.tracking"):
        t.close()
    assert time.monotonic() - c0 < cfg.close_timeout_s + 10  # bounded by close_timeout_s, not the server
    assert t.run_id is None
    spilled = undelivered_metrics(run_dir)
    assert [(k, s) for k, _, _, s in spilled] == [(k, s) for s in range(1, 21) for k in ("loss", "lr")]
    kept = [r.getMessage() for r in caplog.records if "kept in" in r.getMessage()]
    assert len(kept) == 1 and str(run_dir / "mlflow-events.jsonl") in kept[0] and "40 metric values" in kept[0]

    t2 = Tracker(TrackingConfig(uri=mlflow_server.uri, experiment="late", system_metrics=False), run_dir)
    t2.start({"x": 1})
    t2.log_metrics({"loss": 21.0}, 21)
    assert t2.flush(60)
    t2.close()
    client = mlflow.tracking.MlflowClient(mlflow_server.uri)
    assert history(client, t2.run_id, "loss") == [(s, float(s)) for s in range(1, 22)]
    assert [s for s, _ in history(client, t2.run_id, "lr")] == list(range(1, 21))
    assert not (run_dir / "mlflow-events.jsonl").exists()


def test_hanging_server_everything_goes_to_the_log_in_order(tmp_path, hanging_server, mlflow_server):
    """The writer thread moves every event to disk while the server hangs (memory does not
    grow with the outage), in call order, and the next job sends all of it."""
    run_dir = tmp_path / "run"
    cfg = TrackingConfig(uri=hanging_server, experiment="bounded", system_metrics=False, close_timeout_s=0.2,
                         flush_interval_s=0.05)
    t = Tracker(cfg, run_dir, enabled=True)
    t.start({"x": 1})
    for step in range(1, 1001):
        t.log_metrics({"loss": float(step), "loss/downstream": step / 2, "lr": 1e-4}, step)
        if step == 500:
            assert t._events.sync(30) and len(undelivered_metrics(run_dir)) == 1500  # on disk mid-run
    t.close()
    lines = undelivered_metrics(run_dir)
    assert len(lines) == 3000 and [s for k, _, _, s in lines if k == "loss"] == list(range(1, 1001))

    t2 = Tracker(TrackingConfig(uri=mlflow_server.uri, experiment="bounded", system_metrics=False), run_dir)
    t2.start({"x": 1})
    assert t2.flush(60)
    t2.close()
    client = mlflow.tracking.MlflowClient(mlflow_server.uri)
    assert history(client, t2.run_id, "loss") == [(s, float(s)) for s in range(1, 1001)]
    assert len(history(client, t2.run_id, "loss/downstream")) == 1000


def test_restart_replays_spill_into_the_same_run_once(tmp_path, hanging_server, mlflow_server):
    """A job whose server hung at the end: the requeued job (run id from the checkpoint)
    sends the spilled values into the same run, each once, before its own."""
    run_dir = tmp_path / "run"
    fast = dict(system_metrics=False, flush_interval_s=0.1)
    first = Tracker(TrackingConfig(uri=mlflow_server.uri, experiment="requeue", **fast), run_dir)
    first.start({"x": 1}, wait_s=30)
    first.log_metrics({"loss": 1.0}, 1)
    assert first.flush(30)
    first.close()

    hung = Tracker(TrackingConfig(uri=hanging_server, experiment="requeue", close_timeout_s=0.3, **fast), run_dir)
    hung.load_state_dict(first.state_dict())
    hung.start({"x": 1})
    for step in range(2, 6):
        hung.log_metrics({"loss": float(step)}, step)
    hung.close()
    assert [m[3] for m in undelivered_metrics(run_dir)] == [2, 3, 4, 5]

    requeued = Tracker(TrackingConfig(uri=mlflow_server.uri, experiment="requeue", **fast), run_dir)
    requeued.load_state_dict(hung.state_dict())
    requeued.start({"x": 1})
    requeued.log_metrics({"loss": 6.0}, 6)
    assert requeued.flush(30)
    requeued.close()
    client = mlflow.tracking.MlflowClient(mlflow_server.uri)
    assert requeued.run_id == first.run_id
    assert history(client, first.run_id, "loss") == [(s, float(s)) for s in range(1, 7)]
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert not (run_dir / "mlflow-events.jsonl").exists()


def test_checkpoint_from_before_the_run_existed_still_resumes_into_it(tmp_path, mlflow_server):
    """The first checkpoint can be written before a slow server lets the sender create the
    run (its tracker state has no run id). The requeued job still continues the run the
    first job got, recorded beside the checkpoints; a fresh job in the same directory (no
    checkpoint loaded) gets a run of its own."""
    run_dir = tmp_path / "run"
    fast = dict(system_metrics=False, flush_interval_s=0.1)
    first = Tracker(TrackingConfig(uri=mlflow_server.uri, experiment="early-ckpt", **fast), run_dir)
    early_state = first.state_dict()  # what a checkpoint taken at once would hold
    assert early_state["run_id"] is None
    first.start({"x": 1})
    first.log_metrics({"loss": 1.0}, 1)
    assert first.flush(30)
    first.close("KILLED")

    requeued = Tracker(TrackingConfig(uri=mlflow_server.uri, experiment="early-ckpt", **fast), run_dir)
    requeued.load_state_dict(early_state)
    requeued.start({"x": 1})
    requeued.log_metrics({"loss": 2.0}, 2)
    assert requeued.flush(30)
    requeued.close()
    assert requeued.run_id == first.run_id
    client = mlflow.tracking.MlflowClient(mlflow_server.uri)
    assert history(client, first.run_id, "loss") == [(1, 1.0), (2, 2.0)]

    fresh = Tracker(TrackingConfig(uri=mlflow_server.uri, experiment="early-ckpt", **fast), run_dir)
    fresh.start({"x": 1}, wait_s=30)
    fresh.close()
    assert fresh.run_id not in (None, first.run_id)


def test_rejected_items_are_dropped_once_and_the_rest_arrives(tmp_path, mlflow_server, caplog):
    cfg = TrackingConfig(uri=mlflow_server.uri, experiment="rejects", system_metrics=False,
                         flush_interval_s=0.1, retry_after_s=0.2)
    t = Tracker(cfg, tmp_path, enabled=True)
    bad_key = "x" * 300  # MLflow allows 250 characters: 400 INVALID_PARAMETER_VALUE
    with caplog.at_level(logging.WARNING, logger="delia.tracking"):
        t.start({"x": 1})
        for step in range(1, 11):
            t.log_metrics({"loss": float(step), **({bad_key: 1.0} if step == 5 else {})}, step)
        t.set_tags({bad_key: "v", "good": "yes"})
        assert t.flush(30), "a rejected item is being retried"
        t.close()
    client = mlflow.tracking.MlflowClient(mlflow_server.uri)
    assert history(client, t.run_id, "loss") == [(s, float(s)) for s in range(1, 11)]
    assert client.get_run(t.run_id).data.tags["good"] == "yes"
    assert t.dropped == 2
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 2 and all(bad_key[:50] in m for m in rejected)
    assert sum("metric" in m and "step 5" in m for m in rejected) == 1 and sum("tag" in m for m in rejected) == 1
    assert not any("unreachable" in r.getMessage() for r in caplog.records)


def test_refused_run_is_not_retried_and_values_are_kept(tmp_path, mlflow_server, caplog):
    cfg = TrackingConfig(uri=mlflow_server.uri, experiment="", system_metrics=False, flush_interval_s=0.1,
                         retry_after_s=0.1, close_timeout_s=5)
    t = Tracker(cfg, tmp_path, enabled=True)  # an experiment name the server rejects (400)
    with caplog.at_level(logging.WARNING, logger="delia.tracking"):
        t.start({"x": 1})
        t.log_metrics({"loss": 1.0}, 1)
        deadline = time.monotonic() + 20
        while t._sender.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not t._sender.alive()  # gave up at the first 4xx, no retry loop
        t.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "delia.tracking"]
    assert sum("refused to create" in m for m in messages) == 1 and not any("unreachable" in m for m in messages)
    assert [m[:2] for m in undelivered_metrics(tmp_path)] == [["loss", 1.0]]


def test_deleted_run_drops_without_retrying(tmp_path, mlflow_server):
    cfg = TrackingConfig(uri=mlflow_server.uri, experiment="deleted", system_metrics=False,
                         flush_interval_s=0.1, retry_after_s=0.2)
    t = Tracker(cfg, tmp_path, enabled=True)
    t.start({"x": 1})
    t.log_metrics({"loss": 1.0}, 1)
    assert t.flush(30)
    mlflow.tracking.MlflowClient(mlflow_server.uri).delete_run(t.run_id)
    for step in range(2, 6):
        t.log_metrics({"loss": float(step)}, step)
    assert t.flush(30)
    t.close()
    assert t.dropped == 4 and not (tmp_path / "mlflow-events.jsonl").exists()


def test_secrets_reach_no_param_tag_or_artifact(tmp_path, monkeypatch, repo_root):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-abcdefgh1234")
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETtoken98765")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "plainSECRETpw")
    cfg = load_config(repo_root / "configs/tiny_cpu.yaml",
                      ["tracking.tags={team: nlp, api_token: tok-SECRET-777, note: 'key sk-test-SECRET-abcdefgh1234'}",
                       "tracking.uri=https://admin:pwSECRET@mlflow.example:5000",
                       "generate.diversify.base_url=https://user:pwSECRET@llm.example/v1"])
    config = to_dict(cfg)
    config["generate"]["diversify"]["api_key"] = "inline-SECRET-key"
    t = Tracker(TrackingConfig(experiment="secrets", tags=cfg.tracking.tags, system_metrics=False), tmp_path)
    t.start(config, tags={"hub": "https://x:hf_SECRETtoken98765@hub", "auth": "Bearer SECRETbearer123"})
    t.log_table([{"input": "uses sk-test-SECRET-abcdefgh1234", "password": "plainSECRETpw"}], "rows.jsonl")
    (tmp_path / "resolved.yaml").write_text("generate:\n  api_key: inline-SECRET-key\n  password: 'x-SECRET'\n")
    t.log_artifact(tmp_path / "resolved.yaml")
    t.set_tags({"endpoint": "https://admin:pwSECRET@mlflow.example:5000"})
    t.close()

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(t.run_id)
    texts = [*run.data.params.values(), *run.data.params.keys(), *run.data.tags.values()]
    art_root = Path(run.info.artifact_uri.removeprefix("file://"))
    arts = [p for p in art_root.rglob("*") if p.is_file()]
    assert {p.name for p in arts} == {"config.yaml", "rows.jsonl", "resolved.yaml"}
    texts += [p.read_text() for p in arts]
    assert run.data.tags["team"] == "nlp" and run.data.params["generate.diversify.base_url"].startswith("https://***@")
    assert run.data.params["tracking.uri"] == "https://***@mlflow.example:5000"
    assert run.data.params["generate.diversify.api_key_env"] == "OPENAI_API_KEY"  # a name, not a secret
    for text in texts:
        assert "SECRET" not in text, text[:300]


def test_unreadable_recorded_run_id_is_a_warning_and_a_new_run(tmp_path, caplog):
    (tmp_path / "mlflow-run.json").write_text('{"run_id": "abc", "exp')  # cut short by a crash
    t = Tracker(TrackingConfig(experiment="x", system_metrics=False), tmp_path, enabled=True)
    with caplog.at_level(logging.WARNING, logger="delia.tracking"):
        t.load_state_dict({"run_id": None})
    assert t.run_id is None
    assert "mlflow-run.json is unreadable" in caplog.text
