"""The real model (SmolLM2-135M-Instruct, tied embeddings, real chat template) through the
whole path: 2-rank ZeRO-3 LoRA with a new <sep> token, the export in plain transformers
and in vLLM's CPU build, and `delia data sample` answering real questions.

Lean on purpose (CI budget): one training run of a few short steps shared by the checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from delia_dist.gen.vllm_worker import gen_python

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
DESC = "a separator between the thought and the label"
PREFIX = "model.base_model.model."
EMB = PREFIX + "model.embed_tokens.modules_to_save.default.weight"
HEAD = PREFIX + "lm_head.modules_to_save.default.weight"
FROZEN_EMB = PREFIX + "model.embed_tokens.original_module.weight"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
needs_vllm = pytest.mark.skipif(not gen_python().exists(),
                                reason="vLLM environment absent (scripts/install.sh --gen makes .venv-gen)")


def _config(ws: Path, model_dir: Path) -> Path:
    cfg = {
        "name": "real-smollm2", "run_dir": str(ws / "run"),
        "model": {"name_or_path": str(model_dir), "dtype": "float32", "finetune": "lora",
                  "new_tokens": [{"token": "<sep>", "init": "description", "description": DESC}],
                  "lora": {"r": 16, "alpha": 16, "dropout": 0.0, "train_embeddings": True}},
        "data": {"seq_len": 192, "shuffle_buffer": 8, "pack_buffer": 4,
                 "sources": [{"name": "task", "kind": "downstream", "shards": str(ws / "shards/manifest.json"),
                              "weight": 1.0, "max_epochs": 1000}]},
        "train": {"lr": 2e-3, "warmup_steps": 0, "schedule": "constant", "max_steps": STEPS,
                  "micro_batch_size": 1, "grad_accum": 1, "precision": "fp32"},
        "loss": {"impl": "chunked"},
        "deepspeed": {"stage": 3, "overlap_comm": False, "stage3_param_persistence_threshold": 0,
                      "gather_16bit_weights_on_model_save": True, "torch_adam": True},
        "checkpoint": {"every_steps": STEPS, "keep_last": 1},
        "tracking": {"experiment": "real-smollm2", "log_every": 1, "system_metrics": False},
    }
    path = ws / "real.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smollm2_dir):
    """A few LoRA steps on 8 repeated <sep>-format samples: the loss must fall."""
    from transformers import AutoTokenizer

    from delia_dist.config.model import NewTokenConfig
    from delia_dist.data import ShardWriter
    from delia_dist.data.synth import format_records
    from delia_dist.model.new_tokens import add_tokens
    ws = tmp_path_factory.mktemp("real")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    add_tokens(tok, [NewTokenConfig(token="<sep>")])
    with ShardWriter(ws / "shards", tok) as w:
        for rec in format_records(8, seed=0):
            w.write(rec)
    assert w.loss_tokens > 8 * 5
    cmd = [sys.executable, "-m", "delia_dist.cli", "train", str(_config(ws, smollm2_dir)), "--nproc", "2",
           "--timeout", "300"]
    proc = subprocess.run(cmd, cwd=ws, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return ws / "run"


def test_zero3_lora_with_sep_learns_and_keeps_the_head_tied(trained, smollm2_dir):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    rows = [json.loads(l) for l in (trained / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["step"] > 0 and "loss" in r]
    assert len(losses) == STEPS and all(torch.isfinite(torch.tensor(losses))), losses
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses
    ckpt = trained / f"checkpoints/step_{STEPS}"
    state = json.loads((ckpt / "trainer_state.json").read_text())["new_tokens"]
    sep = state["new_token_ids"]["<sep>"]
    assert state["base_vocab"] == 49152 and sep == 49152
    w = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    assert torch.equal(w[EMB], w[HEAD])  # one trained matrix serves input and output
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(ckpt / "tokenizer")
    desc = tok(DESC, add_special_tokens=False)["input_ids"]
    init = w[FROZEN_EMB][desc].mean(0)  # the frozen copy keeps the description init
    torch.testing.assert_close(w[FROZEN_EMB][sep], init, rtol=0, atol=1e-6)
    assert (w[EMB][sep] - init).abs().max() > 1e-4  # the <sep> row was trained


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("real-export") / "hf"
    proc = subprocess.run([sys.executable, "-m", "delia_dist.cli", "ckpt", "export",
                           str(trained / "checkpoints"), str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_export_stays_tied_and_answers_in_transformers(trained, exported):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(exported)
    model = AutoModelForCausalLM.from_pretrained(exported)
    assert model.config.tie_word_embeddings
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert head.data_ptr() == emb.data_ptr()
    sep = tok.convert_tokens_to_ids("<sep>")
    ckpt = trained / f"checkpoints/step_{STEPS}"
    trained_row = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)[EMB][sep]
    torch.testing.assert_close(emb[sep].detach(), trained_row, rtol=0, atol=1e-6)
    ids = tok.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    gen = model.generate(ids, max_new_tokens=32, do_sample=False)
    answer = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    assert _on_topic(answer), answer


def _on_topic(answer: str) -> bool:
    """A sensible answer after a few steps of task training: the base model says "The
    capital of France is Paris."; the tuned one may first restate the question."""
    return "Paris" in answer or "capital of France" in answer


@needs_vllm
def test_export_generates_in_vllm(exported):
    from delia_dist.gen.vllm_worker import generate
    answer = generate(str(exported), [QUESTION], {"max_tokens": 32})[0]
    assert _on_topic(answer), answer


@needs_vllm
def test_data_sample_answers_real_questions(smollm2_dir, tmp_path):
    queries = tmp_path / "q.jsonl"
    qs = ["What is the capital of France?", "Name a primary colour.", "Say hello in French."]
    queries.write_text("".join(json.dumps({"query": q}) + "\n" for q in qs))
    cmd = [sys.executable, "-m", "delia_dist.cli", "data", "sample", "--model", str(smollm2_dir), "--input",
           str(queries), "--out", str(tmp_path / "out"), "--set", "generate.sample.max_tokens=24",
           "--set", "generate.sample.n=1", "--set", "generate.sample.temperature=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    from delia_dist.data.shards import iter_shard, load_manifest
    part = tmp_path / "out/part-00000"
    manifest = load_manifest(str(part / "manifest.json"))
    answers = {}
    for shard in manifest["shards"]:
        for _, parts in iter_shard(str(part / shard["path"])):
            rec = json.loads(parts["json"])
            answers[rec["messages"][0]["content"]] = rec["messages"][1]["content"]
    assert set(answers) == set(qs) and manifest["loss_tokens"] > 0
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert "Paris" in answers[qs[0]], answers
    assert len(tok(answers[qs[0]])["input_ids"]) < 24, answers  # stopped at <|im_end|> on its own
    assert all(len(a.split()) >= 2 for a in answers.values()), answers  # real text, not empty or junk
