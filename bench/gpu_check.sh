#!/usr/bin/env bash
# The fused linear + cross-entropy on a GPU, in one call of a few minutes: first the kernel
# tests with CUDA tensors (the compiled Triton kernel against the float64 reference, which
# CI can only run interpreted), then time and peak memory at the issue's shapes beside the
# naive loss, Liger-Kernel and cut-cross-entropy, and the 6*N*D*V floor at this GPU's own
# matmul rate; last, one-GPU training steps of Llama-1B/8B shapes (tokens/s, MFU, memory).
#
#   bash bench/gpu_check.sh --fetch      # here, once: Liger and CCE wheels into .whl/
#   bash bench/gpu_check.sh              # on the GPU machine (carry .whl); results in $OUT
#
# Both peers are pure-Python wheels over torch + triton, which the GPU image has.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PEERS=(liger-kernel==0.8.5 cut-cross-entropy==25.1.1)

if [ "${1:-}" = --fetch ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
  python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "${PEERS[@]}"
  ls -l .whl
  exit 0
fi

command -v nvidia-smi >/dev/null || { echo "gpu_check.sh: no NVIDIA GPU here (nvidia-smi not found); run it on the GPU machine" >&2; exit 2; }
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/peers .whl/*.whl
  export PYTHONPATH=/tmp/peers:$PWD
else
  echo "[gpu_check] no .whl/: Liger and CCE will be reported missing (run --fetch here and carry .whl)"
  export PYTHONPATH=$PWD
fi
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; } \
  | tee "$OUT/machine.txt"

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
echo "[gpu_check] kernel tests exit $tests_rc"
exit "$tests_rc"
