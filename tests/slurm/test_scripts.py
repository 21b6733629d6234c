"""The sbatch scripts parse, pass shellcheck, and ask Slurm for what the preemption flow
needs (requeue, appended output, USR1 to the batch shell ahead of the limit)."""
from __future__ import annotations

import re
import shutil
import subprocess
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
