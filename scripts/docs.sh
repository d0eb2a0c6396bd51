#!/usr/bin/env bash
# Build the documentation site into site/ with warnings as errors (mkdocs.yml; the notebooks are executed),
# or serve it with --serve (http://127.0.0.1:8000, rebuilt on every change). Extra arguments go to mkdocs.
# FLATNESS_DOCS_EXECUTE=false skips running the notebooks (faster while editing prose).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh  # the docs tools come with the test extra
export MPLBACKEND=Agg
export NO_MKDOCS_2_WARNING=1  # Material's banner about its successor: not a warning about these docs
if [ "${1:-}" = "--serve" ]; then
    shift
    exec .venv/bin/python -m mkdocs serve --strict "$@"
fi
exec .venv/bin/python -m mkdocs build --strict "$@"
