"""Evaluation data (HF dataset loaders, the synthetic tasks) and the whole evaluation of an
HF model directory with transformers generation: a model that memorised the answers
scores perfectly; an untrained one scores zero without crashing."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch

from delia_dist.config import NewTokenConfig
from delia_dist.config.evaluation import AlignmentConfig, EvalConfig, EvalTaskConfig
from delia_dist.data import synth
from delia_dist.errors import UserError
from delia_dist.eval.runner import evaluate, format_token_losses
from delia_dist.eval.tasks import load_examples

ROWS = [{"query": "Translate: ta kalo", "response": "the cat"}, {"prompt": "Is it?", "response": "yes"},
        {"query": "Translate: husa", "response": "house"}]


def test_hf_dataset_loaders(tmp_path):
    from datasets import Dataset, DatasetDict
    norm = [{"query": r.get("query", r.get("prompt")), "response": r["response"]} for r in ROWS]
    DatasetDict({"train": Dataset.from_list(norm[:1]), "test": Dataset.from_list(norm)}).save_to_disk(tmp_path / "dd")
    assert [e.reference for e in load_examples(str(tmp_path / "dd"))] == ["the cat", "yes", "house"]
    assert [e.reference for e in load_examples(str(tmp_path / "dd"), split="train")] == ["the cat"]
    Dataset.from_list(norm).save_to_disk(tmp_path / "ds")
    assert load_examples(str(tmp_path / "ds"), max_samples=2)[1].label == "yes"
    (tmp_path / "pq").mkdir()
    Dataset.from_list(norm).to_parquet(str(tmp_path / "pq/test-00000.parquet"))
    assert [e.messages[-1]["content"] for e in load_examples(str(tmp_path / "pq"))][2] == "Translate: husa"
    (tmp_path / "a.json").write_text(json.dumps(norm))
    assert len(load_examples(str(tmp_path / "a.json"))) == 3
    DatasetDict({"dev": Dataset.from_list(norm), "valid": Dataset.from_list(norm)}).save_to_disk(tmp_path / "two")
    with pytest.raises(UserError, match=r"splits \['dev', 'valid'\]; set the task's split"):
        load_examples(str(tmp_path / "two"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="unsupported file type"):
        load_examples(str(tmp_path / "x.txt"))


def test_synthetic_tasks_are_learnable_and_well_formed():
    for rec in synth.translation_records(50, seed=1):
        assert rec["response"] == " ".join(synth.TO_ENGLISH[w] for w in rec["fields"]["source"].split())
    records = synth.format_records(200, seed=2)
    labels = [r["meta"]["label"] for r in records]
    assert 60 < labels.count("yes") < 140  # both classes present
    for r in records:  # the label follows from the fields: answer contradicts the fact or not
        assert (r["fields"]["fact"] != r["fields"]["answer"]) == (r["meta"]["label"] == "yes")
    assert synth.translation_records(5, 3) == synth.translation_records(5, 3)  # seeded
    for line in synth.paraphrase_lines():
        slots = set(re.findall(r"\{(\w+)\}", line["original"]))
        for p in line["paraphrases"]:
            assert set(re.findall(r"\{(\w+)\}", p)) == slots and ("<sep>" in p) == ("<sep>" in line["original"])


def _memorised_model_dir(tmp_path, tokenizer_dir, records, steps=200):
    """A tiny Llama trained until it reproduces each record's answer, saved as an HF dir."""
    from transformers import AutoTokenizer

    from delia_dist.model.new_tokens import add_tokens, resize_and_init
    from delia_dist.model.tiny import build_model, llama_config
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    new = [NewTokenConfig(token="<sep>", init="random")]
    add_tokens(tok, new)
    torch.manual_seed(0)
    model = build_model(llama_config(vocab_size=len(tok)))
    resize_and_init(model, tok, new, 64)
    seqs = []
    for ex in records:
        ids = tok.apply_chat_template(ex.messages + [{"role": "assistant", "content": ex.reference}], tokenize=True,
                                      return_dict=True)["input_ids"]
        seqs.append(torch.tensor(ids))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = sum(model(input_ids=s[None], labels=s[None]).loss for s in seqs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    out = tmp_path / "hf"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, float(loss.detach()) / len(seqs) if steps else None


class RecordingTracker:
    def __init__(self):
        self.tables, self.metrics = {}, {}

    def log_table(self, rows, name):
        self.tables[name] = rows

    def log_metrics(self, metrics, step):
        self.metrics.update(metrics)


def test_evaluate_an_hf_dir_with_transformers_generation(tmp_path, tiny_tokenizer_dir):
    data = tmp_path / "data"
    tr = synth.write_jsonl(data / "tr.jsonl", [
        {"query": "translate: ta kalo seer husa", "response": "the cat sees house"},
        {"query": "translate: husa er stor og ny", "response": "house is big and new"}])
    fmt = synth.write_jsonl(data / "fmt.jsonl", [
        {"instruction": "fact {f} in <sep>", "fields": {"f": "a"}, "response": synth.format_answer("ok", "no")},
        {"instruction": "fact {f} in <sep>", "fields": {"f": "b"}, "response": synth.format_answer("bad", "yes")}])
    examples = load_examples(str(tr)) + load_examples(str(fmt))
    hf_dir, final_loss = _memorised_model_dir(tmp_path, tiny_tokenizer_dir, examples)
    assert final_loss < 0.1
    cfg = SimpleNamespace(
        eval=EvalConfig(tasks=[EvalTaskConfig(name="tr", kind="translation", path=str(tr)),
                               EvalTaskConfig(name="fmt", kind="format", path=str(fmt))],
                        max_new_tokens=40, backend="transformers",
                        alignment=AlignmentConfig(keywords={"<sep>": ["json"]}, layers=[0, 2])),
        model=SimpleNamespace(new_tokens=[NewTokenConfig(token="<sep>")]))
    tracker = RecordingTracker()
    scores = evaluate(hf_dir, cfg, tracker=tracker, step=7)
    assert scores["eval/tr/bleu"] == pytest.approx(100.0) and scores["eval/tr/chrf"] == pytest.approx(100.0)
    for k in ("accuracy", "precision", "recall", "f1", "well_formed"):
        assert scores[f"eval/fmt/{k}"] == 1.0, k
    assert scores["eval/fmt/format_token_loss"] < 0.1
    assert {"align/<sep>/json/l0", "align/<sep>/json/l2", "align_cos/<sep>/json/l2"} <= scores.keys()
    assert tracker.metrics == scores
    rows = tracker.tables["eval_fmt.jsonl"]
    assert [r["prediction"] for r in rows] == ["no", "yes"] and all(r["score"] == 1.0 for r in rows)
    assert {"input", "output", "reference", "score"} <= tracker.tables["eval_tr.jsonl"][0].keys()


def test_untrained_model_scores_zero_and_format_loss_is_high(tmp_path, tiny_tokenizer_dir):
    fmt = synth.write_jsonl(tmp_path / "fmt.jsonl", synth.format_records(6, seed=5))
    examples = load_examples(str(fmt))
    hf_dir, _ = _memorised_model_dir(tmp_path, tiny_tokenizer_dir, examples, steps=0)
    cfg = SimpleNamespace(eval=EvalConfig(tasks=[EvalTaskConfig(name="fmt", kind="format", path=str(fmt))],
                                          max_new_tokens=16, backend="transformers"),
                          model=SimpleNamespace(new_tokens=[NewTokenConfig(token="<sep>")]))
    scores = evaluate(hf_dir, cfg)
    assert scores["eval/fmt/well_formed"] == 0.0 and scores["eval/fmt/accuracy"] == 0.0
    from transformers import AutoModelForCausalLM, AutoTokenizer
    losses = format_token_losses(AutoModelForCausalLM.from_pretrained(hf_dir), AutoTokenizer.from_pretrained(hf_dir),
                                 examples, ["<sep>"])
    assert losses["format_token_loss"] > 3.0 and losses["answer_loss"] > 3.0  # ~log(vocab) when untrained
    bare = load_examples(str(synth.write_jsonl(tmp_path / "bare.jsonl", [{"prompt": "Is it?", "response": "yes"}])))
    no_fmt = format_token_losses(AutoModelForCausalLM.from_pretrained(hf_dir), AutoTokenizer.from_pretrained(hf_dir),
                                 bare, ["<sep>"])
    assert "format_token_loss" not in no_fmt and no_fmt["answer_loss"] > 0
