"""The sbatch scripts parse, pass shellcheck, and ask Slurm for what the preemption flow
needs (requeue, appended output, USR1 to the batch shell ahead of the limit)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "slurm").glob("*.sh"))
TRAINING = ["delia_tiny.sh", "delia_8b.sh", "delia_70b.sh"]


def sbatch_options(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", path.read_text(), re.M))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
def test_shellcheck_clean():
    proc = subprocess.run(["shellcheck", "-x", *[str(p.relative_to(REPO)) for p in SCRIPTS]], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", TRAINING)
def test_training_scripts_request_requeue_and_early_signal(name):
    opts = sbatch_options(REPO / "slurm" / name)
    assert "requeue" in opts and opts["open-mode"] == "append"
    assert re.fullmatch(r"B:USR1@\d+", opts["signal"])
    text = (REPO / "slurm" / name).read_text()
    assert "delia_train" in text and "source \"$DELIA_ROOT/slurm/common.sh\"" in text


def test_70b_script_is_eight_nodes_of_eight_gpus_with_nccl_settings():
    opts = sbatch_options(REPO / "slurm" / "delia_70b.sh")
    assert (opts["nodes"], opts["ntasks-per-node"], opts["gpus-per-node"]) == ("8", "8", "8")
    assert "configs/llama3_70b.yaml" in (REPO / "slurm" / "delia_70b.sh").read_text()
    common = (REPO / "slurm" / "common.sh").read_text()
    for var in ("NCCL_IB_HCA", "NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-", "TORCH_NCCL_ASYNC_ERROR_HANDLING=1"):
        assert var in common
    assert 'scontrol requeue "$SLURM_JOB_ID"' in common and "srun" in common


def _preflight(**env_extra) -> subprocess.CompletedProcess:
    """delia_preflight as delia_train calls it, on the batch node, without srun."""
    script = ('set -uo pipefail; source slurm/common.sh; PYTHON="$1"; DELIA_CONFIG=configs/llama3_70b.yaml; '
              'delia_set_args; delia_preflight; echo "preflight rc=$?"')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "DELIA_"))}
    env.update(HF_HUB_OFFLINE="1", **env_extra)
    return subprocess.run(["bash", "-c", script, "bash", sys.executable], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_preflight_prints_the_plan_and_stops_only_when_strict():
    fits = _preflight(DELIA_PLAN_GPU="h100-80gb", SLURM_JOB_NUM_NODES="8", SLURM_NTASKS_PER_NODE="8")
    assert "preflight rc=0" in fits.stdout and "FITS: " in fits.stdout, fits.stdout + fits.stderr
    assert "64 x H100 SXM 80GB" in fits.stdout and "WARNING" not in fits.stderr
    # 70B full fine-tuning on one node of 8 GPUs does not fit: a warning, or the end of the job.
    one = dict(DELIA_PLAN_GPU="h100-80gb", SLURM_JOB_NUM_NODES="1", SLURM_NTASKS_PER_NODE="8")
    warn = _preflight(**one)
    assert "DOES NOT FIT" in warn.stdout and "preflight rc=0" in warn.stdout
    assert "WARNING: the plan says this does not fit" in warn.stderr
    strict = _preflight(DELIA_PREFLIGHT="strict", **one)
    assert "preflight rc=1" in strict.stdout and "stopping (DELIA_PREFLIGHT=strict)" in strict.stderr
    off = _preflight(DELIA_PREFLIGHT="off", **one)
    assert off.stdout.strip() == "preflight rc=0"
    bad = _preflight(DELIA_PREFLIGHT="yes", **one)
    assert "preflight rc=1" in bad.stdout and "use warn, strict or off" in bad.stderr


def test_preflight_reads_the_gpu_type_from_nvidia_smi_and_skips_without_one(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "NVIDIA H200"\necho "NVIDIA H200"\n')
    smi.chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    h200 = _preflight(PATH=path, SLURM_JOB_NUM_NODES="8", SLURM_NTASKS_PER_NODE="8")
    assert "delia plan on 8 x 8 h200" in h200.stdout and "H200 141GB" in h200.stdout, h200.stdout + h200.stderr
    smi.write_text("#!/bin/sh\nexit 9\n")  # no driver: nvidia-smi fails
    none = _preflight(PATH=path, SLURM_JOB_NUM_NODES="1")
    assert "plan skipped" in none.stdout and "preflight rc=0" in none.stdout


def test_preflight_checks_run_after_the_plan_and_stop_only_when_strict():
    """`delia preflight` runs on the batch node after the plan; a failed check (here: a gloo
    interface this node lacks) is a warning, or the end of the job with DELIA_PREFLIGHT=strict."""
    gpu = dict(DELIA_PLAN_GPU="h100-80gb", SLURM_JOB_NUM_NODES="8", SLURM_NTASKS_PER_NODE="8")
    warn = _preflight(GLOO_SOCKET_IFNAME="nosuch0", **gpu)
    assert warn.stdout.index("FITS: ") < warn.stdout.index("[preflight] ok   attention: sdpa")
    assert "[preflight] FAIL network: GLOO_SOCKET_IFNAME=nosuch0: no interface nosuch0" in warn.stdout
    assert "[preflight] ok   timeouts: save ~198 s" in warn.stdout and "preflight rc=0" in warn.stdout
    strict = _preflight(GLOO_SOCKET_IFNAME="nosuch0", DELIA_PREFLIGHT="strict", **gpu)
    assert "preflight rc=1" in strict.stdout and "checks failed (above); stopping" in strict.stderr


def test_srun_ends_the_step_when_a_rank_fails():
    assert "srun --kill-on-bad-exit=1" in (REPO / "slurm" / "common.sh").read_text()
