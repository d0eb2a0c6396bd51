#!/usr/bin/env bash
# Set up (if needed) and run the main job: the ERM/AMP/SAM study on the offline default
# (MNIST-1D, mlp1d, CPU; docs/validation.md). Extra arguments go to `flatness experiment`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/flatness experiment "$@"
