#!/usr/bin/env bash
# Make VENV a whole virtualenv with pip, whatever an interrupted run left there (issue 16: Ctrl-C
# during the first `make run` left a .venv without bin/pip, and every later run failed).
# Usage: deploy/venv.sh VENV [PYTHON]. Idempotent; quick when VENV is already whole.
set -euo pipefail
VENV=$1
PYTHON=${2:-$(command -v python3.11 || command -v python3)}

# The interpreter first, without pip: a few files, written in a moment. A venv whose python does
# not run (half-written, or its base interpreter gone) is made again from scratch.
if ! "$VENV/bin/python" -c "" >/dev/null 2>&1; then
    echo "bootstrap: creating $VENV with $PYTHON"
    rm -rf "$VENV"
    "$PYTHON" -m venv --without-pip "$VENV"
fi
# Then pip, by the venv's own python: checked by running it, not by a file's existence, so a
# pip cut short is installed again. Callers run `$VENV/bin/python -m pip`, never bin/pip.
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "bootstrap: installing pip into $VENV"
    "$VENV/bin/python" -m ensurepip --upgrade --default-pip >/dev/null
fi
