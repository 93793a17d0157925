#!/usr/bin/env bash
# Issue 21's GPU check as ONE prepared command for the device tool (one H200; 15 min of device time in all,
# machine start included, so this run is sized to ~8 min and leaves room for one partial rerun).
#
# 1. Here, once, on a CPU host that reaches PyPI:   bash scripts/gpu_check.sh fetch
#    downloads into .whl/ (git-ignored via .git/info/exclude) the wheels the device image lacks for stsae:
#    pydantic, wfdb, neurokit2 and the few of their needs it does not hold (CPython 3.12, manylinux x86-64,
#    versions pinned as in requirements.lock). The image already has torch (CUDA), numpy, pandas, scipy,
#    scikit-learn, statsmodels, pyarrow, h5py, safetensors, typer, rich, pytest, hypothesis.
# 2. There:   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=590)
#    a. installs .whl/ into /tmp/site (nothing else on the machine changes);
#    b. pytest -x -q of the device tests with STSAE_TEST_DEVICE=cuda (a CUDA case that cannot run fails
#       instead of skipping), then the CPU-reference tests of the code they cover, then evaluate's stage
#       tests with eval.device resolving to cuda (reported, not fatal);
#    c. benchmarks/bench_gpu.py within BENCH_BUDGET_S seconds (default 330).
#    Everything lands in $OUT (./gpu-check-out outside the device tool): tests.log, bench.log, gpu.json,
#    nvidia-smi.txt. The exit status is the first failing step's.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing-extensions==4.16.0 wfdb==4.3.1 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
        neurokit2==0.3.0 pywavelets==1.9.0)

if [[ "${1:-}" == fetch ]]; then
  exclude="$(git rev-parse --git-path info/exclude)"
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
  platforms=()
  for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64; do platforms+=(--platform "$p"); done
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${WHEELS[@]}"
fi

OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 STSAE_TEST_DEVICE=cuda
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing .whl/ failed" | tee "$OUT/tests.log"; exit 3; }
  export PYTHONPATH="/tmp/site:$PWD/src"
else
  echo "gpu_check: no .whl/ (run 'bash scripts/gpu_check.sh fetch' here first); using installed packages"
  export PYTHONPATH="$PWD/src"
fi
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1

{
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  timeout 150 "$PY" -m pytest -x -q -p no:cacheprovider tests/test_device.py \
    && timeout 150 "$PY" -m pytest -x -q -p no:cacheprovider -m "not slow" tests/test_extract.py \
         tests/test_papagei.py tests/test_registry.py tests/test_config.py tests/test_augment_torch.py \
         tests/test_augment_philox.py
} 2>&1 | tee "$OUT/tests.log"
status=${PIPESTATUS[0]}
timeout 90 "$PY" -m pytest -q -p no:cacheprovider -m "not slow" tests/test_evaluate_stage.py 2>&1 \
  | tee "$OUT/tests-evaluate.log"

timeout $(( ${BENCH_BUDGET_S:-330} + 60 )) "$PY" benchmarks/bench_gpu.py --budget-s "${BENCH_BUDGET_S:-330}" \
  --out "$OUT/gpu.json" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}
(( status == 0 )) && status=$bench
exit "$status"
