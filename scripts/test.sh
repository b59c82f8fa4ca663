#!/usr/bin/env bash
# Set up a virtual environment (if needed), install augbatch with its test extras, run the tests.
# Usage: [STACK=pinned|modern] bash scripts/test.sh [pytest args...]
#   pinned (default): Python 3.11, TensorFlow 2.15.1 + tensorflow-addons, in .venv
#   modern:           Python 3.12, TensorFlow 2.21 + Keras 3, no tensorflow-addons, in .venv-modern
# The environment is scripts/venv.sh's (PYTHON and VENV override the interpreter and its folder).
# The tests run in parallel (pytest-xdist: one worker per core, each test module kept on one worker
# so its module fixtures are built once) and the 15 slowest are listed at the end; `-n 0` runs them
# in this process, one after another.
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=${STACK:-pinned}
case "$STACK" in
  pinned) VENV=${VENV:-.venv} ;;
  modern) VENV=${VENV:-.venv-modern} ;;
  *) echo "STACK must be pinned or modern, got '$STACK'" >&2; exit 2 ;;
esac
STACK=$STACK VENV=$VENV EXTRAS=dev,dask bash scripts/venv.sh
export TF_CPP_MIN_LOG_LEVEL=2
echo "== $STACK stack: $("$VENV/bin/python" -c 'import sys, tensorflow as tf, keras
print(f"Python {sys.version.split()[0]}, TensorFlow {tf.__version__}, Keras {keras.__version__}")' 2>/dev/null)"
"$VENV/bin/python" -m pytest -q -n auto --dist loadscope --durations=15 "$@"
