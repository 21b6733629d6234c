"""Redaction both ways: secrets never reach MLflow params, tags or text artifacts, while
tokenizer settings (sep_token, pad_token, new_tokens, "<sep>") stay readable."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from delia_dist.config import TrackingConfig
from delia_dist.redact import REDACTED, is_secret_key, redact, redact_text, secret_like
from delia_dist.tracking import Tracker


@pytest.mark.parametrize("key", ["api_key", "OPENAI_API_KEY", "openaiKey", "secret", "client_secret", "password",
                                 "db.password", "access_token", "auth_token", "hf_token", "HF_TOKEN", "api_token",
                                 "token", "credentials", "aws_secret_access_key", "auth"])
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["sep_token", "pad_token", "bos_token", "eos_token", "unk_token", "mask_token",
                                 "max_new_tokens", "new_tokens", "tokenizer", "token_budget", "keywords",
                                 "api_key_env", "text_key", "num_key_value_heads"])
def test_ordinary_keys(key):
    assert not is_secret_key(key)


def test_redact_values_both_ways(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "plain-SECRET-pw7")
    cfg = {"model": {"sep_token": "<sep>", "pad_token": "PAD", "eos_token": "</s>", "hf_token": "abcSECRETdef",
                     "new_tokens": [{"token": "json_start", "init": "mean"}, {"token": "<sep>"}]},
           "generate": {"api_key": "inline-SECRET", "base_url": "https://u:pSECRET@h/v1",
                        "api_key_env": "OPENAI_API_KEY",
                        "note": "key sk-SECRETabcdefgh and ghp_SECRET1234567 and hf_SECRET12345 and plain-SECRET-pw7"}}
    out = redact(cfg)
    assert out["model"]["sep_token"] == "<sep>" and out["model"]["pad_token"] == "PAD"
    assert out["model"]["eos_token"] == "</s>" and out["model"]["new_tokens"][0]["token"] == "json_start"
    assert out["model"]["new_tokens"][1]["token"] == "<sep>" and out["generate"]["api_key_env"] == "OPENAI_API_KEY"
    assert out["model"]["hf_token"] == REDACTED and out["generate"]["api_key"] == REDACTED
    assert out["generate"]["base_url"] == "https://***@h/v1"
    assert "SECRET" not in json.dumps(out)


def test_ordinary_env_values_do_not_mask_paths_or_config(monkeypatch, tmp_path):
    """Secret-named variables with ordinary values (a word, a path) leave paths and config
    values intact; a long random value of such a variable is still masked everywhere."""
    run_dir = str(tmp_path / "experiments" / "tiny_cpu" / "run")
    monkeypatch.setenv("MUNGE_AUTH", "experiments")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path))
    monkeypatch.setenv("CI_JOB_TOKEN", "tiny_cpu")
    monkeypatch.setenv("SERVICE_API_TOKEN", "Zq8xT3vLm0pR7sKw2Yb4")  # no provider prefix: only the env knows
    cfg = {"run_dir": run_dir, "data": {"shards": f"{run_dir}/shards/{{000..003}}.tar", "note": "experiments"},
           "model": {"name_or_path": "tiny_cpu"}, "log": f"called with Zq8xT3vLm0pR7sKw2Yb4 at {run_dir}"}
    out = redact(cfg)
    assert out["run_dir"] == run_dir and out["data"] == cfg["data"] and out["model"] == cfg["model"]
    assert out["log"] == f"called with {REDACTED} at {run_dir}"
    assert redact_text(f"HOME={tmp_path} dir=experiments") == f"HOME={tmp_path} dir=experiments"


@pytest.mark.parametrize("value, secret", [
    ("Zq8xT3vLm0pR7sKw2Yb4", True), ("plain-SECRET-pw7", True), ("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", True),
    ("0123456789abcdef0123456789abcdef", True), ("experiments", False), ("/home/u/.config/gcp.json", False),
    ("~/keys/gcp.json", False), ("tiny_cpu", False), ("correct horse battery staple", False),
    ("https://mlflow.example:5000", False), ("plainSECRETpw", False)])
def test_secret_like(value, secret):
    assert secret_like(value) is secret


def test_redact_text_both_ways(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETtoken98765")
    text = ("sep_token: <sep>\npad_token: '[PAD]'\nmax_new_tokens: 64\naccess_token: abcSECRETxyz\n"
            '{"auth_token": "tokSECRET1", "password": "pwSECRET", "sep_token": "<sep>"}\n'
            "HF_TOKEN=hf_SECRETtoken98765\nAuthorization: Bearer SECRETbearer123\n")
    out = redact_text(text)
    assert "SECRET" not in out
    for readable in ("sep_token: <sep>", "pad_token: '[PAD]'", "max_new_tokens: 64", '"sep_token": "<sep>"'):
        assert readable in out


def test_params_tags_and_artifacts_masked_and_readable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SECRETtoken98765")
    config = {"name": "redact", "model": {"sep_token": "<sep>", "pad_token": "<pad>", "hf_token": "hf_SECRETtoken98765",
                                          "new_tokens": [{"token": "<sep>", "init": "description"}]},
              "generate": {"api_key": "inline-SECRET-key", "access_token": "tokSECRET"}}
    t = Tracker(TrackingConfig(experiment="redact", system_metrics=False), tmp_path / "run")
    t.start(config, tags={"auth_token": "tagSECRET", "sep_token": "<sep>"})
    t.set_tags({"password": "pwSECRET", "pad_token": "<pad>"})
    (tmp_path / "resolved.yaml").write_text("model:\n  sep_token: <sep>\n  pad_token: '<pad>'\n"
                                            "  hf_token: hf_SECRETtoken98765\n"
                                            "generate:\n  api_key: inline-SECRET-key\n")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"sep_token": "<sep>", "access_token": "tokSECRET"}) + "\n")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    (tmp_path / "plot.png").write_bytes(png)
    for name in ("resolved.yaml", "rows.jsonl", "plot.png"):
        t.log_artifact(tmp_path / name, "files")
    t.close()

    run = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/run/mlflow.db").get_run(t.run_id)
    params, tags = run.data.params, run.data.tags
    assert params["model.sep_token"] == "<sep>" and params["model.pad_token"] == "<pad>"
    assert params["model.new_tokens.0.token"] == "<sep>"
    assert params["model.hf_token"] == REDACTED and params["generate.api_key"] == REDACTED
    assert params["generate.access_token"] == REDACTED
    assert tags["sep_token"] == "<sep>" and tags["pad_token"] == "<pad>"
    assert tags["auth_token"] == REDACTED and tags["password"] == REDACTED
    files = Path(run.info.artifact_uri.removeprefix("file://")) / "files"
    yaml_text, jsonl_text = (files / "resolved.yaml").read_text(), (files / "rows.jsonl").read_text()
    assert "sep_token: <sep>" in yaml_text and "pad_token: '<pad>'" in yaml_text
    assert json.loads(jsonl_text)["sep_token"] == "<sep>"
    assert (files / "plot.png").read_bytes() == png  # binary goes as it is
    for text in (yaml_text, jsonl_text, (files.parent / "config.yaml").read_text(), *params.values(), *tags.values()):
        assert "SECRET" not in text, text[:300]
