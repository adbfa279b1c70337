"""Turn-taking comparisons, side by side in one run (`spark-voice bench --compare`, and
`benchmarks/bench_stt.py --compare-final`).

(a) end of speech -> first audio, endpointing included: today's path (fixed STT_SILENCE_MS
    silence, full-context final decode, sentence chunker) vs the new one (Smart Turn at a short
    pause, fitted-context final, eager chunker), turn by turn on the same clips, alternating, at
    real-time pace. ``eos_first_audio`` = silence the endpointing waited after the voice stopped
    (``stt.speech_end`` ``silence_ms``) + first ``tts.chunk`` - ``stt.speech_end``.
(b) STT final decode of the same clips: whisper.cpp full context vs fitted context vs
    faster-whisper (CTranslate2) base int8 -- time per clip and WER (en) / CER (ja) against the
    text the clip was made from (:mod:`.stt_compare`).
(c) Japanese first audio (``final`` + ``tts_start``) and ``tts_start`` alone (the chunker's part):
    new vs old path, from the same turns as (a).
Plus the turn-taking checks: early cut-offs on the pause clips (a turn that ended inside the
pause: more than one ``stt.final``), and false barge-ins when a back-channel clip is spoken over
an answer in a VoiceSession (any ``turn.barge_in``).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np

from ..audio.io import load_audio
from ..backends.registry import unwrap
from ..types import SAMPLE_RATE_STT, Audio
from .clips import BUNDLED as CLIPS  # examples/audio of the checkout
from .clips import PacedSTT
from .floors import llm_cache_reset
from .stt_compare import EN_SENTENCES, FW, JA_SENTENCES, _ratio, compare_final, margin_sweep, synth_clips

__all__ = ["CLIP_TEXTS", "CLIPS", "EN_SENTENCES", "FW", "JA_SENTENCES", "compare_final", "compare_paths",
           "format_compare", "load_clip", "margin_sweep", "run_compare", "synth_clips", "use_variant"]

# reference texts of the bundled clips (examples/make_speech_clips.py makes them from these)
CLIP_TEXTS = {
    "question_en": "What is the capital of France? Please answer in one short sentence.",
    "question_ja": "日本で一番高い山は何ですか？",
    "pause_en": "What's the weather going to be like in Tokyo this weekend?",
    "pause_ja": "明日の会議は、ええと、午後三時からです。",
}
def _p50(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 1) if xs else None


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
                  printer: Callable[[str], None] = print, old_stt=None) -> dict[str, Any]:
    """(a) + (c) + early cut-offs: old vs new path on the same clips, alternating. `paced` wraps an STT
    backend so that its streams get audio at real-time pace (spark_voice.bench.PacedSTT). `old_stt`:
    today's path decodes with this engine (the model the dev profile had when the issue was filed),
    else with the pipeline's own."""
    realtime = paced is not None
    inner = _unpaced(pipe.stt)  # not paced twice
    new_stt = paced(inner) if paced is not None else inner
    old_stt_p = new_stt if old_stt is None else (paced(old_stt) if paced is not None else old_stt)
    pipe.stt = new_stt
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
                    pipe.stt = new_stt if new else old_stt_p
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


# ------------------------------------------------------------------ all of it
TAIL_S = 2.5  # silence after each clip: longer than STT_TURN_LONG_SILENCE_MS, so no turn ends by end of input


def _old_stt(pipe, settings, model: str | None, printer: Callable[[str], None]):
    """A whisper engine on `model` (a file name under the STT models folder) for today's path, when the
    pipeline's whisper runs another file; None otherwise (today's path then shares the engine)."""
    stt = _stt_backend(pipe)
    if not model or not hasattr(stt, "model_path") or getattr(stt, "is_mock", False) \
            or stt.model_path.name == model:
        return None
    s = settings.model_copy(update={"stt_model": model})
    if not s.model_path("stt").is_file():
        printer(f"  today's path: {model} is not under the models folder; both paths decode with "
                f"{stt.model_path.name}")
        return None
    old = type(stt).from_settings(s)
    old.load()
    printer(f"  today's path decodes with {model} (as when the issue was filed), the new one with "
            f"{stt.model_path.name}")
    return old


def run_compare(pipe, settings, *, rounds: int = 3, paced: Callable[[Any], Any] | None = None, final_rounds: int = 2,
                faster_whisper: bool = True, printer: Callable[[str], None] = print,
                old_stt_model: str | None = None) -> dict[str, Any]:
    """Everything above on one loaded pipeline; `paced`: see :func:`compare_paths` (None: as fast as possible);
    `old_stt_model`: the whisper file today's path decodes with (None: the pipeline's)."""
    clips = {n: a for n in ("question_en", "pause_en", "question_ja", "pause_ja") if (a := load_clip(n)) is not None}
    report: dict[str, Any] = {}
    printer(f"compare (a, c): today's path vs new, {rounds} round(s), "
            f"{'real-time pace' if paced is not None else 'as fast as possible'}")
    tail = np.zeros(int(TAIL_S * SAMPLE_RATE_STT), np.float32)
    padded = {n: Audio(np.concatenate([a.samples, tail]), SAMPLE_RATE_STT) for n, a in clips.items()}
    old = _old_stt(pipe, settings, old_stt_model, printer)
    try:
        report["paths"] = compare_paths(pipe, settings, padded, rounds, paced, printer, old_stt=old)
    finally:
        if old is not None:
            old.close()
    report["paths"]["old_stt_model"] = old.model_path.name if old is not None else None
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
    if paths.get("old_stt_model"):
        lines.append(f"  today's path decodes with {paths['old_stt_model']} (the model when the issue was filed)")
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
