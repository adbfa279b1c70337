"""Turn-taking comparisons, side by side in one run (`spark-voice bench --compare`, and
`benchmarks/bench_stt.py --compare-final`).

(a) end of speech -> first audio, endpointing included: today's path (fixed STT_SILENCE_MS
    silence, full-context final decode, sentence chunker) vs the new one (Smart Turn at a short
    pause, fitted-context final, eager chunker), turn by turn on the same clips, alternating, at
    real-time pace. ``eos_first_audio`` = silence the endpointing waited after the voice stopped
    (``stt.speech_end`` ``silence_ms``) + first ``tts.chunk`` - ``stt.speech_end``.
(b) STT final decode of the same clips: whisper.cpp full context vs fitted context vs
    faster-whisper (CTranslate2) base int8 -- time per clip and WER (en) / CER (ja) against the
    text the clip was made from.
(c) Japanese first audio (``final`` + ``tts_start``) and ``tts_start`` alone (the chunker's part):
    new vs old path, from the same turns as (a).
Plus the turn-taking checks: early cut-offs on the pause clips (a turn that ended inside the
pause: more than one ``stt.final``), and false barge-ins when a back-channel clip is spoken over
an answer in a VoiceSession (any ``turn.barge_in``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..audio.io import load_audio
from ..backends.registry import unwrap
from ..types import SAMPLE_RATE_STT, Audio
from .clips import BUNDLED as CLIPS  # examples/audio of the checkout
from .clips import PacedSTT
from .floors import llm_cache_reset
from .scoring import cer, wer

# reference texts of the bundled clips (examples/make_speech_clips.py makes them from these)
CLIP_TEXTS = {
    "question_en": "What is the capital of France? Please answer in one short sentence.",
    "question_ja": "日本で一番高い山は何ですか？",
    "pause_en": "What's the weather going to be like in Tokyo this weekend?",
    "pause_ja": "明日の会議は、ええと、午後三時からです。",
}
# held-out sentences spoken by our own voices for (b)
EN_SENTENCES = ("Hello, this is a test of the speech recognition system.",
                "Please turn on the kitchen lights and play some quiet music.",
                "How long does it take to drive from Boston to New York?",
                "Remind me to call my sister at seven tomorrow evening.")
JA_SENTENCES = ("今日はいい天気ですね。", "明日の会議は午後三時から始まります。",
                "駅までの道を教えてください。", "冷蔵庫に牛乳がまだありますか？")


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 1)


def _p50(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 1) if xs else None


def _ratio(new: float | None, old: float | None) -> float | None:
    return round(new / old, 3) if new is not None and old else None


def load_clip(name: str) -> Audio | None:
    p = CLIPS / f"{name}.wav"
    return load_audio(p, SAMPLE_RATE_STT) if p.is_file() else None


# ------------------------------------------------------------------ variants of one pipeline
def _unpaced(stt):
    """The STT behind a pacing wrapper (spark_voice.bench.clips.PacedSTT), else `stt` itself."""
    return stt.inner if isinstance(stt, PacedSTT) else stt


def _stt_backend(pipe):
    """The engine behind the pipeline's STT: through a pacing wrapper and a Fallback (its active one)."""
    return unwrap(_unpaced(pipe.stt))


def use_variant(pipe, settings, new: bool) -> None:
    """Switch a built pipeline between today's path (new=False) and the new one, in place."""
    stt = _stt_backend(pipe)
    if hasattr(stt, "final_ctx"):
        stt.final_ctx = settings.stt_final_ctx if new else "full"
    if not hasattr(stt, "_turn_factory"):
        stt._turn_factory = getattr(stt, "end_of_turn", None)
    if new and stt._turn_factory is None:
        from ..turn import build_end_of_turn

        mock = bool(getattr(stt, "is_mock", False))
        s = settings.model_copy(update={"stt_turn_detection": "on"})
        stt._turn_factory = lambda: build_end_of_turn(s, mock=mock)  # noqa: E731
    stt.end_of_turn = stt._turn_factory if new else None
    pipe.settings = settings.model_copy(update={"tts_chunk_rule": settings.tts_chunk_rule if new else "sentence"})


