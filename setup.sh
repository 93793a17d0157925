#!/usr/bin/env bash
# Create .venv and install stsae with its dev tools from requirements.lock (every package pinned and hashed),
# so a fresh machine gets exactly the versions the tests passed with. Idempotent: with an unchanged lock and
# pyproject.toml a second run returns at once.
#   bash setup.sh          CPU PyTorch, exactly the lock
#   bash setup.sh --gpu    the lock, then the CUDA build of the same torch version from $TORCH_INDEX_URL
#                          (the only package that differs; see README "GPU")
set -euo pipefail
cd "$(dirname "$0")"
GPU=0
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    --cpu) GPU=0 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "[setup] warning: requirements.lock is made for CPython 3.11; .venv has $(.venv/bin/python --version)." >&2
  echo "[setup]          If the install fails, use PYTHON=python3.11 bash setup.sh, or pip install -e '.[dev]'." >&2
fi
STAMP=.venv/.stsae-installed
WANT="$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)-gpu$GPU"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi
echo "[setup] installing requirements.lock into .venv (first run takes a few minutes)"
.venv/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
if [ "$GPU" = 1 ]; then
  TORCH=$(grep -oE '^torch==[0-9.]+' requirements.lock | cut -d= -f3)
  .venv/bin/python -m pip uninstall --quiet --yes torch
  .venv/bin/python -m pip install --quiet \
    --index-url "${TORCH_INDEX_URL:?set TORCH_INDEX_URL to the PyTorch CUDA wheel index for your driver}" "torch==$TORCH"
fi
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
echo "$WANT" > "$STAMP"
echo "[setup] done: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
