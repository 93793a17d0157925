#!/usr/bin/env bash
# End-to-end orchestrator (original layout). SOURCE=synthetic|pulsedb|mimic_iii|mimic_iv selects the data;
# CONFIG picks the YAML (default: configs/demo.yaml for synthetic, configs/default.yaml otherwise).
# Extra arguments are passed to `stsae run` (e.g. --set train.steps=500 --force).
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,4p' "$0" | sed 's/^# //'
  echo "usage: SOURCE=pulsedb CONFIG=configs/default.yaml bash scripts/run_pipeline.sh [stsae run options]"
  exit 0
fi
cd "$(dirname "$0")/.."
SOURCE=${SOURCE:-synthetic}
case "$SOURCE" in
  synthetic) CONFIG=${CONFIG:-configs/demo.yaml} ;;
  pulsedb|mimic_iii|mimic_iv) CONFIG=${CONFIG:-configs/default.yaml} ;;
  *) echo "run_pipeline.sh: SOURCE must be synthetic, pulsedb, mimic_iii or mimic_iv (got '$SOURCE')" >&2; exit 2 ;;
esac
bash setup.sh
exec .venv/bin/python -m stsae run --config "$CONFIG" --set "data.source=$SOURCE" "$@"
