#!/usr/bin/env bash
# Evaluate checkpoints, one array task per checkpoint: export the ZeRO-3 checkpoint to an
# HF directory (once), then `delia eval` it (vLLM when installed) and log the scores to
# the training run in MLflow.
#   sbatch --array=0-2 --export=ALL,DELIA_CONFIG=configs/llama3_8b.yaml,\
#     DELIA_CHECKPOINTS="runs/x/checkpoints/step_500 runs/x/checkpoints/step_1000 runs/x/checkpoints/step_1500" \
#     slurm/delia_eval.sh
# Without --array the single task evaluates the first (or only) checkpoint listed.
# DELIA_EXPORT_DIR (default: <checkpoint>-hf) says where each export goes.
#SBATCH --job-name=delia-eval
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=12
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

DELIA_ROOT=${DELIA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
DELIA_CONFIG=${DELIA_CONFIG:-$DELIA_ROOT/configs/llama3_8b.yaml}
DELIA_CHECKPOINTS=${DELIA_CHECKPOINTS:?set DELIA_CHECKPOINTS to the checkpoint dirs to evaluate (space-separated)}
# shellcheck source=slurm/common.sh
source "$DELIA_ROOT/slurm/common.sh"
delia_setup

read -r -a checkpoints <<< "$DELIA_CHECKPOINTS"
index=${SLURM_ARRAY_TASK_ID:-0}
if [ "$index" -ge "${#checkpoints[@]}" ]; then
  echo "[delia] array index $index but only ${#checkpoints[@]} checkpoints in DELIA_CHECKPOINTS" >&2
  exit 1
fi
ckpt=${checkpoints[$index]}
out=${DELIA_EXPORT_DIR:-${ckpt%/}-hf}
delia_set_args

if [ ! -f "$out/config.json" ]; then
  srun --ntasks=1 "$PYTHON" -m delia_dist.cli ckpt export "$ckpt" "$out"
fi
srun --ntasks=1 "$PYTHON" -m delia_dist.cli eval "$out" --config "$DELIA_CONFIG" "${DELIA_SET_ARGS[@]}"
