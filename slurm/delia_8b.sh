#!/usr/bin/env bash
# Llama-3-8B-Instruct, DELIA full fine-tuning under ZeRO-3: 1 node x 8 GPUs (add nodes
# with --nodes=N; the global batch grows with the node count).
#   sbatch -A ACCOUNT -p PARTITION slurm/delia_8b.sh                 # from the repo root
#   sbatch --export=ALL,DELIA_OVERRIDES="train.lr=2e-5" slurm/delia_8b.sh
# Plan first: delia plan configs/llama3_8b.yaml --nodes 1 --gpus-per-node 8
#SBATCH --job-name=delia-8b
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#SBATCH --signal=B:USR1@600
set -uo pipefail

DELIA_ROOT=${DELIA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
DELIA_CONFIG=${DELIA_CONFIG:-$DELIA_ROOT/configs/llama3_8b.yaml}
# shellcheck source=slurm/common.sh
source "$DELIA_ROOT/slurm/common.sh"

delia_setup
delia_nccl_env
delia_train
