#!/usr/bin/env bash
# The tiny CPU run (configs/tiny_cpu.yaml), 2 ranks under DeepSpeed ZeRO-3 over gloo:
# the same script shape as the 70B job, small enough for the integration tests.
#   sbatch slurm/delia_tiny.sh                                   # from the repo root
#   sbatch --nodes=2 --ntasks-per-node=1 slurm/delia_tiny.sh     # across two nodes
#   sbatch --export=ALL,DELIA_OVERRIDES="train.max_steps=20" slurm/delia_tiny.sh
#SBATCH --job-name=delia-tiny
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --time=00:30:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#SBATCH --signal=B:USR1@60
set -uo pipefail

DELIA_ROOT=${DELIA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
DELIA_CONFIG=${DELIA_CONFIG:-$DELIA_ROOT/configs/tiny_cpu.yaml}
# shellcheck source=slurm/common.sh
source "$DELIA_ROOT/slurm/common.sh"

delia_setup
delia_train
