# shellcheck shell=bash
# Shared by the delia sbatch scripts (sourced, not submitted).
#
# Preemption flow (the scripts submit with --requeue --open-mode=append --signal=B:USR1@N):
#   1. Slurm sends USR1 to this batch shell N seconds before the time limit (or an admin
#      runs `scancel --signal=USR1 --batch JOBID`); a preemption sends TERM.
#   2. The trap forwards USR1 to srun, which forwards it to every rank.
#   3. The ranks agree at the next step boundary, write a checkpoint and exit 75.
#   4. srun ends with 75; this shell runs `scontrol requeue $SLURM_JOB_ID`; the requeued
#      job resumes from <run_dir>/checkpoints/latest (same data position, same MLflow run).
# Any other non-zero exit is a failure and is NOT requeued (a crash loop would burn the
# allocation); resubmit after fixing, training resumes from the last complete checkpoint.
# Exit 74 is a storage failure (disk full, read-only, no permission, quota; the rank's line
# names the directory and, for a full disk, the bytes needed and free): a requeue would meet
# the same disk, so it is not requeued either, even when it happened in a preemption's save.
#
# Variables a user overrides with `sbatch --export=ALL,NAME=value ...`:
#   DELIA_ROOT       repo checkout (default: the directory sbatch was run from)
#   DELIA_VENV       virtualenv with delia-dist installed (default: $DELIA_ROOT/.venv)
#   DELIA_CONFIG     experiment YAML (each script sets its own default)
#   DELIA_OVERRIDES  space-separated KEY=VALUE config overrides, e.g. "train.lr=2e-5 train.max_steps=100"
#   DELIA_WORKDIR    directory the ranks run in; relative paths in the config resolve here
#                    (default: the submit directory)
#   DELIA_DIST_TIMEOUT  seconds a collective waits for a dead peer before the job fails (600)
#   DELIA_RENDEZVOUS_TIMEOUT  seconds the ranks wait for each other at start-up (1800): 64 ranks
#                    importing torch from a shared filesystem start minutes apart
#   DELIA_PREFLIGHT  what the job does with `delia plan`'s verdict and `delia preflight`'s checks
#                    (attention, DeepSpeed ops, model + tokenizer, disk, timeouts, interfaces)
#                    before srun starts the ranks: warn (default: print them, go on), strict (stop
#                    when the plan does not fit or a check fails), off (skip both). The GPU type
#                    comes from nvidia-smi, or DELIA_PLAN_GPU (h100-80gb, a100-80gb, h200); CPU
#                    jobs skip the plan and the step-time checks.
#   DELIA_PREEMPT_LEAD  seconds between the USR1 warning and the time limit, as in the script's
#                    --signal=B:USR1@N (600); preflight checks that a checkpoint save fits in it
#   GLOO_SOCKET_IFNAME  the interface for gloo (the side group that carries per-step host
#                    values beside NCCL); by default each rank takes the interface that routes
#                    to the master (launcher/netif.py) and prints it in its start-up line

EXIT_PREEMPTED=75
EXIT_STORAGE=74

delia_setup() {
  DELIA_ROOT=${DELIA_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
  DELIA_VENV=${DELIA_VENV:-$DELIA_ROOT/.venv}
  DELIA_WORKDIR=${DELIA_WORKDIR:-${SLURM_SUBMIT_DIR:-$PWD}}
  DELIA_OVERRIDES=${DELIA_OVERRIDES:-}
  PYTHON=$DELIA_VENV/bin/python
  if [ ! -x "$PYTHON" ]; then
    echo "[delia] no python at $PYTHON: set DELIA_VENV (or DELIA_ROOT) with sbatch --export=ALL,DELIA_VENV=..." >&2
    exit 1
  fi
  if [ ! -f "$DELIA_CONFIG" ] && [ ! -f "$DELIA_WORKDIR/$DELIA_CONFIG" ]; then
    echo "[delia] config not found: $DELIA_CONFIG (set DELIA_CONFIG)" >&2
    exit 1
  fi
  cd "$DELIA_WORKDIR" || exit 1
  # The package and its launcher come from the checkout even if the venv lacks them.
  export PYTHONPATH="$DELIA_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
  export DELIA_DIST_TIMEOUT=${DELIA_DIST_TIMEOUT:-600}
  echo "[delia] job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-?}:" \
       "${SLURM_NTASKS:-1} tasks, config $DELIA_CONFIG, overrides '${DELIA_OVERRIDES}', $(date -Is)"
}

# The NCCL settings a multi-node InfiniBand cluster needs; each can be overridden by exporting it.
delia_nccl_env() {
  export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-^lo,docker0}
  export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}
  export NCCL_IB_HCA=${NCCL_IB_HCA:-mlx5}
  export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
  export NCCL_IB_RETRY_CNT=${NCCL_IB_RETRY_CNT:-7}
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  # A rank that loses a peer aborts instead of hanging in a collective until the time limit.
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
  export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-8}
}

# DELIA_OVERRIDES as `--set KEY=VALUE` arguments, in the array DELIA_SET_ARGS: one builder
# for the train, eval and sample scripts.
delia_set_args() {
  local overrides=() o
  read -r -a overrides <<< "${DELIA_OVERRIDES:-}"
  DELIA_SET_ARGS=()
  for o in "${overrides[@]}"; do
    DELIA_SET_ARGS+=(--set "$o")
  done
}