def _norm(text: str) -> str:
    """A transcript compared across paths: letters and digits only, lower case."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _turn_metrics(turn) -> dict[str, Any]:
    ev = {e.stage: e for e in reversed(turn.events)}  # first occurrence of each stage
    end, final, chunk = ev.get("stt.speech_end"), ev.get("stt.final"), ev.get("tts.chunk")
    out: dict[str, Any] = {"finals": sum(1 for e in turn.events if e.stage == "stt.final"),
                           "transcript": turn.transcript, "answer_chars": len(turn.answer or ""),
                           "first_chunk": next((e.text for e in turn.events
                                                if e.stage == "llm.sentence"), "")}
    if end is not None:
        out["silence_ms"] = end.data.get("silence_ms")
        out["end_reason"] = end.data.get("reason")
    if end is not None and chunk is not None:
        out["eos_first_audio"] = round((chunk.t - end.t) * 1000.0 + float(end.data.get("silence_ms") or 0.0), 1)
    if final is not None and end is not None:
        out["final"] = round((final.t - end.t) * 1000.0, 1)
    if final is not None and chunk is not None:
        out["tts_start"] = round((chunk.t - final.t) * 1000.0, 1)
    if "final" in out and "tts_start" in out:
        out["first_audio"] = round(out["final"] + out["tts_start"], 1)
    return out


def compare_paths(pipe, settings, clips: dict[str, Audio], rounds: int, paced: Callable[[Any], Any] | None,
                  printer: Callable[[str], None] = print) -> dict[str, Any]:
    """(a) + (c) + early cut-offs: old vs new path on the same clips, alternating. `paced` wraps an STT
    backend so that its streams get audio at real-time pace (spark_voice.bench.PacedSTT)."""
    realtime = paced is not None
    inner = _unpaced(pipe.stt)  # not paced twice
    pipe.stt = paced(inner) if paced is not None else inner
    rows: list[dict[str, Any]] = []
    # the same transcript must get the same answer on both paths: greedy LLM during the comparison,
    # and a cold prompt every turn (the second path of a pair must not reuse the first one's KV cache)
    engine: Any = unwrap(pipe.llm) if pipe.llm is not None else None
    temp = getattr(engine, "temperature", None)
    if temp is not None:
        engine.temperature = 0.0
    reset_llm = llm_cache_reset(pipe.llm)
    try:
        for r in range(rounds):
            for name, audio in clips.items():
                order = (False, True) if r % 2 == 0 else (True, False)
                for new in order:
                    use_variant(pipe, settings, new)
                    pipe.language = name.rsplit("_", 1)[-1]
                    reset_llm()
                    t = pipe.run(audio, streaming_stt=True, request_id=f"cmp-{name}-{'new' if new else 'old'}-{r}")
                    row = {"clip": name, "path": "new" if new else "old", "round": r, **_turn_metrics(t)}
                    rows.append(row)
                    printer(f"  [{row['path']}] {name}: " + ", ".join(
                        f"{k} {row[k]:.0f}" for k in ("silence_ms", "final", "tts_start", "eos_first_audio")
                        if row.get(k) is not None) + f" ms, finals {row['finals']}, end {row.get('end_reason')}, "
                        f"answer {row['answer_chars']} chars, first chunk {row['first_chunk']!r}")
    finally:
        pipe.stt = inner
        use_variant(pipe, settings, True)
        if temp is not None:
            engine.temperature = temp

    def pick(path: str, lang: str | None = None, kind: str | None = None, key: str = "eos_first_audio",
             fair: bool = False):
        return [x.get(key) for x in rows if x["path"] == path and (not fair or x.get("comparable"))
                and (lang is None or x["clip"].endswith("_" + lang)) and (kind is None or x["clip"].startswith(kind))]

    # Comparable pair (same clip, same round): both paths heard the whole utterance as one turn and
    # wrote the same transcript, so (greedy LLM) they answered the same text. A pair where today's
    # path ended the turn inside a pause answered half the question: not comparable.
    excluded = []
    for r in range(rounds):
        for name in clips:
            pair = [x for x in rows if x["clip"] == name and x["round"] == r]
            why = ""
            if any(x["finals"] > 1 for x in pair):
                why = "turn ended inside the pause (" + ", ".join(x["path"] for x in pair if x["finals"] > 1) + ")"
            elif len({_norm(x.get("transcript") or "") for x in pair}) > 1:
                why = "different transcripts: " + " / ".join(repr(x.get("transcript")) for x in pair)
            elif len({x.get("answer_chars") for x in pair}) > 1:
                why = "different answer lengths: " + " / ".join(str(x.get("answer_chars")) for x in pair)
            for x in pair:
                x["comparable"] = not why
            if why:
                excluded.append({"clip": name, "round": r, "reason": why})
                printer(f"  not comparable: {name} round {r}: {why}")

    out: dict[str, Any] = {"realtime": realtime, "rounds": rounds, "turns": rows,
                           "llm_temperature": 0.0 if temp is not None else None,
                           "excluded_pairs": excluded}
    for lang in ("en", "ja"):
        for key in ("eos_first_audio", "first_audio", "tts_start", "final", "silence_ms"):
            p_old, p_new = _p50(pick("old", lang, key=key)), _p50(pick("new", lang, key=key))
            if p_old is not None or p_new is not None:
                out.setdefault(lang, {})[key] = {"old_p50": p_old, "new_p50": p_new, "ratio": _ratio(p_new, p_old)}
                f_old, f_new = _p50(pick("old", lang, key=key, fair=True)), _p50(pick("new", lang, key=key, fair=True))
                out[lang][key].update(fair_old_p50=f_old, fair_new_p50=f_new, fair_ratio=_ratio(f_new, f_old),
                                      fair_turns=len([v for v in pick("new", lang, key=key, fair=True)
                                                      if v is not None]))
    out["early_cutoffs"] = {p: sum(1 for x in rows if x["path"] == p and x["clip"].startswith("pause")
                                   and x["finals"] > 1) for p in ("old", "new")}
    out["pause_turns"] = {p: sum(1 for x in rows if x["path"] == p and x["clip"].startswith("pause"))
                          for p in ("old", "new")}
    return out


# ------------------------------------------------------------------ false barge-ins
def backchannel_check(pipe, settings, question: Audio, backchannel: Audio, language: str,
                      printer: Callable[[str], None] = print) -> dict[str, Any]:
    """A VoiceSession answers `question`; `backchannel` is spoken over the answer: count barge-ins."""
    from ..session import VoiceSession

    use_variant(pipe, settings, True)
    pipe.language = language
    events: list = []
    sess = VoiceSession(pipe, events.append)
    step = SAMPLE_RATE_STT // 50
    for i in range(0, len(question.samples), step):
        sess.feed(Audio(question.samples[i:i + step], SAMPLE_RATE_STT))
    deadline = time.time() + 60
    while not any(e.stage == "tts.chunk" for e in events) and time.time() < deadline:
        time.sleep(0.01)
    for i in range(0, len(backchannel.samples), step):
        sess.feed(Audio(backchannel.samples[i:i + step], SAMPLE_RATE_STT))
        time.sleep(0.02)  # real-time pace: the answer goes on meanwhile
    sess.flush()
    sess.wait(120)
    sess.close()
    stages = [e.stage for e in events]
    finals = [e.text for e in events if e.stage == "stt.final"]
    out = {"language": language, "barge_ins": stages.count("turn.barge_in"), "paused": stages.count("turn.paused"),
           "resumed": stages.count("turn.resumed"), "turns": stages.count("turn.done"), "finals": finals,
           "answer_cancelled": any(e.stage == "turn.done" and e.data.get("cancelled") for e in events)}
    printer(f"  back-channel {language}: finals {finals}, paused {out['paused']}, resumed {out['resumed']}, "
            f"barge-ins {out['barge_ins']}")
    return out


# ------------------------------------------------------------------ (b) STT final decode
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
    # decode in the same context leaves values in the 36 extra ones (see backends/whisper/recognizer.py).
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


# ------------------------------------------------------------------ all of it
TAIL_S = 2.5  # silence after each clip: longer than STT_TURN_LONG_SILENCE_MS, so no turn ends by end of input


def run_compare(pipe, settings, *, rounds: int = 3, paced: Callable[[Any], Any] | None = None, final_rounds: int = 2,
                faster_whisper: bool = True, printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Everything above on one loaded pipeline; `paced`: see :func:`compare_paths` (None: as fast as possible)."""
    clips = {n: a for n in ("question_en", "pause_en", "question_ja", "pause_ja") if (a := load_clip(n)) is not None}
    report: dict[str, Any] = {}
    printer(f"compare (a, c): today's path vs new, {rounds} round(s), "
            f"{'real-time pace' if paced is not None else 'as fast as possible'}")
    tail = np.zeros(int(TAIL_S * SAMPLE_RATE_STT), np.float32)
    padded = {n: Audio(np.concatenate([a.samples, tail]), SAMPLE_RATE_STT) for n, a in clips.items()}
    report["paths"] = compare_paths(pipe, settings, padded, rounds, paced, printer)
    bc = []
    for lang in ("ja", "en"):
        q, b = load_clip(f"question_{lang}"), load_clip(f"backchannel_{lang}")
        if q is not None and b is not None:
            bc.append(backchannel_check(pipe, settings, q, b, lang, printer))
    report["backchannel"] = {"runs": bc, "false_barge_ins": sum(x["barge_ins"] for x in bc)}
    stt = _stt_backend(pipe)
    if hasattr(stt, "final_ctx") and not getattr(stt, "is_mock", False):
        printer("compare (b): STT final decode, same clips")
        held = {n: (a, CLIP_TEXTS[n], n.rsplit("_", 1)[-1]) for n, a in clips.items()}
        held.update(synth_clips(settings, settings.tts_threads))
        report["stt_final"] = compare_final(stt, held, final_rounds, settings.stt_threads, faster_whisper, printer)
    return report


