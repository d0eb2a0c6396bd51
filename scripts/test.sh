#!/usr/bin/env bash
# Set up (if needed), check lint and formatting (settings in pyproject.toml), then run the whole test suite.
# CI runs exactly this. -rs prints why a test was skipped (e.g. no headless chromium for the report test).
# Two pytest workers (pytest-xdist), one test file per worker at a time (a file's module fixtures are built
# once): most of the time goes to child processes and waits, so two workers halve the wall time on 2 cores.
# FLATNESS_TEST_WORKERS=1 runs the files one after another in this process.
# scripts/test.sh --stress [REPEATS] runs only the timing-sensitive tests, under load and alone
# (scripts/stress.sh, tests/README.md); CI does not use it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--stress" ]; then
    shift
    exec bash scripts/stress.sh "$@"
fi
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
workers="${FLATNESS_TEST_WORKERS:-2}"
if [ "$workers" -gt 1 ]; then
    exec .venv/bin/python -m pytest -q -rs -n "$workers" --dist loadfile tests "$@"
fi
exec .venv/bin/python -m pytest -q -rs tests "$@"
