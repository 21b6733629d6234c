"""A storage failure (full disk, read-only, no permission, quota) exits 74, and the sbatch
scripts' delia_train does not requeue 74 into the same disk; 75 (preempted, checkpoint
written) still is. The batch shell runs here with srun and scontrol replaced by stubs, so
no Slurm is needed."""
from __future__ import annotations

import os
import subprocess
from argparse import Namespace
from pathlib import Path

import pytest

import launcher.__main__ as worker
from delia_dist.storage import EXIT_STORAGE, StorageError
from launcher.env import DistEnv
from launcher.signals import StopFlag

REPO = Path(__file__).resolve().parents[2]
LINE = "cannot write checkpoint step_20 in /scratch/ckpt: no space left on device (needs 1.0 TB, 0.4 TB free)"


def test_worker_exits_74_with_one_line_on_a_storage_failure(monkeypatch, tmp_path, capsys):
    import delia_dist.config
    import delia_dist.train.trainer

    def run_training(*a, **k):
        raise StorageError(LINE)
    monkeypatch.setattr(delia_dist.config, "load_config",
                        lambda *a, **k: Namespace(run_dir=str(tmp_path)))
    monkeypatch.setattr(delia_dist.train.trainer, "run_training", run_training)
    monkeypatch.delenv("DELIA_DEBUG", raising=False)
    args = Namespace(config="c.yaml", overrides=[], timeout=5.0, rendezvous_timeout=60.0)
    assert worker.train(args, DistEnv(), StopFlag()) == worker.EXIT_STORAGE == EXIT_STORAGE == 74
    err = capsys.readouterr().err
    assert err == f"[rank 0] error: {LINE}\n"  # one line, no traceback


@pytest.mark.parametrize("rc, requeued, says", [
    (74, False, "checkpoint storage failed (srun exit 74"),
    (75, True, "checkpoint written; requeueing job 42"),
    (1, False, "training failed (srun exit 1); not requeued")])
def test_delia_train_requeues_a_preemption_but_not_a_storage_failure(tmp_path, rc, requeued, says):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "srun").write_text(f"#!/bin/sh\nexit {rc}\n")
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    script = ('set -uo pipefail; source slurm/common.sh; PYTHON=python; DELIA_CONFIG=configs/tiny_cpu.yaml; '
              'delia_train; echo "delia_train rc=$?"')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "DELIA_"))}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="42", DELIA_PREFLIGHT="off")
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert f"delia_train rc={rc}" in proc.stdout, proc.stdout + proc.stderr
    assert says in proc.stdout + proc.stderr
    assert calls.is_file() == requeued
    if requeued:
        assert calls.read_text().split() == ["requeue", "42"]
