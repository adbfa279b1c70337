#!/usr/bin/env bash
# The CPU environment of the real Fish Speech integration test (tests/test_fish_real.py), cached:
#
#   bash scripts/fish_env.sh          # prints the path of its python; builds it first when missing
#
# * fish-speech at the pinned commit (TTS_FISH_REF in .env.default) from the vendored source tree
#   (FISH_SPEECH_SRC, default ../shared/vendor/fish-speech, read-only), copied to
#   .cache/fish-speech-<commit> and installed editable (--no-deps): its code finds its configs
#   through the tree's .project-root file. The copy also gets tests/fixtures/fish/*.yaml (the
#   shrunk codec config of the test checkpoint) in fish_speech/configs/, and a .fish-speech-commit
#   marker that `spark-voice doctor` reads.
# * .cache/fish-venv: CPU torch (TORCH_SPEC) + scripts/fish-requirements.txt (pinned: what
#   fish-speech's inference imports, spark-voice's core/serve deps, piper for the CPU fallback).
#   No gradio, wandb, datasets, training stack. descript-audio-codec/-audiotools go in --no-deps
#   (they pull torchaudio). torchaudio: its last release builds against torch 2.11, so its compiled
#   extension cannot load next to CPU torch 2.13; the pinned inference uses only its pure-Python
#   parts (and torchaudio.load / list_audio_backends, which spark-voice replaces for every torchaudio
#   >= 2.9 anyway, see spark_voice/backends/tts_fish.py), so the extension files are removed.
#
# Rebuilt only when this script, the requirements, the fixtures or the pin change (hash stamp): a
# re-run takes well under a second. First build: ~3-5 min (downloads ~0.5 GB of wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${SPARK_VOICE_CACHE:-$ROOT/.cache}
VENV=$CACHE/fish-venv
TORCH_SPEC=${FISH_TORCH_SPEC:-torch==2.13.0}
TORCHAUDIO_SPEC=torchaudio==2.11.1
REF=$(sed -n 's/^TTS_FISH_REF=\([0-9a-f]*\).*/\1/p' .env.default)
[ -n "$REF" ] || { echo "fish_env: TTS_FISH_REF is empty in .env.default" >&2; exit 1; }
SRC=${FISH_SPEECH_SRC:-$ROOT/../shared/vendor/fish-speech}
TREE=$CACHE/fish-speech-$REF

want=$(cat scripts/fish_env.sh scripts/fish-requirements.txt tests/fixtures/fish/*.yaml <(echo "$REF $TORCH_SPEC") \
       | sha256sum | cut -d' ' -f1)
stamp=$VENV/.spark-voice-fish-env
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ -x "$VENV/bin/python" ] && [ -f "$TREE/.project-root" ]; then
  echo "$VENV/bin/python"
  exit 0
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3.10 python3; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info < (3, 13))'; then PY=$c; break; fi
  done
fi
[ -n "$PY" ] || { echo "fish_env: Python 3.10-3.12 is required" >&2; exit 1; }

if [ ! -f "$SRC/.project-root" ] || [ ! -d "$SRC/fish_speech" ]; then
  echo "fish_env: no fish-speech source tree at $SRC (set FISH_SPEECH_SRC to a checkout of" \
       "fishaudio/fish-speech at $REF)" >&2
  exit 1
fi
log() { echo "fish_env: $*" >&2; }
log "building $VENV (fish-speech ${REF:0:7} from $SRC; first time takes a few minutes)"
mkdir -p "$CACHE"
rm -rf "$TREE.tmp" && cp -r "$SRC" "$TREE.tmp" && chmod -R u+w "$TREE.tmp"
cp tests/fixtures/fish/*.yaml "$TREE.tmp/fish_speech/configs/"
echo "$REF" > "$TREE.tmp/.fish-speech-commit"
rm -rf "$TREE" && mv "$TREE.tmp" "$TREE"

rm -rf "$VENV"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" "$TORCH_SPEC"
"${PIP[@]}" -r scripts/fish-requirements.txt
"${PIP[@]}" --no-deps descript-audio-codec==1.0.0 descript-audiotools==0.7.2 "$TORCHAUDIO_SPEC"
rm -f "$VENV"/lib/python3*/site-packages/torchaudio/lib/*.so
"${PIP[@]}" --no-deps -e "$TREE"
# the inference entry points import, from any working directory
(cd / && "$VENV/bin/python" -c "
import fish_speech.inference_engine, fish_speech.models.dac.inference
import fish_speech.models.text2semantic.inference, fish_speech.utils.schema") >/dev/null 2>&1 \
  || { log "the fish-speech imports fail in $VENV"; (cd / && "$VENV/bin/python" -c "import fish_speech.inference_engine, fish_speech.models.dac.inference") >&2; exit 1; }
echo "$want" > "$stamp"
log "ready"
echo "$VENV/bin/python"
