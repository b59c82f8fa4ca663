#!/usr/bin/env bash
# Set up a virtual environment (if needed), install augbatch, and expand the bundled sample photos.
# Usage: bash scripts/quickstart.sh [OUTPUT_DIR]
# The environment is scripts/venv.sh's (.venv, Python 3.11; PYTHON and VENV override).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
OUT=${1:-out/sample}
STACK=pinned VENV=$VENV EXTRAS="" bash scripts/venv.sh
"$VENV/bin/augbatch" expand --config sample_configs/light_classification.yaml --output "$OUT" --overwrite
echo "augbatch is installed in $VENV: 'source $VENV/bin/activate' puts the augbatch command on the PATH"
