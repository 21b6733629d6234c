"""The worker entry and `delia train`: signals become a stop request, results become exit
codes (0 done, 75 preempted, 1 failed) that the sbatch script and users act on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

import launcher.__main__ as worker
from launcher.env import DistEnv
from launcher.signals import StopFlag

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


def test_usr1_and_term_set_the_stop_flag(restore_signals, capfd):
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        flag = StopFlag.install(rank=1)
        assert not flag.is_set()
        os.kill(os.getpid(), sig)
        deadline = time.monotonic() + 5
        while not flag.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flag.is_set() and flag.signal == sig
    assert "[rank 1] SIGUSR1: stopping at the next step boundary" in capfd.readouterr().err


def _fake_trainer(monkeypatch, result=None, error=None):
    import delia_dist.config
    import delia_dist.train.trainer
    from delia_dist.train.trainer import TrainResult
    calls = []
    monkeypatch.setattr(delia_dist.config, "load_config", lambda path, overrides, check_paths: (path, overrides))

    def run_training(cfg, env, stop_requested, timeout_s, rendezvous_timeout_s):
        calls.append((cfg, env, stop_requested(), timeout_s, rendezvous_timeout_s))
        if error:
            raise error
        return TrainResult(*result)
    monkeypatch.setattr(delia_dist.train.trainer, "run_training", run_training)
    return calls


def test_preempted_result_exits_75_and_reports(monkeypatch, tmp_path, capsys):
    calls = _fake_trainer(monkeypatch, result=("preempted", 7, "runs/x/checkpoints/step_7", "abc"))
    monkeypatch.setenv(worker.RESULT_FILE_ENV, str(tmp_path / "r.json"))
    args = Namespace(config="c.yaml", overrides=["train.lr=1"], timeout=12.0, rendezvous_timeout=900.0)
    assert worker.train(args, DistEnv(), StopFlag()) == worker.EXIT_PREEMPTED == 75
    assert calls == [(("c.yaml", ["train.lr=1"]), DistEnv(), False, 12.0, 900.0)]
    assert "training preempted at step 7; checkpoint runs/x/checkpoints/step_7; mlflow run abc" in \
        capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["exit_code"] == 75


def test_completed_exits_0_and_failure_exits_1(monkeypatch, capsys):
    args = Namespace(config="c.yaml", overrides=[], timeout=5.0, rendezvous_timeout=1800.0)
    _fake_trainer(monkeypatch, result=("completed", 9, None, None))
    assert worker.train(args, DistEnv(), StopFlag()) == 0
    _fake_trainer(monkeypatch, error=RuntimeError("Timed out waiting 5000ms for recv"))
    assert worker.train(args, DistEnv(rank=1, world_size=2, local_world_size=2, local_rank=1), StopFlag()) == 1
    assert "[rank 1] training failed: RuntimeError: Timed out waiting 5000ms" in capsys.readouterr().err


def _launcher(*args, env=None, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, **(env or {})})


def test_worker_process_exit_codes_for_bad_input(tmp_path):
    proc = _launcher("train", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 1 and "[rank 0] error:" in proc.stderr and "missing.yaml" in proc.stderr
    proc = _launcher("train", "configs/tiny_cpu.yaml", env={"SLURM_PROCID": "5", "SLURM_NTASKS": "2"})
    assert proc.returncode == 1 and "launcher: rank 5 is outside world size 2" in proc.stderr


def test_delia_train_usr1_checkpoints_and_exits_75(tmp_path):
    """Under torchrun (no Slurm): USR1 to `delia train` reaches every rank, which agree on
    a step, checkpoint and stop; the command reports 75 although torchrun says 1."""
    from delia_dist.data.synth import prepare_workspace
    prepare_workspace(tmp_path / "runs" / "tiny", n_train=40, n_eval=4, n_diverse=300)
    cmd = [sys.executable, "-m", "delia_dist.cli", "train", str(REPO / "configs/tiny_cpu.yaml"), "--nproc", "2",
           "--timeout", "60", "--set", "train.max_steps=200", "--set", "checkpoint.every_steps=1000"]
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:  # step 0 record + 2 steps
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)
        code = proc.wait(180)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    text = (tmp_path / "train.log").read_text()
    assert code == 75, text[-4000:]
    last = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert 2 <= last < 200
    assert (tmp_path / "runs/tiny/checkpoints/latest").read_text().strip() == f"step_{last}"
    assert f"training preempted at step {last}" in text
