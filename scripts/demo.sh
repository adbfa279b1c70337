#!/usr/bin/env bash
# The main job, offline: a bundled WAV -> whisper.cpp -> llama.cpp -> TTS -> out/answer.ogg (Opus).
# Usage: bash scripts/demo.sh [AUDIO_FILE] [extra `spark-voice run` options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh >&2
input=${1:-examples/audio/question_en.wav}
shift || true
lang=()
case "$input" in *_en.*) lang=(--language en);; esac
mkdir -p out
exec .venv/bin/spark-voice run "$input" -o out/answer.ogg "${lang[@]}" "$@"
