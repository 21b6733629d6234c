"""What MLflow's UI reads, written where it reads it: parent/child runs, the runs' data
sources as datasets with their role, source and commit tags, the experiment's kind, and
each experiment's artifacts in a directory of its own."""
from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import mlflow
import pytest

from delia_dist.config import TrackingConfig
from delia_dist.data import ShardWriter
from delia_dist.tracking import Tracker
from delia_dist.tracking.datasets import manifest_digest, source_datasets
from delia_dist.tracking.ui_tags import source_tags


@pytest.fixture
def sources(tmp_path, tiny_tokenizer):
    out = []
    for name, kind, n in (("chat", "diverse", 6), ("task", "downstream", 3)):
        with ShardWriter(tmp_path / "shards" / name, tiny_tokenizer) as w:
            for i in range(n):
                w.write({"prompt": f"question {i} of {name}", "response": f"answer {i}"})
        out.append(SimpleNamespace(name=name, kind=kind, weight=0.5,
                                   shards=str(tmp_path / "shards" / name / "manifest.json")))
    return out


def test_child_run_with_datasets_tags_and_its_own_artifact_root(tmp_path, sources):
    store = tmp_path / "matrix"
    uri = f"sqlite:///{store}/mlflow.db"
    parent = Tracker(TrackingConfig(uri=uri, experiment="exp", run_name="matrix", system_metrics=False),
                     store / "_matrix")
    parent.start({}, tags={})
    cfg = TrackingConfig(uri=uri, experiment="exp", run_name="delia-1x", system_metrics=False,
                         parent_run_id=parent.run_id)
    child = Tracker(cfg, store / "delia-1x")
    child.start({"name": "x"}, tags=source_tags("delia train"))
    child.log_datasets(source_datasets(sources))
    state = child.state_dict()
    child.close()
    resumed = Tracker(cfg, store / "delia-1x")  # a resumed job logs its inputs again: stored once
    resumed.load_state_dict(state)
    resumed.start({}, tags={})
    resumed.log_datasets(source_datasets(sources))
    resumed.close()
    parent.close()

    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("exp")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.artifact_location == (store / "mlartifacts" / "exp").as_uri()  # not inside one run's directory
    run = client.get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == head and run.data.tags["mlflow.source.name"] == "delia train"
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["chat", "task"]
    assert {n: d.tags[0].value for n, d in inputs.items()} == {"chat": "diverse", "task": "downstream"}
    assert all(d.tags[0].key == "mlflow.data.context" for d in inputs.values())
    profile = json.loads(inputs["task"].dataset.profile)
    manifest = json.loads((tmp_path / "shards/task/manifest.json").read_text())
    assert profile == {"samples": 3, "tokens": manifest["tokens"], "loss_tokens": manifest["loss_tokens"], "shards": 1}
    assert inputs["task"].dataset.digest == manifest_digest(manifest) != inputs["chat"].dataset.digest
    assert json.loads(inputs["task"].dataset.source) == {"uri": sources[1].shards}


def test_existing_store_keeps_its_artifact_location_and_gains_the_kind(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    old = (tmp_path / "base" / "mlartifacts").as_uri()
    mlflow.tracking.MlflowClient(uri).create_experiment("old", artifact_location=old)
    t = Tracker(TrackingConfig(uri=uri, experiment="old", system_metrics=False), tmp_path / "run")
    t.start({}, tags={})
    (tmp_path / "note.txt").write_text("x\n")
    t.log_artifact(tmp_path / "note.txt")
    t.close()
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name("old")
    assert exp.artifact_location == old and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert (tmp_path / "base" / "mlartifacts" / t.run_id / "artifacts" / "note.txt").is_file()


def test_digest_follows_content_not_place_or_time(tmp_path, sources):
    manifest = json.loads(open(sources[1].shards).read())
    moved = {**manifest, "created": "2030-01-01T00:00:00", "shards": [{**s, "url": "s3://x/" + s["path"]}
                                                                         for s in manifest["shards"]]}
    assert manifest_digest(moved) == manifest_digest(manifest)
    assert manifest_digest({**manifest, "tokens": manifest["tokens"] + 1}) != manifest_digest(manifest)


def test_unreadable_manifest_is_skipped_with_a_warning(tmp_path, sources, caplog):
    broken = SimpleNamespace(name="gone", kind="diverse", weight=0.5, shards=str(tmp_path / "nope" / "manifest.json"))
    assert [d["name"] for d in source_datasets([broken, sources[1]])] == ["task"]
    assert "source gone: manifest" in caplog.text and "not logged as an MLflow dataset" in caplog.text


def test_repository_url_loses_credentials(tmp_path):
    repo, plain = tmp_path / "repo", tmp_path / "plain"
    plain.mkdir()
    git = ["git", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                   check=True)
    subprocess.run(git + ["remote", "add", "origin", "https://bob:ghp_secret123@host/x.git"], check=True)
    tags = source_tags("delia train", job=True, code_dir=repo)
    assert tags["mlflow.source.git.repoURL"] == "https://host/x.git" and tags["mlflow.source.type"] == "JOB"
    assert len(tags["mlflow.source.git.commit"]) == 40
    assert source_tags("x", code_dir=plain) == {"mlflow.source.name": "x", "mlflow.source.type": "LOCAL"}


def test_a_source_with_weight_zero_is_not_an_input(sources):
    """The baseline keeps the diverse source in its config at weight 0 and reads none of it."""
    unused = SimpleNamespace(**{**vars(sources[0]), "weight": 0.0})
    assert [d["name"] for d in source_datasets([unused, sources[1]])] == ["task"]
