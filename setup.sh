#!/usr/bin/env bash
# Create .venv and install stsae with its dev tools. Idempotent: a second run with an unchanged
# pyproject.toml returns in about a second. CPU PyTorch by default (torch==2.13.0); --gpu for CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")"
GPU=0
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    --cpu) GPU=0 ;;
    -h|--help) echo "usage: bash setup.sh [--cpu|--gpu]  (creates .venv and installs stsae[dev])"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
STAMP=.venv/.stsae-installed
WANT="$(cat pyproject.toml | sha256sum | cut -c1-16)-gpu$GPU"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "[setup] installing dependencies into .venv (first run takes a few minutes)"
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "$GPU" = 1 ]; then
  .venv/bin/python -m pip install --quiet torch
else
  .venv/bin/python -m pip install --quiet torch==2.13.0
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "$WANT" > "$STAMP"
echo "[setup] done: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
