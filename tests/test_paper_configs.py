"""The paper configs: each loads with the authors' recipe, names a missing file as one error
before any training, and `delia experiment --dry-run` prints its matrix with resolved token
shares and steps; the tiny stand-in runs a paper-style matrix end to end on 2 CPU ranks."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from delia_dist.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
PAPER = sorted((REPO / "configs/paper").glob("*.yaml"))
CLUSTER = [p for p in PAPER if "tiny" not in p.name]


def cli(*args, cwd=None, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "delia_dist.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_config_loads_with_the_authors_recipe(path):
    cfg = load_config(path)
    t, lora = cfg.train, cfg.model.lora
    assert (t.lr, t.warmup_steps, t.schedule, t.weight_decay, t.betas) == (
        2e-4 if "tiny" not in path.name else 3e-3, 25 if "tiny" not in path.name else 2, "constant", 0.01, [0.9, 0.999])
    assert cfg.model.finetune == "lora" and not lora.train_embeddings and (lora.alpha, lora.dropout) == (16, 0.05)
    assert lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "embed_tokens"]
    assert cfg.data.downstream_once and cfg.data.diverse_ratio and cfg.train.max_steps is None
    assert cfg.data.token_budget is None and all(n.init == "random" for n in cfg.model.new_tokens)
    assert cfg.experiment.runs[0].name == "baseline" and len(cfg.experiment.runs) >= 2
    if "70b" in path.name:  # the 70B cluster settings come from configs/llama3_70b.yaml
        base = load_config(REPO / "configs/llama3_70b.yaml")
        assert cfg.deepspeed == base.deepspeed and cfg.data.shuffle_buffer == base.data.shuffle_buffer
        assert cfg.model.attn_implementation == "sdpa" and cfg.experiment.slurm_script.endswith("70b.sh")
    for task in cfg.eval.tasks:
        if task.kind == "translation" and path in CLUSTER:
            assert task.max_new_tokens == "longest_reference" and cfg.eval.bleurt_checkpoint


@pytest.mark.parametrize("path", CLUSTER, ids=lambda p: p.name)
def test_missing_model_and_bleurt_are_one_error_each(tmp_path, path):
    with pytest.raises(ConfigError, match=r"model\.name_or_path: path does not exist: /models/"):
        load_config(path, check_paths=True)
    model = tmp_path / "model"
    model.mkdir()
    over = [f"model.name_or_path={model}"]
    with pytest.raises(ConfigError, match=r"data\.sources\.0\.shards: no shards at /datasets/delia/paper/.*manifest"
                                          r"\.json \(run `delia data shard"):
        load_config(path, over, check_paths=True)
    proc = cli("experiment", str(path), "--set", over[0])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no shards at" in proc.stderr, proc.stderr
    if load_config(path).eval.bleurt_checkpoint:
        shards = tmp_path / "m.json"
        shards.write_text("{}")
        test = tmp_path / "test.jsonl"
        test.write_text("")
        over += [f"data.sources.diverse.shards={shards}", f"data.sources.downstream.shards={shards}",
                 f"eval.tasks.0.path={test}"]
        with pytest.raises(ConfigError, match=r"eval\.bleurt_checkpoint: path does not exist: /models/BLEURT-20"):
            load_config(path, over, check_paths=True)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from delia_dist.data.synth import prepare_workspace
    root = tmp_path_factory.mktemp("paper")
    prepare_workspace(root / "runs/tiny", n_train=40, n_eval=6, n_diverse=400)
    return root


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_dry_run_prints_shares_ratio_and_steps(ws, path):
    man = {k: json.loads((ws / f"runs/tiny/shards/{k}/manifest.json").read_text()) for k in ("diverse", "downstream")}
    proc = cli("experiment", str(path), "--dry-run", "--world-size", "64",
               "--set", f"data.sources.diverse.shards={ws}/runs/tiny/shards/diverse/manifest.json",
               "--set", f"data.sources.downstream.shards={ws}/runs/tiny/shards/downstream/manifest.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = load_config(path)
    mean = {k: m["tokens"] / m["samples"] for k, m in man.items()}
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[2:] if line.strip()}
    per_step = cfg.data.seq_len * cfg.train.micro_batch_size * cfg.train.grad_accum * 64
    for run in cfg.experiment.runs:
        r = float(next(o.split("=")[1] for o in run.overrides if o.startswith("data.diverse_ratio")))
        share = r * mean["diverse"] / (r * mean["diverse"] + mean["downstream"])
        total = int(man["downstream"]["tokens"] / (1 - share))
        cols = rows[run.name].split()
        assert cols[1] == "samples" and cols[2] == f"diverse={share:.3f}," and cols[3] == f"downstream={1 - share:.3f}"
        assert float(cols[4]) == pytest.approx(r) and int(cols[5]) == max(1, math.ceil(total / per_step))
    assert "nothing was trained" in proc.stdout


def test_tiny_stand_in_runs_the_paper_matrix_end_to_end(ws):
    """Baseline and DELIA at 4 diverse samples per downstream sample, each downstream record
    once, LoRA with the embedding adapter on a tied model, exported and evaluated."""
    proc = cli("experiment", str(REPO / "configs/paper/tiny_cpu_paper.yaml"), "--set", "eval.max_new_tokens=16",
               "--set", "eval.every_steps=null", cwd=ws, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["run"]: r for r in json.loads((ws / "runs/tiny/paper/experiment_results.json").read_text())}
    n_down = json.loads((ws / "runs/tiny/shards/downstream/manifest.json").read_text())["samples"]
    for name, ratio in (("baseline", 0), ("delia-4x", 4)):
        r = results[name]
        assert r["status"] == "ok" and "eval/format/accuracy" in r and "eval/translation/bleu" in r
        rows = [json.loads(line) for line in (ws / f"runs/tiny/paper/{name}/metrics.jsonl").read_text().splitlines()]
        last = [x for x in rows if "samples/downstream" in x][-1]
        assert last["samples/downstream"] == n_down  # every downstream record once
        assert abs(last.get("samples/diverse", 0) - ratio * n_down) <= 2 * (ratio + 1)
        assert "align/<sep>/json/l0" in rows[0] and rows[0]["step"] == 0
    assert results["delia-4x"]["steps"] > results["baseline"]["steps"]
    import mlflow  # the resolved mix is logged as params of every run
    client = mlflow.tracking.MlflowClient(f"sqlite:///{ws}/runs/tiny/paper/mlflow.db")
    params = {r.info.run_name: r.data.params for e in client.search_experiments()
              for r in client.search_runs([e.experiment_id])}
    assert params["delia-4x"]["mix.diverse_per_downstream"] == "4.0" and params["baseline"]["mix.unit"] == "samples"
    assert float(params["delia-4x"]["mix.diverse.token_share"]) > 0.5 \
        and int(params["delia-4x"]["mix.expected_steps"]) > 0
