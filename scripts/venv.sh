#!/usr/bin/env bash
# Set up a stack's virtual environment (if needed) and install augbatch into it.
# Usage: [STACK=pinned|modern] [EXTRAS=dev,dask] bash scripts/venv.sh [--which-python]
#   pinned (default): Python 3.11, TensorFlow 2.15.1 + tensorflow-addons, in .venv
#   modern:           Python 3.12, TensorFlow 2.21 + Keras 3, no tensorflow-addons, in .venv-modern
#                     (versions from constraints/modern.txt)
# It also builds augbatch's native ops (pipeline/ops/native.py) into its cache.
# The interpreter is python3.X from the PATH, else one installed by pyenv (even when it is not
# pyenv's global version). PYTHON and VENV override the interpreter and the environment's folder;
# --which-python prints the interpreter and stops.
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
if [ "${1:-}" = "--which-python" ]; then echo "$PYTHON"; exit 0; fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet $CONSTRAINTS -e ".${EXTRAS:+[$EXTRAS]}"
# augbatch's native ops, built now rather than by the first run (~15 s once per TensorFlow
# version; without a C++ compiler augbatch says so and runs without them).
TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" -c "import logging, sys
logging.basicConfig(level=logging.INFO, format='augbatch: %(message)s')
from pipeline.ops import native
native.library()" 2>&1 | grep -v "^WARNING:root:\|tensorflow_addons\|TensorFlow Addons" || true
