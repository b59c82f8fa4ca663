#!/usr/bin/env bash
# Set up a virtual environment (if needed), install augbatch with its test extras, run the tests.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[dev,dask]"
export TF_CPP_MIN_LOG_LEVEL=2
"$VENV/bin/python" -m pytest -q "$@"
