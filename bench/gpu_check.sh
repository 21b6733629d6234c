#!/usr/bin/env bash
# The fused linear + cross-entropy on a GPU, in one call of a few minutes: first the kernel
# tests with CUDA tensors (the compiled Triton kernel against the float64 reference, which
# CI can only run interpreted), then time and peak memory at the issue's shapes beside the
# naive loss, Liger-Kernel and cut-cross-entropy, and the 6*N*D*V floor at this GPU's own
# matmul rate; last, one-GPU training steps of Llama-1B/8B shapes (tokens/s, MFU, memory).
# Before all that, the NCCL smoke: `delia train` of the tiny config on the GPU (NCCL, bf16,
# fused Triton loss, ZeRO-3), checkpoint, resume, export, generate: the path no CPU test
# can run (NCCL rejects CPU tensors; the gloo side group for host flags is used for real),
# with the GPU configs' optimizer (torch's fused AdamW: no DeepSpeed op compiled). Then
# bench/gpu_check_70b.py: packed samples isolated under sdpa on CUDA in bf16, fused AdamW
# on CUDA, the NCCL timeout raised and restored by distributed.longer_timeout.
#
#   bash bench/gpu_check.sh --fetch        # here, once: wheels into .whl/ (~19 MB)
#   bash bench/gpu_check.sh                # on the GPU machine (carry .whl); results in $OUT
#   bash bench/gpu_check.sh --smoke-only   # the NCCL smoke alone (~3 min)
#
# Liger and CCE are pure-Python wheels over torch + triton, which the GPU image has. The
# training path also needs DeepSpeed (sdist only on PyPI: built here into a pure wheel
# with DS_BUILD_OPS=0, so no op is compiled), its hjson + pydantic, webdataset, and the
# pinned transformers (the image's is older); MLflow stays behind (tracking.enabled=false).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
PEERS=(liger-kernel==0.8.5 cut-cross-entropy==25.1.1)
TRAIN_WHEELS=(hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
              webdataset==1.0.2 braceexpand==0.1.7 transformers==5.24.0)
DEEPSPEED=deepspeed==0.19.8

if [ "${1:-}" = --fetch ]; then
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >> "$exclude"
  # The GPU image's Python is 3.12 on x86-64: binary wheels for that, whatever runs here.
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${PEERS[@]}" "${TRAIN_WHEELS[@]}"
  # DeepSpeed's setup.py imports torch: build with a Python that has it (the repo's venv).
  DS_BUILD_OPS=0 "${BUILD_PYTHON:-.venv/bin/python}" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$DEEPSPEED"
  ls -l .whl
  du -sh .whl
  exit 0
fi