# The GPU type `delia plan` knows, from the first GPU nvidia-smi lists on this node (empty if none).
delia_gpu_kind() {
  local name
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
  case "$name" in
    *H200*) echo h200 ;;
    *H100*) echo h100-80gb ;;
    *A100*80GB*) echo a100-80gb ;;
  esac
}

# `delia plan` for this allocation, printed into the job log before 64 ranks load a 70B
# model: what each GPU will hold, tokens/s, hours, checkpoint sizes and seconds. Then `delia
# preflight`: what would stop the job in its first minutes, one line per check. A plan that
# does not fit or a failed check is a warning (the estimate can be off), or the end of the
# job with DELIA_PREFLIGHT=strict.
delia_preflight() {
  local mode=${DELIA_PREFLIGHT:-warn} gpu gpn rc=0 checks=()
  case "$mode" in
    off) return 0 ;;
    warn | strict) ;;
    *) echo "[delia] DELIA_PREFLIGHT=$mode: use warn, strict or off" >&2; return 1 ;;
  esac
  gpu=${DELIA_PLAN_GPU:-$(delia_gpu_kind)}
  gpn=${SLURM_NTASKS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
  gpn=${gpn%%(*}  # "8(x8)" from a heterogeneous layout: the first node's count
  if [ -z "$gpu" ]; then
    echo "[delia] preflight: no GPU type known on this node (CPU job, or set DELIA_PLAN_GPU); plan skipped"
  else
    echo "[delia] preflight: delia plan on ${SLURM_JOB_NUM_NODES:-1} x $gpn $gpu"
    "$PYTHON" -m delia_dist.cli plan "$DELIA_CONFIG" --nodes "${SLURM_JOB_NUM_NODES:-1}" \
      --gpus-per-node "$gpn" --gpu "$gpu" "${DELIA_SET_ARGS[@]}" || rc=$?
    if [ "$rc" -eq 1 ]; then
      if [ "$mode" = strict ]; then
        echo "[delia] preflight: the plan says this does not fit (above); stopping (DELIA_PREFLIGHT=strict)" >&2
        return 1
      fi
      echo "[delia] preflight: WARNING: the plan says this does not fit (above); starting anyway" \
           "(DELIA_PREFLIGHT=strict stops here)" >&2
    elif [ "$rc" -ne 0 ]; then
      echo "[delia] preflight: delia plan could not run (exit $rc, above); starting anyway" >&2
    fi
    checks=(--gpu "$gpu")
  fi
  [ "$mode" = strict ] && checks+=(--strict)
  rc=0
  "$PYTHON" -m delia_dist.cli preflight "$DELIA_CONFIG" --nodes "${SLURM_JOB_NUM_NODES:-1}" \
    --gpus-per-node "$gpn" "${checks[@]}" "${DELIA_SET_ARGS[@]}" || rc=$?
  if [ "$rc" -ne 0 ]; then
    if [ "$mode" = strict ]; then
      echo "[delia] preflight: checks failed (above); stopping (DELIA_PREFLIGHT=strict)" >&2
      return 1
    fi
    echo "[delia] preflight: delia preflight could not run (exit $rc, above); starting anyway" >&2
  fi
  return 0
}

# Run the training ranks under srun, forward preemption signals, requeue on exit 75.
delia_train() {
  local cmd srun_pid="" rc interrupted=0
  delia_set_args
  delia_preflight || return 1
  cmd=("$PYTHON" -m launcher train "$DELIA_CONFIG" "${DELIA_SET_ARGS[@]}")
  # Trapped before srun starts: an untrapped USR1 would end this shell, and the job with it.
  trap 'interrupted=1; echo "[delia] preemption signal: asking the ranks to checkpoint"; [ -z "$srun_pid" ] || kill -USR1 "$srun_pid" 2>/dev/null' USR1 TERM
  # Slurm 22.05+ no longer passes the job's --cpus-per-task on to srun by itself.
  # --kill-on-bad-exit=1: the first rank that exits non-zero ends the step. Its peers would
  # otherwise sit in an NCCL collective until the collective timeout (minutes; longer inside
  # a checkpoint save) before the job ends. The failed rank has printed its one-line cause.
  srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} "${cmd[@]}" &
  srun_pid=$!
  # A signal that came while srun was being started is passed on now.
  if [ "$interrupted" = 1 ]; then
    kill -USR1 "$srun_pid" 2>/dev/null
  fi
  # `wait` returns early when a trapped signal arrives; wait again until srun itself ends.
  while :; do
    interrupted=0
    rc=0
    wait "$srun_pid" || rc=$?
    [ "$interrupted" = 1 ] || break
  done
  trap - USR1 TERM
  if [ "$rc" -eq "$EXIT_PREEMPTED" ]; then
    echo "[delia] checkpoint written; requeueing job $SLURM_JOB_ID ($(date -Is))"
    scontrol requeue "$SLURM_JOB_ID" || echo "[delia] scontrol requeue failed; resubmit to resume" >&2
  elif [ "$rc" -eq "$EXIT_STORAGE" ]; then
    echo "[delia] checkpoint storage failed (srun exit $rc, the rank's line above says where and why); not" \
         "requeued: the same disk would fail again. Free space or fix the path, then resubmit: it resumes" \
         "from the last complete checkpoint." >&2
  elif [ "$rc" -ne 0 ]; then
    echo "[delia] training failed (srun exit $rc); not requeued. Fix and resubmit: it resumes from the last complete checkpoint." >&2
  else
    echo "[delia] training finished ($(date -Is))"
  fi
  return "$rc"
}
