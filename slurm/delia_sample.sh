#!/usr/bin/env bash
# DELIA stage 1 at scale: re-answer a query set with the model through vLLM, one array
# task per share of the input; each task writes its own part directories with shards and
# a DONE marker, so resubmitting the array only redoes unfinished parts.
#   sbatch --array=0-31 --export=ALL,DELIA_MODEL=/models/llama3-8b-instruct,\
#     DELIA_QUERIES=/datasets/queries.jsonl,DELIA_OUT=/datasets/delia/diverse slurm/delia_sample.sh
# vLLM runs from $DELIA_ROOT/.venv-gen (scripts/install.sh --gen); sampling settings come
# from the generate.sample section of DELIA_CONFIG and DELIA_OVERRIDES.
#SBATCH --job-name=delia-sample
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=12
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

DELIA_ROOT=${DELIA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
DELIA_CONFIG=${DELIA_CONFIG:-$DELIA_ROOT/configs/llama3_8b.yaml}
DELIA_MODEL=${DELIA_MODEL:?set DELIA_MODEL to the HF model directory to sample from}
DELIA_QUERIES=${DELIA_QUERIES:?set DELIA_QUERIES to the query JSONL (or HF dataset dir)}
DELIA_OUT=${DELIA_OUT:?set DELIA_OUT to the output directory}
# shellcheck source=slurm/common.sh
source "$DELIA_ROOT/slurm/common.sh"
delia_setup
export DELIA_GEN_VENV=${DELIA_GEN_VENV:-$DELIA_ROOT/.venv-gen}

delia_set_args
# Task index and count come from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT via the launcher.
srun --ntasks=1 "$PYTHON" -m delia_dist.cli data sample --model "$DELIA_MODEL" --input "$DELIA_QUERIES" \
  --out "$DELIA_OUT" --config "$DELIA_CONFIG" "${DELIA_SET_ARGS[@]}"