command -v nvidia-smi >/dev/null || { echo "gpu_check.sh: no NVIDIA GPU here (nvidia-smi not found): nothing was run; run it on the GPU machine (after --fetch here, carrying .whl)" >&2; exit 2; }
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/peers .whl/*.whl
  export PYTHONPATH=/tmp/peers:$PWD
else
  echo "[gpu_check] no .whl/: Liger and CCE will be reported missing and the NCCL smoke fails without DeepSpeed (run --fetch here and carry .whl)"
  export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } \
  | tee "$OUT/machine.txt"

# NCCL smoke. One process: NCCL refuses two ranks of one communicator on the same GPU
# ("Duplicate GPU detected"), and this machine has one. 10 steps, then a resumed run to 20.
smoke() {
  local ws=/tmp/delia-smoke log="$OUT/nccl_smoke.log"
  rm -rf "$ws" && mkdir -p "$ws"
  python3 -c "from delia_dist.data.synth import prepare_workspace; prepare_workspace('$ws/runs/tiny', n_train=80, n_eval=8, n_diverse=600)"
  local sets=(--set train.precision=bf16 --set model.dtype=bfloat16 --set loss.impl=fused --set tracking.enabled=false
              --set deepspeed.torch_adam=true --set deepspeed.adam_fused=true
              --set checkpoint.every_steps=10 --set tracking.log_every=5 --set eval.every_steps=10)
  ( set -e
    cd "$ws"
    DELIA_DIST_TIMEOUT=120 timeout 300 python3 -m delia_dist.cli train "$REPO/configs/tiny_cpu.yaml" --nproc 1 \
      "${sets[@]}" --set train.max_steps=10
    DELIA_DIST_TIMEOUT=120 timeout 300 python3 -m delia_dist.cli train "$REPO/configs/tiny_cpu.yaml" --nproc 1 \
      "${sets[@]}" --set train.max_steps=20
    timeout 300 python3 -m delia_dist.cli ckpt export runs/tiny/checkpoints "$ws/hf" --dtype bfloat16 ) 2>&1 | tee "$log"
  local run_rc=${PIPESTATUS[0]}
  [ "$run_rc" = 0 ] || return "$run_rc"
  python3 - "$ws" <<'PY' 2>&1 | tee -a "$log"
import json, math, sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
ws = Path(sys.argv[1])
rows = [json.loads(l) for l in (ws / "runs/tiny/metrics.jsonl").read_text().splitlines()]
steps = [r["step"] for r in rows if r["step"] > 0]
assert steps == list(range(1, 21)), steps
loss = {r["step"]: r["loss"] for r in rows if r["step"] > 0}
assert all(math.isfinite(v) for v in loss.values()) and loss[20] < loss[1], loss
assert (ws / "runs/tiny/checkpoints/latest").read_text().strip() == "step_20"
tok = AutoTokenizer.from_pretrained(ws / "hf")
model = AutoModelForCausalLM.from_pretrained(ws / "hf", dtype=torch.bfloat16).cuda()
ids = tok("hello <sep>", return_tensors="pt")["input_ids"].cuda()
out = model.generate(ids, max_new_tokens=5, do_sample=False)
assert out.shape[1] > ids.shape[1]
print(f"[gpu_check] NCCL smoke ok: steps 1-20 (resumed at 10), loss {loss[1]:.3f} -> {loss[20]:.3f}, "
      f"export generates on {out.device}")
PY
  return "${PIPESTATUS[0]}"
}
echo "[gpu_check] NCCL smoke: delia train, bf16, fused loss, ZeRO-3, checkpoint + resume + export"
set +e
smoke
smoke_rc=$?
set -e
echo "[gpu_check] NCCL smoke exit $smoke_rc"
echo "[gpu_check] 70B path: packed sdpa on CUDA, fused AdamW, NCCL timeout during checkpoint I/O"
set +e
python3 bench/gpu_check_70b.py 2>&1 | tee "$OUT/gpu_check_70b.log"
check70_rc=${PIPESTATUS[0]}
set -e
[ "$smoke_rc" = 0 ] && smoke_rc=$check70_rc
if [ "${1:-}" = --smoke-only ]; then
  exit "$smoke_rc"
fi

# --noconftest: the project conftest needs the training stack (transformers, deepspeed),
# which the kernels do not. Tests pick CUDA by themselves when torch sees a GPU.
echo "[gpu_check] kernel tests on CUDA"
set +e
python3 -m pytest --noconftest -p no:cacheprovider -q tests/kernels/test_linear_ce.py 2>&1 | tee "$OUT/kernel_tests.log"
tests_rc=${PIPESTATUS[0]}
set -e

echo "[gpu_check] bench (issue 5 shapes)"
python3 bench/bench_linear_ce.py --device cuda --n 8192 --d 4096 8192 --v 128256 --dtype bf16 \
  --chunk-size 0 2048 --grad-accum fp32 input --compare liger,cce --repeats 10 2>&1 | tee "$OUT/bench_linear_ce.md"
echo "[gpu_check] training step: tokens/s, MFU, peak memory (fused vs naive loss)"
python3 bench/bench_step.py --device cuda --size 1b --batch 4 --seq 4096 2>&1 | tee "$OUT/bench_step_1b.md"
python3 bench/bench_step.py --device cuda --size 8b --batch 4 --seq 4096 --checkpointing 2>&1 | tee "$OUT/bench_step_8b.md"
echo "[gpu_check] NCCL smoke exit $smoke_rc, kernel tests exit $tests_rc"
[ "$smoke_rc" = 0 ] || exit "$smoke_rc"
exit "$tests_rc"
