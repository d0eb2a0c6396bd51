#!/usr/bin/env bash
# Set up (if needed) and run the main job: the ERM-versus-AMP experiment on the offline default
# (digits, convnet, CPU). Extra arguments go to `flatness experiment`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/flatness experiment "$@"
