"""Bootstrap intervals of the format scores and the plain reading built on them."""
from __future__ import annotations

import json

import pytest

from delia_dist.eval.bootstrap import bootstrap_intervals
from delia_dist.eval.metrics import format_scores
from delia_dist.eval.summary import compare, interval_table, reading


def _rows(n_right: int, n_wrong: int, n_malformed: int = 0):
    outputs, gold = [], []
    for i in range(n_right + n_wrong + n_malformed):
        g = "yes" if i % 2 else "no"
        if i < n_right:
            out = str({"thought": "t", "hallucination": g})
        elif i < n_right + n_wrong:
            out = str({"thought": "t", "hallucination": "no" if g == "yes" else "yes"})
        else:
            out = "not an answer"
        outputs.append(out)
        gold.append(g)
    return format_scores(outputs, gold)


def test_interval_contains_the_estimate_and_narrows_with_more_examples():
    scores, rows = _rows(14, 6)
    ci = bootstrap_intervals(rows)
    lo, hi = ci["accuracy"]
    assert lo < scores["accuracy"] == 0.7 < hi
    assert 0.4 < lo and hi < 0.95  # 20 examples: wide, but not everything
    _, rows_big = _rows(140, 60)
    lo_big, hi_big = bootstrap_intervals(rows_big)["accuracy"]
    assert lo < lo_big < 0.7 < hi_big < hi
    assert bootstrap_intervals(rows) == ci  # fixed seed: same outputs, same interval


def test_constant_outcomes_give_a_point_interval_and_malformed_counts():
    scores, rows = _rows(0, 0, 10)
    ci = bootstrap_intervals(rows)
    assert scores["well_formed"] == 0.0 and ci["well_formed"] == (0.0, 0.0) and ci["accuracy"] == (0.0, 0.0)
    _, rows = _rows(10, 0)
    assert bootstrap_intervals(rows)["accuracy"] == (1.0, 1.0)
    assert bootstrap_intervals([]) == {}


def _result(run, acc, lo, hi):
    r = {"run": run, "steps": 5, "wall_s": 10.0}
    for m in ("accuracy", "f1", "well_formed"):
        r[f"eval/format/{m}"], r[f"eval/format/{m}_lo"], r[f"eval/format/{m}_hi"] = acc, lo, hi
    return r


def test_reading_calls_a_difference_only_outside_the_intervals():
    base, baseline = _result("base", 0.1, 0.0, 0.2), _result("baseline", 0.6, 0.5, 0.7)
    close, far = _result("delia-1x", 0.65, 0.55, 0.75), _result("delia-3x", 0.9, 0.8, 0.97)
    assert compare(baseline, base) == "above" and compare(close, baseline) == "overlap"
    assert compare(base, baseline) == "below"
    lines = reading([base, baseline, close, far], n_examples=40)
    assert lines[0].startswith("baseline vs the untrained model (base) on 40 held-out examples: "
                               "accuracy 0.100 -> 0.600")
    assert "better beyond" in lines[0]
    assert "delia-1x vs baseline: accuracy +0.050; the intervals overlap" in lines[1]
    assert "delia-3x is better beyond" in lines[2]
    control = {**_result("equal-steps-3x", 0.95, 0.9, 1.0), "steps_from": "delia-3x"}
    lines = reading([base, baseline, far, control])
    assert lines[-1] == ("delia-3x vs equal-steps-3x (its equal-steps control, 5 optimizer steps each): "
                         "accuracy -0.050; the intervals overlap: not shown to be more than extra steps.")
    table = interval_table([base, baseline])
    assert "0.600 [0.500, 0.700]" in table and table.splitlines()[0].startswith("run")


def test_heldout_paraphrases_never_reach_training(tmp_path):
    from delia_dist.data.synth import REAL_FORMAT_INSTRUCTION, prepare_real_task, split_paraphrases

    paths = prepare_real_task(tmp_path, n_train=10, n_eval=9)
    paras = [f"{{fact}} {{answer}} <sep> wording {i}" for i in range(7)]
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"original": REAL_FORMAT_INSTRUCTION, "paraphrases": paras}) + "\n")
    n_train, n_held = split_paraphrases(src, paths["eval_pool"], tmp_path / "train.jsonl", tmp_path / "eval.jsonl", 3)
    assert (n_train, n_held) == (4, 3)
    train = json.loads((tmp_path / "train.jsonl").read_text())
    evals = [json.loads(l) for l in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert train["paraphrases"] == paras[:4]
    assert {e["instruction"] for e in evals} == set(paras[4:])  # every held-out wording is used
    assert not {e["instruction"] for e in evals} & {REAL_FORMAT_INSTRUCTION, *train["paraphrases"]}
    with pytest.raises(ValueError, match="need more than"):
        split_paraphrases(src, paths["eval_pool"], tmp_path / "t2.jsonl", tmp_path / "e2.jsonl", 7)
