#!/usr/bin/env bash
# Set up (if needed), check lint and formatting (settings in pyproject.toml), then run the whole test suite.
# CI runs exactly this. -rs prints why a test was skipped (e.g. no headless chromium for the report test).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q -rs tests "$@"
