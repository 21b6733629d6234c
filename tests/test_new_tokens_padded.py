"""New tokens on padded vocabularies: the base vocabulary is the tokenizer's, a new token
gets its configured init on whatever row it lands (also a checkpoint's padding row), `mean`
averages real-token rows only, the matrix never shrinks. In process, then under 2-rank
ZeRO-3 after an optimizer step (whose fp32 master copy would undo late writes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from delia_dist.config.model import NewTokenConfig
from delia_dist.model.new_tokens import add_tokens, resize_and_init

REPO = Path(__file__).resolve().parents[1]
DESC = "json format with thought and hallucination"
NEW = [NewTokenConfig(token="<sep>", init="description", description=DESC),
       NewTokenConfig(token="<m>", init="mean"), NewTokenConfig(token="<r>", init="random")]


def _tables(model):
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    return [emb] if out is emb else [emb, out]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("rows", [600, 513])
def test_new_tokens_on_a_padded_matrix(tiny_tokenizer_dir, tied, rows):
    from transformers import AutoTokenizer

    from delia_dist.model.tiny import build_model, llama_config
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    base = len(tok)
    model = build_model(llama_config(vocab_size=rows, tie_word_embeddings=tied))
    with torch.no_grad():
        for t in _tables(model):
            t[base:] = 0.5  # untrained padding rows, far from any real row
    before = [t.detach().clone() for t in _tables(model)]
    ids = add_tokens(tok, NEW)
    assert ids == [base, base + 1, base + 2] and ids[0] < rows  # the first lands on a padding row
    report = resize_and_init(model, tok, NEW, pad_to_multiple_of=64)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    n = model.get_input_embeddings().weight.shape[0]
    assert n == (600 if rows == 600 else 576) and n >= max(rows, len(tok))  # never shrunk, padded when grown
    assert report["base_vocab"] == base and report["old_vocab"] == rows and report["new_vocab"] == n
    desc = tok(DESC, add_special_tokens=False)["input_ids"]
    for table, old in zip(_tables(model), before):
        mean = old[:base].mean(0)
        torch.testing.assert_close(table[ids[0]], old[desc].mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(table[ids[1]], mean, rtol=0, atol=1e-6)
        assert (table[ids[1]] - old[:rows].mean(0)).abs().max() > 1e-4  # padding rows are not averaged
        assert table[ids[2]].abs().max() < 0.2 and table[ids[2]].std() > 1e-3  # random init, not 0.5 padding
        assert torch.equal(table[:base], old[:base])
        kept = slice(base + 3, min(rows, n))  # the checkpoint's remaining padding rows stay as they were
        assert torch.equal(table[kept], old[kept])
        added = slice(max(rows, base + 3), n)  # padding rows added here get the real-token mean
        torch.testing.assert_close(table[added], mean.expand(n - added.start, -1), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from delia_dist.data.synth import prepare_workspace
    root = tmp_path_factory.mktemp("padded")
    paths = prepare_workspace(root / "runs/tiny", n_train=40, n_eval=4, n_diverse=200)
    from transformers import AutoTokenizer
    return root, len(AutoTokenizer.from_pretrained(paths["tokenizer"]))


def _train(ws, rows, name, *overrides):
    run_dir = ws / name
    tokens = json.dumps([{"token": "<sep>", "init": "description", "description": DESC},
                         {"token": "<m>", "init": "mean"}])
    cmd = [sys.executable, "-m", "delia_dist.cli", "train", str(REPO / "configs/tiny_cpu.yaml"), "--nproc", "2",
           "--timeout", "120", "--set", f"run_dir={run_dir}", "--set", "train.max_steps=1",
           "--set", "train.lr=0", "--set", "train.warmup_steps=0", "--set", f"model.config.vocab_size={rows}",
           "--set", f"model.new_tokens={tokens}", "--set", "checkpoint.every_steps=1"]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=ws, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return run_dir / "checkpoints/step_1"


@pytest.mark.parametrize("tied", [True, False])
def test_padded_rows_hold_their_init_after_a_zero3_step(ws, tied):
    """Tied: LoRA with trained embeddings (one shared trained matrix); untied: full fine-tuning."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoTokenizer
    root, base = ws
    rows = base + 88  # a padded checkpoint: more rows than tokens, and no resize needed
    extra = ["model.config.tie_word_embeddings=true", "model.finetune=lora"] if tied else []
    ckpt = _train(root, rows, f"tied{tied}", *extra)
    state = json.loads((ckpt / "trainer_state.json").read_text())["new_tokens"]
    assert state["base_vocab"] == base and state["old_vocab"] == rows and state["new_vocab"] == rows
    sep, m = state["new_token_ids"]["<sep>"], state["new_token_ids"]["<m>"]
    assert (sep, m) == (base, base + 1)  # both inside the checkpoint's padding rows
    w = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    if tied:
        names = ["model.base_model.model.model.embed_tokens.modules_to_save.default.weight",
                 "model.base_model.model.lm_head.modules_to_save.default.weight"]
        assert torch.equal(w[names[0]], w[names[1]])  # the trained head is the trained embedding
    else:
        names = ["model.model.embed_tokens.weight", "model.lm_head.weight"]
        assert not torch.equal(w[names[0]], w[names[1]])
    tok = AutoTokenizer.from_pretrained(ckpt / "tokenizer")
    desc = tok(DESC, add_special_tokens=False)["input_ids"]
    for name in names:
        table = w[name]
        assert table.shape[0] == rows
        torch.testing.assert_close(table[sep], table[desc].mean(0), rtol=0, atol=1e-6)
        torch.testing.assert_close(table[m], table[:base].mean(0), rtol=0, atol=1e-6)
        assert (table[m] - table[:rows].mean(0)).abs().max() > 1e-5  # padding rows not in the mean


@pytest.mark.parametrize("tied", [True, False])
def test_lora_trains_a_tied_sep_row_once(tiny_tokenizer_dir, tied):
    """LoRA with trained embeddings: a tied model has one trained matrix (the <sep> row the
    model reads is the one it writes) and merges back tied; an untied one trains both."""
    from transformers import AutoTokenizer

    from delia_dist.config.model import LoraConfig
    from delia_dist.model.build import apply_lora, output_head
    from delia_dist.model.tiny import build_model, llama_config
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    model = build_model(llama_config(vocab_size=len(tok), tie_word_embeddings=tied))
    sep = add_tokens(tok, NEW[:1])[0]
    resize_and_init(model, tok, NEW[:1], pad_to_multiple_of=64)
    model = apply_lora(model, LoraConfig(r=4, alpha=4, dropout=0.0))
    emb = model.get_base_model().get_input_embeddings().modules_to_save["default"].weight
    assert (output_head(model).weight is emb) == tied
    ids = torch.tensor([[1, 5, sep, 7, sep, 9]])
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    merged = model.merge_and_unload()
    e, h = merged.get_input_embeddings().weight, merged.get_output_embeddings().weight
    assert merged.config.tie_word_embeddings == tied and (e is h) == tied
    torch.testing.assert_close(e[sep], emb[sep], rtol=0, atol=0)
