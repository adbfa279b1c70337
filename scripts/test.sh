#!/usr/bin/env bash
# The whole test suite, real engines on the small real models included.
# Usage: bash scripts/test.sh [pytest options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export OMP_WAIT_POLICY=passive ORT_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1
# Lint and types first (seconds): the layout rules in README "For developers".
.venv/bin/ruff check spark_voice tests benchmarks examples
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -rs --durations=15 "$@"
