#!/usr/bin/env bash
# The local dev loop in one command: the server on the small CPU models (profile dev), restarted on
# every code change.
#
#   scripts/dev.sh                      # http://127.0.0.1:8080 (SERVE_PORT)
#   scripts/dev.sh --port 8099 --no-load
#
# Prepares the small models under ./models first if `models verify` finds any missing
# (`spark-voice models prepare --small`, once; files already there are kept).
# PYTHON picks the interpreter (default: .venv/bin/python when present, else python3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

if ! "$py" -m spark_voice models verify --profile dev >/dev/null 2>&1; then
  echo "dev: preparing the small models (spark-voice models prepare --small) ..." >&2
  "$py" -m spark_voice models prepare --small --profile dev
fi
exec "$py" -m spark_voice.serve --reload --profile dev "$@"
