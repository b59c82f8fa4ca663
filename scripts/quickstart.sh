#!/usr/bin/env bash
# Set up a virtual environment (if needed), install augbatch, and expand the bundled sample photos.
# Usage: bash scripts/quickstart.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
OUT=${1:-out/sample}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e .
"$VENV/bin/augbatch" expand --config sample_configs/light_classification.yaml --output "$OUT" --overwrite
