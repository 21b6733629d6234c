"""2-rank DeepSpeed ZeRO-3 training on CPU (gloo), through the same worker entry as Slurm.

One straight run and one interrupted-and-resumed run share a workspace; the assertions
are what a user relies on: loss goes down, parameters are really sharded, a resume is
bit-identical, a crash mid-save leaves the previous checkpoint usable, new-token rows
hold their init after an optimizer step, and the export loads and generates.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from workspace import tiny_workspace

REPO = Path(__file__).resolve().parents[2]
STEPS = 8


def train(ws: Path, run: str, *overrides: str, env_extra: dict | None = None, expect: int = 0) -> Path:
    run_dir = ws / run
    cmd = [sys.executable, "-m", "delia_dist.cli", "train", str(REPO / "configs/tiny_cpu.yaml"), "--nproc", "2",
           "--timeout", "120",
           "--set", f"run_dir={run_dir}", "--set", "model.config.attention_dropout=0.1",
           "--set", "checkpoint.every_steps=4",
           "--set", "tracking.log_every=4", "--set", "checkpoint.keep_last=3"]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-5000:]
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def fp32_weights(ckpt: Path) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tiny_workspace(tmp_path_factory, "zero3")  # the config's relative paths resolve from here


@pytest.fixture(scope="module")
def straight(ws):
    return train(ws, "straight", f"train.max_steps={STEPS}")


def test_loss_goes_down_and_params_are_sharded(straight):
    rows = metrics(straight)
    assert rows[0]["step"] == 0 and rows[0]["params/max_rank_fraction"] <= 0.55  # 2 ranks: ~1/2 each
    losses = [r["loss"] for r in rows if r["step"] > 0]
    assert len(losses) == STEPS
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.2, losses
    assert {"loss/diverse", "loss/downstream"} <= set(rows[-1])


def test_crash_mid_save_then_resume_is_bit_identical(ws, straight):
    # First attempt dies inside the step-8 save (after the shards, before the rename).
    run = train(ws, "resumed", f"train.max_steps={STEPS}",
                env_extra={"DELIA_TEST_CRASH_DURING_SAVE": str(STEPS)}, expect=1)
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_4"
    assert (ckpts / f".tmp-step_{STEPS}").is_dir() and not (ckpts / f"step_{STEPS}").exists()
    # New processes resume from the last complete checkpoint (step 4) and finish.
    train(ws, "resumed", f"train.max_steps={STEPS}")
    assert (ckpts / "latest").read_text() == f"step_{STEPS}"
    assert not (ckpts / f".tmp-step_{STEPS}").exists()
    straight_losses = {r["step"]: r["loss"] for r in metrics(straight) if r["step"] > 0}
    resumed = [r for r in metrics(run) if r["step"] > 0]
    assert [r["step"] for r in resumed[-4:]] == [5, 6, 7, 8]
    for r in resumed:  # steps 1-8 of the crashed attempt and 5-8 after resume
        assert r["loss"] == straight_losses[r["step"]], (r["step"], r["loss"], straight_losses[r["step"]])
    a, b = fp32_weights(straight / f"checkpoints/step_{STEPS}"), fp32_weights(ckpts / f"step_{STEPS}")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def lr0(ws):
    """One step at lr 0: the checkpoint holds the weights as initialised."""
    return train(ws, "lr0", "train.max_steps=1", "train.lr=0", "train.warmup_steps=0",
                 "model.new_tokens.0.init=description")


def test_new_token_rows_hold_their_init_after_a_step_at_lr0(lr0, tiny_tokenizer_dir):
    run = lr0
    state = json.loads((run / "checkpoints/step_1/trainer_state.json").read_text())
    sep = state["new_tokens"]["new_token_ids"]["<sep>"]
    old = state["new_tokens"]["old_vocab"]
    w = fp32_weights(run / "checkpoints/step_1")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(run / "checkpoints/step_1/tokenizer")
    desc = tok("json format with thought and hallucination", add_special_tokens=False)["input_ids"]
    for name in ("model.model.embed_tokens.weight", "model.lm_head.weight"):
        table = w[name]
        torch.testing.assert_close(table[sep], table[desc].mean(0), rtol=0, atol=1e-6)
        mean = table[:old].mean(0)
        assert (table[sep] - mean).abs().max() > 1e-3  # description init is not the mean init
        torch.testing.assert_close(table[old + 1:], mean.expand(table.shape[0] - old - 1, -1), rtol=0, atol=1e-6)


def test_alignment_at_step_0_is_the_metric_on_the_freshly_initialised_model(lr0):
    """Logged before any update, on every run: the weights at lr 0 are the initial ones."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from delia_dist.eval.alignment import alignment_metrics
    logged = metrics(lr0)[0]
    assert logged["step"] == 0
    tok = AutoTokenizer.from_pretrained(lr0 / "checkpoints/step_1/tokenizer")
    state = json.loads((lr0 / "checkpoints/step_1/trainer_state.json").read_text())
    mc = dict(state["config"]["model"]["config"])
    mc["vocab_size"] = state["new_tokens"]["new_vocab"]
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(mc.pop("model_type"), **mc))
    w = {k.removeprefix("model."): v for k, v in fp32_weights(lr0 / "checkpoints/step_1").items()}
    model.load_state_dict(w, strict=True)
    model.eval()
    fresh = alignment_metrics(model, tok, {"<sep>": ["json", "thought"]}, [0, 1, 2])
    assert fresh.keys() <= logged.keys() and len(fresh) == 12
    for k, v in fresh.items():
        assert logged[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_export_loads_and_generates(ws, straight, tmp_path):
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "delia_dist.cli", "ckpt", "export",
                           str(straight / "checkpoints"), str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert "<sep>" in tok.get_vocab() and model.config.vocab_size % 64 == 0
    assert model.config.vocab_size >= len(tok)
    ids = tok.apply_chat_template([{"role": "user", "content": "hello <sep>"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert tok.convert_tokens_to_ids("<sep>") in ids[0].tolist()
    gen = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] > ids.shape[1]


def test_export_of_missing_checkpoint_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "delia_dist.cli", "ckpt", "export", str(tmp_path / "nope"),
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a complete delia checkpoint" in proc.stderr


def test_lora_trains_under_zero3_and_exports_merged(ws, tmp_path):
    run = train(ws, "lora", "train.max_steps=4", "model.finetune=lora", "model.lora.r=8", "model.lora.alpha=16")
    losses = [r["loss"] for r in metrics(run) if r["step"] > 0]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    state = fp32_weights(run / "checkpoints/step_4")
    prefix = "model.base_model.model."
    q = prefix + "model.layers.0.self_attn.q_proj."
    assert state[q + "lora_B.default.weight"].abs().max() > 0  # adapters moved off their zero init
    out = tmp_path / "lora-hf"
    proc = subprocess.run([sys.executable, "-m", "delia_dist.cli", "ckpt", "export", str(run / "checkpoints"),
                           str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoModelForCausalLM
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    expected = state[q + "base_layer.weight"] \
        + (16 / 8) * state[q + "lora_B.default.weight"] @ state[q + "lora_A.default.weight"]
    torch.testing.assert_close(merged["model.layers.0.self_attn.q_proj.weight"], expected, rtol=1e-5, atol=1e-6)
    # new-token rows are trained through the full embedding copy (modules_to_save)
    torch.testing.assert_close(merged["model.embed_tokens.weight"],
                               state[prefix + "model.embed_tokens.modules_to_save.default.weight"])
    torch.testing.assert_close(merged["lm_head.weight"], state[prefix + "lm_head.modules_to_save.default.weight"])


def test_downstream_once_at_a_sample_ratio_on_2_ranks(ws):
    """No step limit: the run's length follows from the data, it ends cleanly when both
    ranks used up their downstream share, every downstream record was drawn once, and the
    logged per-source sample counts show r diverse samples per downstream sample."""
    run = train(ws, "once", "train.max_steps=null", "data.diverse_ratio=3", "data.downstream_once=true",
                "eval.every_steps=null")
    n_down = json.loads((ws / "runs/tiny/shards/downstream/manifest.json").read_text())["samples"]
    rows = metrics(run)
    last = [r for r in rows if "samples/downstream" in r][-1]
    assert last["samples/downstream"] == n_down
    assert abs(last["samples/diverse"] / n_down - 3) <= 2 * 4 / n_down  # within one draw per rank
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == last["step"] == rows[-1]["step"]


@pytest.mark.parametrize("tied", [False, True])
def test_lora_adapter_on_embed_tokens_exports_the_peft_merge(ws, tmp_path, tied):
    """The authors' layout: adapters on q/k/v/o and embed_tokens, lm_head frozen. Trained
    under ZeRO-3 on 2 ranks, the export equals PEFT's merge_and_unload of the same adapter;
    a tied model's exported head is the merged embedding, an untied one's the frozen head."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    run = train(ws, f"lora-emb-{tied}", "train.max_steps=3", "model.finetune=lora", "model.lora.r=4",
                "model.lora.alpha=8", "model.lora.train_embeddings=false",
                "model.lora.target_modules=[q_proj, k_proj, v_proj, o_proj, embed_tokens]",
                f"model.config.tie_word_embeddings={str(tied).lower()}")
    ckpt = run / "checkpoints/step_3"
    state = {k.removeprefix("model."): v for k, v in fp32_weights(ckpt).items()}
    emb = "base_model.model.model.embed_tokens."
    assert state[emb + "lora_embedding_A.default"].abs().max() > 0  # the adapter moved off its zero init
    trainer_state = json.loads((ckpt / "trainer_state.json").read_text())
    sep = trainer_state["new_tokens"]["new_token_ids"]["<sep>"]
    assert state[emb + "lora_embedding_A.default"][:, sep].abs().max() > 0  # the new row learns through it
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "delia_dist.cli", "ckpt", "export", str(run / "checkpoints"),
                           str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]

    mc = dict(trainer_state["config"]["model"]["config"])
    mc["vocab_size"] = trainer_state["new_tokens"]["new_vocab"]
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model(mc.pop("model_type"), **mc))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                 "embed_tokens"]))
    missing, unexpected = peft_model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    reference = peft_model.merge_and_unload().state_dict()
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert exported.config.tie_word_embeddings is tied
    got = exported.state_dict()
    assert got.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(got[k], reference[k], rtol=1e-5, atol=1e-5, msg=k)
    if tied:
        assert got["lm_head.weight"].data_ptr() == got["model.embed_tokens.weight"].data_ptr()
    else:
        torch.testing.assert_close(got["lm_head.weight"], state["base_model.model.lm_head.weight"], rtol=0, atol=0)
    assert (got["model.embed_tokens.weight"] - state[emb + "base_layer.weight"]).abs().max() > 0  # merged
