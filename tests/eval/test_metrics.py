"""Metric values a user can check by hand, and format answers parsed without tricks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu

from delia_dist.errors import UserError
from delia_dist.eval.format_parse import parse_answer
from delia_dist.eval.metrics import format_scores, translation_scores
from delia_dist.eval.tasks import load_examples

REFERENCE = Path(__file__).resolve().parents[3] / "shared/data/delia-reference"


def test_bleu_chrf_are_sacrebleus_numbers():
    hyps = ["the cat sat on the mat", "a quick brown fox", "hello"]
    refs = ["the cat is on the mat", "the quick brown fox", "goodbye"]
    s = translation_scores(hyps, refs)
    assert s["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert s["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert translation_scores(refs, refs) == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
    assert translation_scores(["x y z w"], ["a b c d"])["bleu"] == 0.0
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        translation_scores(["a", "b"], ["a"])


@pytest.mark.parametrize("text,expected", [
    ('{"thought": "ok", "hallucination": "yes"}', "yes"),
    ("{'thought': 'it says \"red\"', 'hallucination': 'no'}", "no"),
    ("Sure! {'thought': 'x', 'hallucination': 'No'} done", "no"),
    ("{'thought': {'nested': 1}, 'hallucination': 'yes'}", None),   # thought must be text
    ("{'thought': 'x', 'hallucination': 'maybe'}", None),
    ("{'thought': 'x'}", None),
    ("hallucination: yes", None),
    ("{'thought': 'x', 'hallucination': 'yes'", None),               # unbalanced
    ("{'thought': __import__('os').getcwd(), 'hallucination': 'yes'}", None),  # never executed
    ("", None),
])
def test_parse_answer(text, expected):
    parsed = parse_answer(text)
    assert (parsed["hallucination"] if parsed else None) == expected


def test_format_confusion_matrix_counts_malformed_as_wrong():
    outputs = ["{'thought': 'a', 'hallucination': 'yes'}", "{'thought': 'b', 'hallucination': 'no'}",
               "garbage", "{'thought': 'd', 'hallucination': 'yes'}"]
    scores, rows = format_scores(outputs, ["yes", "yes", "no", "no"])
    # tp=1 (1st), fn=1 (2nd), fp=2 (malformed on a 'no', 'yes' on a 'no'), tn=0
    assert scores["accuracy"] == pytest.approx(0.25)
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(0.5)
    assert scores["f1"] == pytest.approx(0.4)
    assert scores["well_formed"] == pytest.approx(0.75)
    assert [r["prediction"] for r in rows] == ["yes", "no", "malformed", "yes"]
    # a 'yes' gold answered 'yes' is never flipped (the reference script's yes->no bug)
    assert format_scores(["{'thought': 't', 'hallucination': 'yes'}"], ["yes"])[0]["accuracy"] == 1.0


def test_load_examples_shapes_and_errors(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"instruction": "Judge {fact} in the <sep> format {'a': 1}", "fields": {"fact": "F"},
         "response": "{'thought': 't', 'hallucination': 'no'}"},
        {"query": "Translate: X", "response": "Y"},
        {"prompt": "P", "response": "yes"},
        {"messages": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]},
    ]) + "\n")
    ex = load_examples(str(f))
    assert ex[0].messages[-1]["content"] == "Judge F in the <sep> format {'a': 1}" and ex[0].label == "no"
    assert ex[1].reference == "Y" and ex[1].label is None
    assert ex[2].label == "yes" and ex[3].reference == "A"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "response": "b"}\n{oops\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: invalid JSON"):
        load_examples(str(bad))
    bad.write_text('{"text": "a"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: unknown record shape"):
        load_examples(str(bad))
    with pytest.raises(UserError, match="evaluation data not found"):
        load_examples(str(tmp_path / "missing.jsonl"))


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="DELIA reference data not present (not part of the product)")
def test_loaders_and_parser_on_the_delia_reference_data():
    path = REFERENCE / "format_train.jsonl"
    train = load_examples(str(path))
    assert len(train) == sum(1 for l in path.read_text().splitlines() if l.strip()) \
        and all("<sep>" in e.messages[-1]["content"] for e in train)
    assert all(e.label in ("yes", "no") for e in train)  # every reference answer parses
    halu = load_examples(str(REFERENCE / "halu_cot_json_test.jsonl"))
    assert len(halu) == 1506 and sum(e.label == "yes" for e in halu) == 282
    wmt = load_examples(str(REFERENCE / "wmt21_is_en_test.jsonl"))
    assert len(wmt) == 47 and translation_scores([e.reference for e in wmt],
                                                 [e.reference for e in wmt])["bleu"] == pytest.approx(100)


def test_empty_and_degenerate_outputs_do_not_crash():
    assert translation_scores(["", ""], ["the cat sat on the mat", "a dog"])["bleu"] == 0.0
    scores, rows = format_scores(["", "{", "}{", "{'hallucination': 'yes', 'thought': 1}", "[1, 2]"],
                                 ["yes", "no", "yes", "yes", "no"])
    assert scores["well_formed"] == 0.0 and scores["accuracy"] == 0.0
    assert scores["precision"] == 0.0 and scores["recall"] == 0.0 and scores["f1"] == 0.0
    assert all(r["prediction"] == "malformed" for r in rows)
    assert format_scores([], [])[0]["accuracy"] == 0.0
