"""The matrix's controls: fixed instruction (counted from the data stream), equal steps
(steps_from follows the steps its reference actually trained), seeds (each run repeated,
the report's interval over seeds)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _downstream_segments(cfg, tokenizer, n_rows: int) -> list[tuple[int, ...]]:
    """Token ids of each downstream sample the stream packs into its first n_rows rows."""
    from delia_dist.data.stream import build_train_stream
    stream = build_train_stream(cfg.data, tokenizer, micro_batch_size=1)
    out = []
    for _ in range(n_rows):
        b = stream.next_arrays()
        ids, seg, src = b["input_ids"][0], b["segment_ids"][0], b["source_ids"][0]
        for s in range(1, int(seg.max()) + 1):
            where = seg == s
            if (src[where] == 1).all():
                out.append(tuple(int(t) for t in ids[where]))
    return out


def test_fixed_instruction_trains_every_record_with_its_one_instruction(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from delia_dist.config import load_config
    from delia_dist.data.records import to_messages, tokenize_messages
    from delia_dist.data.synth import prepare_workspace

    monkeypatch.chdir(tmp_path)
    paths = prepare_workspace("runs/tiny", n_train=40, n_eval=2, n_diverse=20)
    tokenizer = AutoTokenizer.from_pretrained(paths["tokenizer"])
    records = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    assert len({r["instruction"] for r in records}) == 2  # one instruction per task
    as_written = {tuple(int(t) for t in tokenize_messages(tokenizer, to_messages(r))[0]) for r in records}
    only_task = ["data.sources.diverse.weight=0.0", "data.sources.downstream.weight=1.0"]
    base = str(REPO / "configs/tiny_cpu.yaml")

    fixed = _downstream_segments(load_config(base, only_task + ["data.sources.downstream.instructions=fixed"]),
                                 tokenizer, 30)
    assert len(fixed) >= 40  # more than one epoch of the 40 records
    assert sum(seg in as_written for seg in fixed) == len(fixed)

    paraphrased = _downstream_segments(load_config(base, only_task), tokenizer, 30)
    assert len(paraphrased) >= 40
    assert sum(seg in as_written for seg in paraphrased) < len(paraphrased) / 2  # the control differs


def test_bad_controls_are_one_line_errors_naming_the_key():
    from delia_dist.config import load_config
    from delia_dist.config.errors import ConfigError

    base = str(REPO / "configs/tiny_cpu.yaml")
    with pytest.raises(ConfigError, match=r"tiny_cpu.yaml:\d+: experiment.runs: equal-steps-3x: steps_from "
                                          r"'delia-9x' must name a run listed before it"):
        load_config(base, ["experiment.runs.equal-steps-3x.steps_from=delia-9x"], check_paths=False)
    with pytest.raises(ConfigError, match=r"experiment.seeds: must be distinct integers >= 0, got \[0, 0\]"):
        load_config(base, ["experiment.seeds=[0,0]"], check_paths=False)
    with pytest.raises(ConfigError, match=r"instructions"):
        load_config(base, ["data.sources.downstream.instructions=fixd"], check_paths=False)


def test_seed_interval_is_a_t_interval_over_the_per_seed_values():
    from delia_dist.experiment.seeds import seed_interval, seed_rows, t_quantile

    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-5)  # the t table's value
    assert t_quantile(0.975, 1) == pytest.approx(12.706205, abs=1e-4)
    assert t_quantile(0.975, 1000) == pytest.approx(1.962339, abs=1e-5)
    mean, lo, hi = seed_interval([0.5, 0.6, 0.7])
    sd = float(np.std([0.5, 0.6, 0.7], ddof=1))  # 0.1
    half = 4.302653 * sd / 3 ** 0.5  # by hand: t(0.975, 2) s / sqrt(n)
    assert (mean, lo, hi) == pytest.approx((0.6, 0.6 - half, 0.6 + half), abs=1e-5)

    key = "eval/format/accuracy"
    results = [{"run": f"delia-s{s}", "group": "delia", "seed": s, "steps": 10, key: v,
                key + "_lo": v - 0.1, key + "_hi": v + 0.1} for s, v in zip((0, 1, 2), (0.5, 0.6, 0.7))]
    results.append({"run": "base", "steps": 0, key: 0.0})
    rows = seed_rows(results)
    assert [r["group"] for r in rows] == ["delia"]
    row = rows[0]
    assert row["n_seeds"] == 3 and row[key] == pytest.approx(0.6)
    assert (row[key + "_seed_lo"], row[key + "_seed_hi"]) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-5)
    # the per-example bootstrap beside it: the per-seed bounds, averaged
    assert (row[key + "_lo"], row[key + "_hi"]) == pytest.approx((0.5, 0.7))


def _shard(records: list[dict], tokenizer_dir: Path, out: Path) -> Path:
    from transformers import AutoTokenizer

    from delia_dist.data import ShardWriter
    with ShardWriter(out, AutoTokenizer.from_pretrained(tokenizer_dir), max_shard_bytes=1 << 20) as w:
        for r in records:
            w.write(r)
    return out / "manifest.json"


def test_tiny_matrix_with_seeds_and_controls_end_to_end(tmp_path):
    """A DELIA run that ends when its 2 downstream records are used up and its equal-steps
    control, each for seeds 0 and 1 (fixed instructions are checked on the stream above: a
    run of them here would only add two trainings to the suite)."""
    cli = [sys.executable, "-m", "delia_dist.cli"]
    synth = subprocess.run(cli + ["data", "synth", "runs/tiny", "--train", "40", "--eval", "4", "--diverse", "300"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert synth.returncode == 0, synth.stderr[-3000:]
    train = [json.loads(line) for line in (tmp_path / "runs/tiny/data/downstream_train.jsonl").read_text().splitlines()]
    pair = _shard([r for r in train if r["meta"]["task"] == "format"][:2], tmp_path / "runs/tiny/tokenizer",
                  tmp_path / "runs/tiny/shards/pair")
    cfg = yaml.safe_load((REPO / "configs/tiny_cpu.yaml").read_text())
    cfg["eval"].update(tasks=[{"name": "format", "kind": "format", "path": "runs/tiny/data/eval_format.jsonl"}],
                       max_new_tokens=8, every_steps=None, grad_cosine=False)
    on_pair = [f"data.sources.downstream.shards={pair}", "train.schedule=constant"]
    cfg["experiment"] = {"nproc": 2, "seeds": [0, 1], "runs": [
        {"name": "delia-pair", "overrides": on_pair + ["data.sources.diverse.weight=0.97",
                                                       "data.sources.downstream.weight=0.03",
                                                       "data.sources.downstream.max_epochs=1",
                                                       "data.sources.downstream.on_exhausted=stop",
                                                       "train.max_steps=40"]},
        {"name": "equal-steps", "steps_from": "delia-pair",
         "overrides": on_pair + ["data.sources.diverse.weight=0.0", "data.sources.downstream.weight=1.0"]}]}
    config = tmp_path / "matrix.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(cli + ["experiment", str(config), "--set", "checkpoint.every_steps=100"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]

    results = {r["run"]: r for r in json.loads((tmp_path / "runs/tiny/experiment_results.json").read_text())}
    assert sorted(results) == sorted(f"{n}-s{s}" for n in ("delia-pair", "equal-steps")
                                     for s in (0, 1))
    assert all(r["status"] == "ok" for r in results.values())
    for s in (0, 1):
        delia, control = results[f"delia-pair-s{s}"], results[f"equal-steps-s{s}"]
        assert 1 <= delia["steps"] < 40  # ended when its 2 downstream records were used up
        assert delia["samples/downstream"] == 2 and delia["samples/diverse"] > 2 * 5  # each record once
        assert control["steps"] == delia["steps"] and control["steps_from"] == f"delia-pair-s{s}"
        assert delia["group"] == "delia-pair" and delia["seed"] == s
    losses = {results[f"delia-pair-s{s}"]["train_loss_first"] for s in (0, 1)}
    assert len(losses) == 2  # the seed reached the data order / init

    report = (tmp_path / "runs/tiny/report/report.md").read_text()
    assert "over seeds" in report and "| delia-pair | 2 |" in report
    assert "Student t" in proc.stdout


def test_delia_report_groups_seeds_from_mlflow_tags(tmp_path):
    """`delia report` (rows read back from MLflow) groups the seeds by the tags the matrix sets."""
    from delia_dist.config import TrackingConfig
    from delia_dist.experiment.report import build_report
    from delia_dist.experiment.seeds import seed_interval
    from delia_dist.tracking import Tracker

    acc = {0: 0.4, 1: 0.55, 2: 0.5}
    for seed, value in acc.items():
        t = Tracker(TrackingConfig(experiment="seeds", run_name=f"delia-s{seed}", system_metrics=False,
                                   tags={"group": "delia", "seed": str(seed)}), tmp_path, enabled=True)
        t.start({}, tags={})
        t.log_metrics({"loss": 1.0, "eval/format/accuracy": value}, 4)
        t.close()
    build_report("seeds", f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "out")
    mean, lo, hi = seed_interval(list(acc.values()))
    assert f"| delia | 3 | 4 | {mean:.3f} [{lo:.3f}, {hi:.3f}] |" in (tmp_path / "out/report.md").read_text()
