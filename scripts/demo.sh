#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run `lpo demo` on the bundled sample model.
# Extra arguments go to `lpo demo`, e.g. `bash scripts/demo.sh --out /tmp/lpo-demo --keep`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
exec .venv/bin/lpo demo --pipeline kfp "$@"
