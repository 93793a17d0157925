#!/usr/bin/env bash
# Run the fast tests against the lowest (lowest-direct) or newest versions that pyproject.toml allows, in a
# throwaway venv (.venv-min / .venv-latest), so the lower bounds users see are versions the code works with.
# torch stays the CPU wheel of locks/torch-cpu.txt in both: other torch builds on the registry are multi-GB
# CUDA builds, so torch's lower bound is the tested version itself.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
case "$MODE" in
  lowest) VENV=.venv-min; RESOLUTION=lowest-direct ;;
  highest) VENV=.venv-latest; RESOLUTION=highest ;;
  *) echo "usage: bash scripts/test_bounds.sh lowest|highest" >&2; exit 2 ;;
esac
UV=.venv/bin/uv
[ -x "$UV" ] || { echo "test_bounds.sh: $UV not found; run 'bash setup.sh' first" >&2; exit 2; }
FIND_LINKS=()
for d in ${PIP_FIND_LINKS:-} /opt/wheels; do [ -d "$d" ] && FIND_LINKS+=(--find-links "$d"); done
rm -rf "$VENV"
"$UV" venv --quiet --python "$(.venv/bin/python -c 'import sys; print(sys.executable)')" "$VENV"
"$UV" pip install --quiet --python "$VENV/bin/python" --resolution "$RESOLUTION" "${FIND_LINKS[@]}" \
  -c locks/torch-cpu.txt -e ".[dev]"
echo "[test-$MODE] $("$VENV/bin/python" -c 'import numpy, pandas, scipy, sklearn, torch; print("numpy", numpy.__version__, "pandas", pandas.__version__, "scipy", scipy.__version__, "scikit-learn", sklearn.__version__, "torch", torch.__version__)')"
"$VENV/bin/python" -m pytest -q -n auto -p no:cacheprovider -m "not slow"
