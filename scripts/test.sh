#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and run the test suite. Extra arguments go to
# pytest, e.g. `bash scripts/test.sh -k fsutil`. This is THE test command:
# README, Makefile and CI (.ci/run) all call it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
set +e
.venv/bin/python -m pytest -n "${LPO_TEST_WORKERS:-2}" -q tests "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
    echo "test.sh: error: pytest collected no tests; the suite must run tests" >&2
    exit 1
fi
exit $rc
