"""Storage faults in a real 2-rank ZeRO-3 run (gloo, `delia train`), with checkpoint.dir on
a small tmpfs: the disk filling in the middle of a save, a save refused before it writes
because it cannot fit, and the filesystem turned read-only. Each ends the job with exit 74
(not requeued under Slurm) and one line naming the directory and the cause, leaves
`latest` on the last complete checkpoint, and a rerun with space resumes bit-identically.
An export that cannot fit is refused the same way. Needs root for mount (skipped otherwise)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from workspace import tiny_workspace

REPO = Path(__file__).resolve().parents[2]
STEPS = 4

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


def train(ws: Path, run: str, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "delia_dist.cli", "train", str(REPO / "configs/tiny_cpu.yaml"), "--nproc", "2",
           "--timeout", "120", "--set", f"run_dir={ws / run}", "--set", "model.config.attention_dropout=0.1",
           "--set", "checkpoint.every_steps=2", "--set", "checkpoint.keep_last=1", "--set", "tracking.log_every=2",
           "--set", "tracking.enabled=false", "--set", f"train.max_steps={STEPS}"]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.run(cmd, cwd=ws, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def fp32_weights(ckpt: Path) -> dict:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)


def mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} failed: {proc.stderr.strip()}")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return tiny_workspace(tmp_path_factory, "storage")


@pytest.fixture(scope="module")
def straight(ws):
    proc = train(ws, "straight")
    assert proc.returncode == 0, proc.stderr[-5000:]
    return ws / "straight"


@pytest.fixture
def small_disk(tmp_path):
    point = tmp_path / "disk"
    point.mkdir()
    mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point))
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def one_line(proc: subprocess.CompletedProcess, start: str) -> str:
    lines = [l for l in proc.stderr.splitlines() if start in l]
    assert lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
    return lines[0]


def test_full_disk_mid_save_refused_save_and_read_only_then_resume(ws, straight, small_disk):
    from delia_dist.storage import size_on_disk
    size = size_on_disk(straight / f"checkpoints/step_{STEPS}")  # keep_last=1: the only one left
    assert size > 100_000
    disk, run = small_disk, ws / "faulty"
    # Room for one checkpoint and half of the next; keep_last=1 keeps step_2 until step_4 is complete.
    mount("-o", f"remount,size={size * 3 // 2}", str(disk))

    # 1. The size check off (as for a filesystem whose free space statvfs does not know):
    # the disk fills in the middle of the step-4 save.
    proc = train(ws, "faulty", f"checkpoint.dir={disk}", "checkpoint.check_space=false")
    assert proc.returncode == 74, proc.stderr[-5000:]
    line = one_line(proc, "error: cannot write checkpoint step_4")
    assert f"in {disk}: no space left on device (needs " in line and "free when it began" in line, line
    assert (disk / "latest").read_text() == "step_2"

    # 2. The check on: the rerun trains steps 3-4 again and refuses the save before writing.
    proc = train(ws, "faulty", f"checkpoint.dir={disk}")
    assert proc.returncode == 74, proc.stderr[-5000:]
    line = one_line(proc, "error: cannot write checkpoint step_4")
    assert "no space left on device (needs " in line and "step_2 kept as latest; nothing written" in line, line
    assert (disk / "latest").read_text() == "step_2"
    assert not (disk / ".tmp-step_4").exists() and not (disk / "step_4").exists()

    # 3. Read-only: fails at start-up, before the model is built.
    mount("-o", "remount,ro", str(disk))
    proc = train(ws, "faulty", f"checkpoint.dir={disk}")
    assert proc.returncode == 74, proc.stderr[-5000:]
    line = one_line(proc, "error: cannot write checkpoints")
    assert line.endswith(f"cannot write checkpoints in {disk}: read-only filesystem"), line
    assert not any("step 3/" in l or "loss" in l for l in proc.stdout.splitlines()), proc.stdout[-3000:]

    # 4. With space, a rerun resumes from step_2 and ends where the uninterrupted run did.
    mount("-o", f"remount,rw,size={size * 4}", str(disk))
    proc = train(ws, "faulty", f"checkpoint.dir={disk}")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert (disk / "latest").read_text() == "step_4"
    want = {r["step"]: r["loss"] for r in metrics(straight) if r["step"] > 0}
    got = [r for r in metrics(run) if r["step"] > 0]
    assert [r["step"] for r in got] == [1, 2, 3, 4, 3, 4, 3, 4]  # the first attempt, the refused one, the last
    for r in got:
        assert r["loss"] == want[r["step"]], (r["step"], r["loss"], want[r["step"]])
    a, b = fp32_weights(straight / f"checkpoints/step_{STEPS}"), fp32_weights(disk / f"step_{STEPS}")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_export_that_cannot_fit_is_refused_with_one_line(straight, small_disk):
    out = small_disk / "hf"
    proc = subprocess.run([sys.executable, "-m", "delia_dist.cli", "ckpt", "export", str(straight / "checkpoints"),
                           str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 74, proc.stderr[-3000:]
    line = one_line(proc, "error: cannot write the export of step_4")
    assert line.startswith(f"error: cannot write the export of step_4 in {out}: no space left on device (needs "), line
    assert line.endswith("kB free, nothing written)") and not out.exists(), line
