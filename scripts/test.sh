#!/usr/bin/env bash
# Installs everything the tests need (venv, vLLM in .venv-gen, Slurm and chromium from Debian) and runs the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k config -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --gen --slurm --browser
echo "[test] ruff check ."
.venv/bin/ruff check .
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest tests -q -ra --timeout=1800 "$@"
