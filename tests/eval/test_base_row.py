"""The `base` row of a matrix scores the untrained model with the new tokens added the way
a run adds them at step 0 (same init rule, same seed), so its alignment is the run's start."""
from __future__ import annotations

import textwrap

import pytest


def test_base_row_measures_the_token_as_a_run_initialises_it(tmp_path, tiny_model, tiny_tokenizer):
    from delia_dist.config import load_config
    from delia_dist.eval.alignment import alignment_metrics
    from delia_dist.experiment.matrix import evaluate_base
    from delia_dist.model.build import build_model, load_tokenizer

    model_dir = tmp_path / "model"
    tiny_model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    cfg_path = tmp_path / "exp.yaml"
    cfg_path.write_text(textwrap.dedent(f"""\
        run_dir: {tmp_path / "runs"}
        model:
          name_or_path: {model_dir}
          dtype: float32
          new_tokens: [{{token: "<sep>", init: random}}]
        data:
          sources: [{{name: task, kind: downstream, shards: unused/manifest.json, weight: 1.0}}]
        train: {{seed: 7, precision: fp32}}
        tracking: {{system_metrics: false}}
        eval:
          alignment: {{keywords: {{"<sep>": [json, thought]}}, layers: [0, 1]}}
        experiment: {{eval_base: true}}
        """))
    row = evaluate_base(str(cfg_path), [], tmp_path / "runs")

    cfg = load_config(cfg_path)
    tok = load_tokenizer(cfg.model)
    run_start, _ = build_model(cfg.model, tok, None, "fp32", seed=7)  # what the trainer builds before step 0
    expected = alignment_metrics(run_start, tok, {"<sep>": ["json", "thought"]}, [0, 1])
    assert len(expected) == 8
    for k, v in expected.items():
        assert row[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert row["steps"] == 0 and (tmp_path / "runs/base/hf/tokenizer.json").is_file()
