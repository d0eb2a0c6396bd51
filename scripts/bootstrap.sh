#!/usr/bin/env bash
# Create the project virtualenv (.venv) and install flatness into it (editable, with test extras).
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The same floor as pyproject.toml's requires-python, checked before the multi-gigabyte torch download.
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "[bootstrap] flatness needs Python 3.10 or newer; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=..." >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  # The versions this project is tested with; set FLATNESS_TORCH to choose others (pyproject.toml needs torch>=2.2).
  TORCH_SPEC=${FLATNESS_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
  echo "[bootstrap] installing $TORCH_SPEC (large download on a new machine)"
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q --disable-pip-version-check $TORCH_SPEC \
    || .venv/bin/python -m pip install -q --disable-pip-version-check "torch>=2.2" torchvision
fi
if ! .venv/bin/python -c "import flatness.cli, pytest, h5py, sklearn, markdown_it" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.flatness-installed ] || [ setup.py -nt .venv/.flatness-installed ]; then
  echo "[bootstrap] installing flatness and its dependencies"
  # A new venv carries the pip/setuptools its Python shipped with (on 3.9 pip 23 and setuptools 58, which
  # could not install cli/ as flatness.cli through package_dir in editable mode); never rely on them.
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  touch .venv/.flatness-installed
fi