def format_compare(c: dict[str, Any]) -> list[str]:
    lines = ["", "turn-taking comparisons (one run; ratio = new / today's path):"]
    paths = c.get("paths", {})
    for lang, label in (("en", "English"), ("ja", "Japanese")):
        d = paths.get(lang) or {}
        for key, what in (("eos_first_audio", "end of speech -> first audio (endpointing included)"),
                          ("first_audio", "first audio after stt.speech_end (final + tts_start)"),
                          ("tts_start", "tts_start (LLM + chunker + TTS, from the final)"),
                          ("silence_ms", "endpointing wait after the voice stopped")):
            if key in d:
                x = d[key]
                lines.append(f"  {label:<8} {what:<56} old {x['old_p50']} ms  new {x['new_p50']} ms  "
                             f"ratio {x['ratio']}")
                if x.get("fair_turns") is not None and x.get("fair_ratio") != x["ratio"]:
                    lines.append(f"  {'':<8} {'  same transcript and answer on both paths only':<56} "
                                 f"old {x['fair_old_p50']} ms  new {x['fair_new_p50']} ms  ratio {x['fair_ratio']} "
                                 f"({x['fair_turns']} turn(s) each)")
    if paths:
        for x in paths.get("excluded_pairs", []):
            lines.append(f"  not comparable: {x['clip']} round {x['round']}: {x['reason']}")
        cut, n = paths["early_cutoffs"], paths["pause_turns"]
        lines.append(f"  early cut-offs on the pause clips: old {cut['old']}/{n['old']}, new {cut['new']}/{n['new']}")
    if "backchannel" in c:
        lines.append(f"  false barge-ins on the back-channel clips: {c['backchannel']['false_barge_ins']} "
                     f"({len(c['backchannel']['runs'])} run(s))")
    sf = c.get("stt_final")
    if sf:
        lines.append(f"  STT final over {len(sf['clips'])} clips, {sf.get('threads')} threads each, greedy, "
                     f"{sf.get('model')} (ms/clip, WER en, CER ja, time / faster-whisper):")
        for d, x in sf["decoders"].items():
            lines.append(f"    {d:<36} {x['ms_per_clip']:7.0f}   {x['wer_en']}   {x['cer_ja']}   "
                         f"{(sf.get('vs_faster_whisper') or {}).get(d, '')}")
        lines.append(f"    fitted / full {sf.get('fitted_vs_full')}; fitted / faster-whisper "
                     f"{sf.get('fitted_vs_faster_whisper')}")
    return lines
