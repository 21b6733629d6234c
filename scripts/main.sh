#!/usr/bin/env bash
# The main job: a complete tiny DELIA-vs-baseline experiment on CPU.
# Sets itself up (venv with the pinned CPU stack), makes the data (tokenizer, toy tasks,
# diverse chats, paraphrases, shards), trains baseline and DELIA runs with 2 DeepSpeed
# ZeRO-3 ranks, exports, evaluates, and prints the comparison with where MLflow and the
# plots are. Extra arguments go to `delia experiment` (e.g. --only baseline,delia-3x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/delia data synth runs/tiny
exec .venv/bin/delia experiment configs/tiny_cpu.yaml "$@"
