"""A step directory in the oldest layout still in use resumes bit-identically: its
trainer_state.json has no world_size (counted from rank_<r>.pt) and its counters no
budget_tokens (the spent token budget is rebuilt from the step count, so the run still
ends where an uninterrupted one does). Two ranks, attention dropout on, so the RNG and
data-stream parts must come back exactly too."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
BUDGET = 256 * 4 * 1 * 2 * 4  # seq_len * micro_batch * grad_accum * 2 ranks * 4 steps


def train(ws: Path, run_dir: Path) -> str:
    cmd = [sys.executable, "-m", "delia_dist.cli", "train", str(REPO / "configs/tiny_cpu.yaml"), "--nproc", "2",
           "--timeout", "120", "--set", f"run_dir={run_dir}", "--set", "model.config.attention_dropout=0.1",
           "--set", "train.max_steps=null", "--set", f"data.token_budget={BUDGET}",
           "--set", "checkpoint.every_steps=2", "--set", "tracking.log_every=2", "--set", "checkpoint.keep_last=3"]
    proc = subprocess.run(cmd, cwd=ws, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["step"] > 0]


def fp32_weights(step_dir: Path) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    return get_fp32_state_dict_from_zero_checkpoint(str(step_dir.parent), tag=step_dir.name)


def test_a_step_dir_without_world_size_and_budget_counter_resumes_bit_identically(tmp_path):
    from delia_dist.data.synth import prepare_workspace
    prepare_workspace(tmp_path / "runs/tiny", n_train=80, n_eval=8, n_diverse=600)
    straight = tmp_path / "straight"
    train(tmp_path, straight)
    assert [s for s, _ in losses(straight)] == [1, 2, 3, 4]

    old = tmp_path / "old"
    shutil.copytree(straight, old)
    ckpts = old / "checkpoints"
    shutil.rmtree(ckpts / "step_4")
    (ckpts / "latest").write_text("step_2")
    state_file = ckpts / "step_2/trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["world_size"], state["counters"]["budget_tokens"]
    state_file.write_text(json.dumps(state))

    out = train(tmp_path, old)
    assert f"resumed from {ckpts / 'step_2'} at step 2" in out and "resuming on" not in out
    assert losses(old)[-2:] == losses(straight)[2:]  # steps 3 and 4, exactly
    resumed = json.loads((ckpts / "step_4/trainer_state.json").read_text())
    assert resumed["counters"]["budget_tokens"] == BUDGET and resumed["world_size"] == 2
    a, b = fp32_weights(straight / "checkpoints/step_4"), fp32_weights(ckpts / "step_4")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
