#!/usr/bin/env bash
# Llama-3-70B-Instruct, DELIA full fine-tuning under ZeRO-3 on 8 nodes x 8 H100-80GB
# (64 ranks, one srun task per GPU). USR1 arrives 10 minutes before the time limit:
# enough for every rank to finish its step and write its checkpoint shard; the job then
# requeues itself and resumes from that checkpoint.
#   sbatch -A ACCOUNT -p PARTITION slurm/delia_70b.sh                # from the repo root
#   sbatch --export=ALL,DELIA_VENV=/opt/delia/.venv,NCCL_SOCKET_IFNAME=ib0 slurm/delia_70b.sh
# Plan first: delia plan configs/llama3_70b.yaml --nodes 8 --gpus-per-node 8 --gpu h100-80gb
#SBATCH --job-name=delia-70b
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --mem=0
#SBATCH --exclusive
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
#SBATCH --signal=B:USR1@600
set -uo pipefail

DELIA_ROOT=${DELIA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
DELIA_CONFIG=${DELIA_CONFIG:-$DELIA_ROOT/configs/llama3_70b.yaml}
# shellcheck source=slurm/common.sh
source "$DELIA_ROOT/slurm/common.sh"

delia_setup
delia_nccl_env
delia_train
