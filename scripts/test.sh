#!/usr/bin/env bash
# Set up a virtual environment (if needed), install augbatch with its test extras, run the tests.
# Usage: [STACK=pinned|modern] bash scripts/test.sh [pytest args...]
#   pinned (default): Python 3.11, TensorFlow 2.15.1 + tensorflow-addons, in .venv
#   modern:           Python 3.12, TensorFlow 2.21 + Keras 3, no tensorflow-addons, in .venv-modern
#                     (versions from constraints/modern.txt)
# PYTHON and VENV override the interpreter and the environment's folder.
# The tests run in parallel (pytest-xdist: one worker per core, each test module kept on one worker
# so its module fixtures are built once) and the 15 slowest are listed at the end; `-n 0` runs them
# in this process, one after another.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {  # python3.X on the PATH, else one installed by pyenv, else the name (venv says)
  if "python$1" -c "" 2>/dev/null; then echo "python$1"; return; fi
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/"python$1"; do
    if [ -x "$candidate" ]; then echo "$candidate"; return; fi
  done
  echo "python$1"
}

STACK=${STACK:-pinned}
case "$STACK" in
  pinned) PYTHON=${PYTHON:-$(find_python 3.11)}; VENV=${VENV:-.venv}; CONSTRAINTS="" ;;
  modern) PYTHON=${PYTHON:-$(find_python 3.12)}; VENV=${VENV:-.venv-modern}
          CONSTRAINTS="-c constraints/modern.txt" ;;
  *) echo "STACK must be pinned or modern, got '$STACK'" >&2; exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet $CONSTRAINTS -e ".[dev,dask]"
export TF_CPP_MIN_LOG_LEVEL=2
echo "== $STACK stack: $("$VENV/bin/python" -c 'import sys, tensorflow as tf, keras
print(f"Python {sys.version.split()[0]}, TensorFlow {tf.__version__}, Keras {keras.__version__}")' 2>/dev/null)"
"$VENV/bin/python" -m pytest -q -n auto --dist loadscope --durations=15 "$@"
