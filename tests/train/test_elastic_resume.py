"""A ZeRO-3 checkpoint written by 2 ranks resumes on 1 and on 3 ranks (gloo, torchrun),
with nothing to do by hand: fp32 master weights and Adam moments arrive unchanged (merged
over the ranks and compared exactly), the data stream continues, the loss curve carries on
instead of restarting, and the MLflow run is the same one."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from workspace import tiny_workspace

REPO = Path(__file__).resolve().parents[2]
STOP = 4


def train(ws: Path, run_dir: Path, nproc: int, *overrides: str) -> str:
    cmd = [sys.executable, "-m", "delia_dist.cli", "train", str(REPO / "configs/tiny_cpu.yaml"),
           "--nproc", str(nproc), "--timeout", "120", "--set", f"run_dir={run_dir}",
           "--set", f"checkpoint.every_steps={STOP}", "--set", "tracking.log_every=2",
           "--set", "checkpoint.keep_last=3"]
    for o in overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, cwd=ws, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout + proc.stderr


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_id(out: str) -> str:
    return re.findall(r"\[delia\] training \w+ at step \d+; .*; mlflow run (\S+)", out)[-1]


def merged(step_dir: Path, state: str) -> dict[str, torch.Tensor]:
    from delia_dist.checkpoint.zero_reader import ZeroReader
    r = ZeroReader(step_dir, state=state)
    return {n: r.get(n) for n in r.trainable}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tiny_workspace(tmp_path_factory, "elastic")


@pytest.fixture(scope="module")
def two_rank(ws):
    run = ws / "two"
    out = train(ws, run, 2, f"train.max_steps={STOP}")
    return run, run_id(out)


def resume_on(ws: Path, src: Path, name: str, nproc: int) -> tuple[Path, str]:
    """A copy of run `src` that loads its step STOP on `nproc` ranks and saves it again there."""
    run = ws / name
    shutil.copytree(src, run)
    return run, train(ws, run, nproc, f"train.max_steps={STOP}")


@pytest.fixture(scope="module")
def three_rank(ws, two_rank):
    return resume_on(ws, two_rank[0], "to3", 3)


def bytes_read_per_rank(out: str) -> tuple[list[int], int]:
    """The universal load's line: what each rank read of the universal files, and their size."""
    m = re.findall(r"universal load: .*; bytes read per rank \[([\d, ]+)\] of (\d+)", out)
    assert len(m) == 1, out[-3000:]
    return [int(x) for x in m[0][0].split(",")], int(m[0][1])


@pytest.mark.parametrize("old,new", [(2, 1), (2, 3), (3, 2)])
def test_checkpoint_loads_on_other_sizes_with_optimizer_state(ws, two_rank, request, old, new):
    """2->1, 2->3 and back 3->2: states arrive unchanged, and each rank read only its own
    partition of the universal copy (bytes it copied from the mapped files, whole pages,
    plus each file's zip directory and pickle; DeepSpeed's own loader reads it all)."""
    src = two_rank[0] if old == 2 else request.getfixturevalue("three_rank")[0]
    run, out = request.getfixturevalue("three_rank") if (old, new) == (2, 3) else \
        resume_on(ws, src, f"from{old}to{new}", new)
    assert f"checkpoint step_{STOP} was written by {old} ranks; resuming on {new}" in out
    old_dir, new_dir = src / f"checkpoints/step_{STOP}", run / f"checkpoints/step_{STOP}"
    assert json.loads((new_dir / "trainer_state.json").read_text())["world_size"] == new
    assert len(list(new_dir.glob("*_optim_states.pt"))) == new
    for state in ("fp32", "exp_avg", "exp_avg_sq"):
        a, b = merged(old_dir, state), merged(new_dir, state)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (state, k)
        if state == "exp_avg_sq":
            assert all(v.abs().sum() > 0 for v in a.values())  # moments really were trained
    from delia_dist.checkpoint.zero_reader import adam_steps
    assert set(adam_steps(old_dir)) == set(adam_steps(new_dir)) == {STOP}
    per_rank, whole = bytes_read_per_rank(out)
    assert len(per_rank) == new and whole > 0
    assert sum(per_rank) >= whole  # every byte was read by some rank
    for got in per_rank:
        assert got < 0.75 * whole if new > 1 else got == whole, (per_rank, whole)


def test_resumed_on_one_rank_the_loss_carries_on(ws, two_rank):
    src, first_run = two_rank
    run = ws / "cont"
    shutil.copytree(src, run)
    out = train(ws, run, 1, f"train.max_steps={2 * STOP}")
    assert f"resumed from {run}/checkpoints/step_{STOP}" in out
    rows = [r for r in metrics(run) if r["step"] > 0]
    assert [r["step"] for r in rows] == list(range(1, 2 * STOP + 1))
    loss = {r["step"]: r["loss"] for r in rows}
    # A restart from scratch would be back near the first step's loss (~ln V).
    assert loss[STOP + 1] < loss[1] - 0.5, loss
    assert abs(loss[STOP + 1] - loss[STOP]) < 0.5, loss
    assert run_id(out) == first_run  # same MLflow run
    # The schedule continued: the lr at step STOP+1 is the 2-rank run's schedule at that step.
    from delia_dist.config import load_config
    from delia_dist.train.schedule import LRSchedule
    t = load_config(REPO / "configs/tiny_cpu.yaml").train
    sched = LRSchedule(t.lr, t.warmup_steps, 2 * STOP, t.schedule, t.min_lr_ratio)
    assert rows[STOP]["lr"] == pytest.approx(sched.lr_at(STOP))


def test_resume_with_another_sequence_length_is_one_clear_line(ws, two_rank):
    src, _ = two_rank
    run = ws / "seqlen"
    shutil.copytree(src, run)
    cmd = [sys.executable, "-m", "delia_dist.cli", "train", str(REPO / "configs/tiny_cpu.yaml"), "--nproc", "1",
           "--set", f"run_dir={run}", "--set", "data.seq_len=128", "--set", f"train.max_steps={2 * STOP}"]
    proc = subprocess.run(cmd, cwd=ws, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if "data.seq_len: checkpoint 256, config 128" in l]
    assert len(lines) == 1 and "cannot resume" in lines[0], proc.stderr[-3000:]
    assert "training failed" not in proc.stderr  # a config error: the line, no rank traceback


def test_a_failed_conversion_runs_apart_and_is_reported_to_every_rank(tmp_path):
    """The conversion runs in its own interpreter (DeepSpeed forks workers, which is unsafe
    from a rank holding CUDA and NCCL threads); its failure reaches rank 0 as one error and
    the waiting ranks through the FAILED marker instead of a 24-hour wait."""
    from delia_dist.checkpoint import elastic
    step = tmp_path / "step_4"
    step.mkdir()
    (step / "trainer_state.json").write_text("{}")  # no DeepSpeed shards: the converter fails
    with pytest.raises(RuntimeError, match="universal conversion of .*step_4 failed with exit code"):
        elastic.ensure_universal(step, rank=0)
    assert (step / ".universal.FAILED").is_file() and not (step / "universal").exists()
    with pytest.raises(RuntimeError, match="rank 0 failed to convert"):
        elastic.ensure_universal(step, rank=1, wait_s=30)
