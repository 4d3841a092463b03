#!/usr/bin/env bash
# Create .venv (if missing) and install lpo with all extras, editable.
# Idempotent and fast: skips the install when pyproject.toml is unchanged
# since the last successful run. Uses uv when available.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.lpo-setup-stamp"
EXTRAS="${LPO_EXTRAS:-all,dev}"
PYTHON="${PYTHON:-python3}"

want="$( (cat pyproject.toml; echo "extras=$EXTRAS") | sha256sum | cut -d' ' -f1)"
if [[ -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/lpo" ]]; then
    exit 0
fi

UV=""
if command -v uv >/dev/null 2>&1; then
    UV="$(command -v uv)"
fi

if [[ ! -x "$PY" ]]; then
    echo "setup: creating $VENV" >&2
    if [[ -n "$UV" ]]; then
        "$UV" venv --quiet --python "$PYTHON" "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi

if [[ -z "$UV" ]]; then
    # No uv on PATH: try to get it into the venv, else fall back to pip.
    if "$PY" -m pip --version >/dev/null 2>&1 && "$PY" -m pip install --quiet uv >/dev/null 2>&1; then
        UV="$VENV/bin/uv"
    fi
fi

echo "setup: installing lpo[$EXTRAS] into $VENV" >&2
if [[ -n "$UV" ]]; then
    "$UV" pip install --quiet --python "$PY" -e ".[$EXTRAS]"
else
    "$PY" -m pip install --quiet -e ".[$EXTRAS]"
fi
echo "$want" > "$STAMP"
