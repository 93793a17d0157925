#!/usr/bin/env bash
# Install stsae and check a PaPaGei-S checkpoint. The weights cannot be downloaded by this script
# (no network access is assumed): get papagei_s.pt as DATA_GUIDE.md explains, then pass its path.
# usage: bash scripts/00_setup_papagei.sh [/path/to/papagei_s.pt]
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then sed -n '2,4p' "$0" | sed 's/^# //'; exit 0; fi
cd "$(dirname "$0")/.."
bash setup.sh
if [ $# -ge 1 ]; then
  .venv/bin/python - "$1" <<'PY'
import hashlib, sys
from stsae.models.papagei import load_papagei_s
path = sys.argv[1]
model = load_papagei_s(path)
digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
print(f"loaded {path} strictly: {sum(p.numel() for p in model.parameters()):,} parameters, sha256 {digest}")
print(f"set it in your config:  encoder:\n  weights: {path}")
PY
else
  echo "No checkpoint given. See DATA_GUIDE.md for papagei_s.pt, then: bash scripts/00_setup_papagei.sh PATH"
fi
