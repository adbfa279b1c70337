"""STT final decode, side by side on the same clips (part (b) of `spark-voice bench --compare`, and
`benchmarks/bench_stt.py --compare-final`): whisper.cpp with the full 30 s encoder window vs a
context fitted to the utterance, for one or more ggml files (f16, q8_0, q5_0 ...), vs faster-whisper
(CTranslate2) base int8 -- time per clip and WER (en) / CER (ja) against the text each clip was
made from. Clips: the bundled ones plus held-out sentences spoken by our own voices.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..types import SAMPLE_RATE_STT, Audio
from .scoring import cer, wer

# held-out sentences spoken by our own voices
EN_SENTENCES = ("Hello, this is a test of the speech recognition system.",
                "Please turn on the kitchen lights and play some quiet music.",
                "How long does it take to drive from Boston to New York?",
                "Remind me to call my sister at seven tomorrow evening.")
JA_SENTENCES = ("今日はいい天気ですね。", "明日の会議は午後三時から始まります。",
                "駅までの道を教えてください。", "冷蔵庫に牛乳がまだありますか？")


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 1)


def _ratio(new: float | None, old: float | None) -> float | None:
    return round(new / old, 3) if new is not None and old else None


def synth_clips(settings, threads: int = 2) -> dict[str, tuple[Audio, str, str]]:
    """Held-out sentences spoken by our voices: name -> (16 kHz audio, reference text, language)."""
    from ..audio.io import resample
    from ..backends.registry import build

    s = settings.model_copy(update={"tts_provider": "kokoro,piper", "tts_fallback": "none", "tts_threads": threads})
    tts = build("tts", s)
    out: dict[str, tuple[Audio, str, str]] = {}
    for lang, sents in (("en", EN_SENTENCES), ("ja", JA_SENTENCES)):
        for i, text in enumerate(sents):
            a = resample(Audio.concat(list(tts.synthesize(text, language=lang))), SAMPLE_RATE_STT)
            pad = np.zeros(int(0.3 * SAMPLE_RATE_STT), np.float32)
            out[f"held_{lang}{i + 1}"] = (Audio(np.concatenate([pad, a.samples, pad]), SAMPLE_RATE_STT), text, lang)
    if hasattr(tts, "close"):
        tts.close()
    return out


def faster_whisper_model(threads: int):
    """faster-whisper on the CT2 whisper base that `models prepare` assembles (int8 on the CPU)."""
    from faster_whisper import WhisperModel

    from ..models.convert_whisper import find_ct2_whisper

    return WhisperModel(str(find_ct2_whisper("base")), device="cpu", compute_type="int8", cpu_threads=threads,
                        num_workers=1)


FW = "faster-whisper base int8"


def model_label(stt) -> str:
    """'base-q8_0' for ggml-base-q8_0.bin."""
    name = Path(str(stt.model_path)).name
    return name.removeprefix("ggml-").removesuffix(".bin")


def compare_final(stt, clips: dict[str, tuple[Audio, str, str]], rounds: int = 3, threads: int = 2,
                  faster_whisper: bool = True, printer: Callable[[str], None] = print,
                  others: list[Any] | tuple[Any, ...] = ()) -> dict[str, Any]:
    """Time per clip (median of `rounds`, alternating) and WER / CER of each decoder.

    `stt` is decoded with the full and the fitted context; each loaded WhisperCppSTT in `others`
    (other ggml files, e.g. a quantised one) with the fitted context. Fairness: every decoder uses
    `threads` (whisper.cpp ``n_threads`` = faster-whisper ``cpu_threads``), greedy decoding (whisper.cpp
    greedy, faster-whisper ``beam_size=1``), temperature 0 with the same fallback steps, no text
    carried between calls, no VAD, the language given.
    """
    decoders: dict[str, Callable[[Audio, str], str]] = {}

    def ours(engine, ctx: str):
        def run(a: Audio, lang: str) -> str:
            engine.final_ctx = ctx
            return engine.transcribe(a, lang).text
        return run

    for engine in (stt, *others):
        if engine.n_threads != threads:
            raise ValueError(f"{engine.model_path}: {engine.n_threads} threads, the comparison uses {threads}")
    # The full-context reference gets a context of its own that never runs a shorter decode: with
    # flash attention whisper.cpp reads 1536 cross-attention rows for 1500 frames, and a shorter
    # decode in the same context leaves values in the 36 extra ones (see backends/whisper/windowing.py).
    full = type(stt)(stt.model_path, language=stt.language, n_threads=stt.n_threads, final_ctx="full")
    full.load()
    decoders["whisper.cpp full"] = ours(full, "full")
    decoders["whisper.cpp fitted"] = ours(stt, "fitted")
    for engine in others:
        decoders[f"whisper.cpp fitted {model_label(engine)}"] = ours(engine, "fitted")
    fw_error = ""
    if faster_whisper:
        try:
            fw = faster_whisper_model(threads)

            def run_fw(a: Audio, lang: str) -> str:
                segs, _ = fw.transcribe(a.samples, language=lang, beam_size=1, best_of=5,
                                        condition_on_previous_text=False, vad_filter=False,
                                        temperature=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
                return ("" if lang == "ja" else " ").join(s.text.strip() for s in segs)
            decoders[FW] = run_fw
        except Exception as exc:  # not installed (bench extra) or no CT2 model
            fw_error = f"{type(exc).__name__}: {exc}"
            printer(f"  faster-whisper skipped: {fw_error}")
    saved = {id(e): e.final_ctx for e in (stt, *others)}
    times: dict[str, dict[str, list[float]]] = {d: {c: [] for c in clips} for d in decoders}
    texts: dict[str, dict[str, str]] = {d: {} for d in decoders}
    try:
        for audio, _ref, lang in clips.values():  # warm-up: first calls load / allocate
            for run in decoders.values():
                run(audio, lang)
            break
        for r in range(rounds):
            names = list(decoders) if r % 2 == 0 else list(reversed(decoders))
            for name, (audio, _ref, lang) in clips.items():
                for d in names:
                    t0 = time.perf_counter()
                    texts[d][name] = decoders[d](audio, lang)
                    times[d][name].append(_ms(t0))
    finally:
        for e in (stt, *others):
            e.final_ctx = saved[id(e)]
        full.close()
    out: dict[str, Any] = {"clips": {n: {"seconds": round(a.duration, 2), "language": lang, "text": ref}
                                     for n, (a, ref, lang) in clips.items()},
                           "rounds": rounds, "threads": threads, "model": model_label(stt),
                           "others": [model_label(e) for e in others], "decoders": {},
                           "faster_whisper_error": fw_error}
    for d in decoders:
        per_clip = {c: statistics.median(v) for c, v in times[d].items()}
        scores = {"en": [wer(clips[c][1], texts[d][c]) for c in clips if clips[c][2] == "en"],
                  "ja": [cer(clips[c][1], texts[d][c]) for c in clips if clips[c][2] == "ja"]}
        out["decoders"][d] = {
            "ms_per_clip": round(statistics.mean(per_clip.values()), 1),
            "ms_per_clip_en": _mean([v for c, v in per_clip.items() if clips[c][2] == "en"]),
            "ms_per_clip_ja": _mean([v for c, v in per_clip.items() if clips[c][2] == "ja"]),
            "wer_en": _mean(scores["en"], 4), "cer_ja": _mean(scores["ja"], 4),
            "per_clip_ms": {c: round(v, 1) for c, v in per_clip.items()}, "texts": texts[d]}
        x = out["decoders"][d]
        printer(f"  {d:<36} {x['ms_per_clip']:7.0f} ms/clip (en {x['ms_per_clip_en']}, ja {x['ms_per_clip_ja']})"
                f"  WER en {x['wer_en']}  CER ja {x['cer_ja']}")
    dec = out["decoders"]
    fitted, full = dec["whisper.cpp fitted"], dec["whisper.cpp full"]
    out["fitted_vs_full"] = _ratio(fitted["ms_per_clip"], full["ms_per_clip"])
    if FW in dec:
        out["fitted_vs_faster_whisper"] = _ratio(fitted["ms_per_clip"], dec[FW]["ms_per_clip"])
        out["vs_faster_whisper"] = {d: _ratio(x["ms_per_clip"], dec[FW]["ms_per_clip"])
                                    for d, x in dec.items() if d != FW}
    return out


def margin_sweep(stt, clips: dict[str, tuple[Audio, str, str]], margins=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0),
                 printer: Callable[[str], None] = print) -> dict[str, Any]:
    """WER / CER and time of the fitted decode for several margins (how STT_FINAL_CTX_MARGIN_S was chosen)."""
    saved = (stt.final_ctx, stt.final_ctx_margin_s)
    out: dict[str, Any] = {}
    try:
        for m in (None, *margins):
            stt.final_ctx, stt.final_ctx_margin_s = ("full", 0.0) if m is None else ("fitted", float(m))
            en: list[float] = []
            ja: list[float] = []
            ms: list[float] = []
            for _name, (audio, ref, lang) in clips.items():
                t0 = time.perf_counter()
                text = stt.transcribe(audio, lang).text
                ms.append(_ms(t0))
                (en if lang == "en" else ja).append(wer(ref, text) if lang == "en" else cer(ref, text))
            key = "full" if m is None else f"fitted+{m:g}s"
            out[key] = {"wer_en": _mean(en, 4), "cer_ja": _mean(ja, 4), "ms_per_clip": _mean(ms)}
            printer(f"  {key:<12} WER en {out[key]['wer_en']}  CER ja {out[key]['cer_ja']}  "
                    f"{out[key]['ms_per_clip']} ms/clip")
    finally:
        stt.final_ctx, stt.final_ctx_margin_s = saved
    return out


def _mean(xs, nd: int = 1) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.mean(xs), nd) if xs else None
