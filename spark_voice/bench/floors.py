"""Component floors: the raw engines behind the pipeline, called directly on the same input.

An engine backend that wants a real floor exposes a *raw hook*, a public documented method that
prepares its bare engine call and returns it as a zero-argument callable (the bench times only
that call) plus ``raw_label``, a line saying what it calls:

=====================  ===============================================  ===========================
role                   hook                                             implemented by
=====================  ===============================================  ===========================
stt                    ``raw_transcribe(audio, language)``              WhisperCppSTT
llm                    ``raw_generate(messages)`` + ``reset_cache()``   LlamaCppLLM
tts                    ``raw_synthesize(text, voice, language)``        PiperTTS, KokoroTTS
=====================  ===============================================  ===========================

A backend without a hook (the mocks, Fish Speech) is called directly through its role's
contract, and the label says so. A Fallback is measured on its active engine
(:func:`spark_voice.backends.registry.unwrap`), a TTS router on the engine that speaks the
turn's language. The *sequential path* (wait for the whole answer, then synthesise it) runs
through the pipeline's own backends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..backends.base import LanguageModel, SpeechToText, TextToSpeech
from ..backends.registry import TtsRouter, unwrap
from ..text import SentenceChunker
from ..types import Audio
from .clips import Clip, PacedSTT

if TYPE_CHECKING:
    from ..config import Settings
    from ..pipeline import Turn, VoicePipeline

__all__ = ["Floors", "RawGenerator", "RawSynthesizer", "RawTranscriber", "llm_cache_reset", "llm_floor",
           "make_floors", "measure_floors", "ms", "sequential_path", "stt_floor", "time_llm_stream", "tts_floor"]

Messages = list[dict[str, str]]
LlmFloorResult = dict[str, Any]  # first_token_ms, first_sentence_ms, first_sentence


# ------------------------------------------------------------------------- the hooks
@runtime_checkable
class RawTranscriber(Protocol):
    """An STT backend with a raw hook (see the module docstring)."""

    @property
    def raw_label(self) -> str: ...

    def raw_transcribe(self, audio: Audio, language: str) -> Callable[[], object]: ...


@runtime_checkable
class RawGenerator(Protocol):
    """An LLM backend with a raw hook: the callable yields the answer's text pieces."""

    @property
    def raw_label(self) -> str: ...

    def raw_generate(self, messages: Messages) -> Callable[[], Generator[str, None, None]]: ...

    def reset_cache(self) -> None: ...


@runtime_checkable
class RawSynthesizer(Protocol):
    """A TTS backend with a raw hook: the callable produces the first audio chunk."""

    @property
    def raw_label(self) -> str: ...

    def raw_synthesize(self, text: str, voice: str | None, language: str | None) -> Callable[[], object]: ...


# ------------------------------------------------------------------------- helpers
def ms(t0: float) -> float:
    """Milliseconds since perf_counter() returned `t0`."""
    return round((time.perf_counter() - t0) * 1000.0, 3)


def is_mock(backend: object) -> bool:
    return bool(getattr(backend, "is_mock", False))


def time_llm_stream(pieces: Iterable[str], t0: float, settings: Settings | None = None) -> LlmFloorResult:
    """Consume a raw text stream until the first sentence the pipeline's chunker would release."""
    chunker = SentenceChunker.from_settings(settings)
    out: LlmFloorResult = {"first_token_ms": None, "first_sentence_ms": None, "first_sentence": ""}
    for piece in pieces:
        if not piece:
            continue
        if out["first_token_ms"] is None:
            out["first_token_ms"] = ms(t0)
        done = chunker.push(piece)
        if done:
            out["first_sentence_ms"], out["first_sentence"] = ms(t0), done[0]
            break
    else:
        rest = chunker.flush()
        if rest:
            out["first_sentence_ms"], out["first_sentence"] = ms(t0), rest[0]
    return out


def close(gen: Iterator[Any]) -> None:
    """Close a generator (a backend may return any iterator)."""
    if isinstance(gen, Generator):
        gen.close()


@dataclass
class Floors:
    """Raw engine calls; each returns milliseconds. `labels` says what each one really calls,
    `tts_labels` what the TTS floor called per engine (filled in as turns are measured)."""

    stt: Callable[[Audio, str], float] | None = None
    llm: Callable[[Messages], LlmFloorResult] | None = None
    tts: Callable[[str, str], float] | None = None
    reset_llm: Callable[[], None] = lambda: None
    labels: dict[str, str] = field(default_factory=dict)
    tts_labels: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------- per role
def stt_floor(stt: SpeechToText | None) -> tuple[Callable[[Audio, str], float] | None, str]:
    if stt is None:
        return None, ""
    b = unwrap(stt.inner if isinstance(stt, PacedSTT) else stt)
    if isinstance(b, RawTranscriber) and not is_mock(b):
        raw = b

        def floor(audio: Audio, language: str) -> float:
            call = raw.raw_transcribe(audio, language)  # parameters and buffer ready before the clock
            t0 = time.perf_counter()
            call()
            return ms(t0)
        return floor, raw.raw_label

    def direct(audio: Audio, language: str) -> float:
        t0 = time.perf_counter()
        b.transcribe(audio, None if language in ("", "auto") else language)
        return ms(t0)
    what = "mock backend called directly" if is_mock(b) else "backend called directly (no raw handle)"
    return direct, f"{type(b).__name__}.transcribe(whole clip) -- {what}"


def llm_floor(llm: LanguageModel | None, settings: Settings | None = None
              ) -> tuple[Callable[[Messages], LlmFloorResult] | None, Callable[[], None], str]:
    if llm is None:
        return None, lambda: None, ""
    b = unwrap(llm)
    if isinstance(b, RawGenerator) and not is_mock(b):
        b.load()  # the label depends on the model (harmony or not)
        raw = b

        def floor(messages: Messages) -> LlmFloorResult:
            run = raw.raw_generate(messages)  # prompt rendered and tokenized before the clock
            t0 = time.perf_counter()
            pieces = run()
            try:
                return time_llm_stream(pieces, t0, settings)
            finally:
                pieces.close()
        return floor, raw.reset_cache, f"{raw.raw_label}, until the first sentence"

    def direct(messages: Messages) -> LlmFloorResult:
        t0 = time.perf_counter()
        gen = b.stream_chat(messages)
        try:
            return time_llm_stream((d.text for d in gen if d.channel == "final"), t0, settings)
        finally:
            close(gen)
    what = "mock backend called directly" if is_mock(b) else "backend called directly (no raw handle)"
    return direct, lambda: None, f"{type(b).__name__}.stream_chat until the first sentence -- {what}"


def tts_floor(tts: TextToSpeech | None, voice: str | None,
              labels: dict[str, str]) -> tuple[Callable[[str, str], float] | None, str]:
    """The first audio chunk of the engine that speaks the turn's language; `labels` gets what
    was called per engine."""
    if tts is None:
        return None, ""

    def engine_for(language: str) -> TextToSpeech:
        b = unwrap(tts)
        if isinstance(b, TtsRouter):  # the engine that speaks this language
            picked: TextToSpeech = b.pick(voice, language)
            return unwrap(picked)
        return b

    def floor(text: str, language: str) -> float:
        b = engine_for(language)
        if isinstance(b, RawSynthesizer) and not is_mock(b):
            labels[b.provider] = b.raw_label
            call = b.raw_synthesize(text, voice, language)  # voice lookup is not engine work
            t0 = time.perf_counter()
            call()
            return ms(t0)
        labels[b.provider] = f"{type(b).__name__}.synthesize first chunk -- " + (
            "mock backend called directly" if is_mock(b) else "backend called directly")
        t0 = time.perf_counter()
        gen = b.synthesize(text, voice=voice, language=language)
        try:
            next(iter(gen), None)
        finally:
            close(gen)
        return ms(t0)
    return floor, "first audio chunk of the TTS engine for the turn's language"


def llm_cache_reset(llm: LanguageModel | None) -> Callable[[], None]:
    """Clears the KV cache of the pipeline's LLM (no-op for an engine without a cache to clear)."""
    b = unwrap(llm)
    return b.reset_cache if isinstance(b, RawGenerator) else (lambda: None)


def make_floors(pipe: VoicePipeline) -> Floors:
    fl = Floors()
    fl.stt, stt_label = stt_floor(pipe.stt)
    fl.llm, fl.reset_llm, llm_label = llm_floor(pipe.llm, pipe.settings)
    fl.tts, tts_label = tts_floor(pipe.tts, pipe.voice, fl.tts_labels)
    fl.labels = {"stt": stt_label, "llm": llm_label, "tts": tts_label}
    return fl


# ------------------------------------------------------------------------- per turn
def sequential_path(pipe: VoicePipeline, messages: Messages, language: str) -> dict[str, float | int]:
    """The path streaming replaces: generate the whole answer, then synthesise the whole answer
    (our LLM and TTS backends, no chunker). Milliseconds from the transcript."""
    out: dict[str, float | int] = {}
    if pipe.llm is None:
        return out
    t0 = time.perf_counter()
    text = "".join(d.text for d in pipe.llm.stream_chat(messages) if d.channel == "final").strip()
    out["seq_llm_full"] = ms(t0)
    st = getattr(unwrap(pipe.llm), "last_stats", None) or {}  # LlamaCppLLM: counts of the last answer
    n, secs, ttft = st.get("completion_tokens"), st.get("seconds"), st.get("ttft_s")
    if n and n > 1 and secs and ttft is not None and secs > ttft:  # llama.cpp: decode speed after token 1
        out["llm_tokens"], out["llm_decode_tok_s"] = n, round((n - 1) / (secs - ttft), 2)
    if pipe.tts is None or not text:
        return out
    t1 = time.perf_counter()
    first = None
    for _chunk in pipe.tts.synthesize(text, voice=pipe.voice, language=language):
        if first is None:
            first = ms(t1)
    full = ms(t1)
    out["seq_tts_full"] = full
    out["seq_first_audio"] = round(out["seq_llm_full"] + full, 3)
    if first is not None:
        out["seq_first_chunk"] = round(out["seq_llm_full"] + first, 3)
    return out


def measure_floors(pipe: VoicePipeline, fl: Floors, clip: Clip, turn: Turn) -> dict[str, Any]:
    """The floors and the sequential path on the clip and prompt of one measured turn."""
    row: dict[str, Any] = {}
    try:
        if fl.stt is not None:
            row["floor_stt"] = fl.stt(clip.audio, clip.language)
        if turn.transcript and fl.llm is not None:
            messages = pipe.messages_for(turn.transcript, turn.hits)
            fl.reset_llm()
            r = fl.llm(messages)
            row["floor_llm_first_token"] = r["first_token_ms"]
            row["floor_llm_first_sentence"] = r["first_sentence_ms"]
            row["floor_first_sentence"] = r["first_sentence"]
            if fl.tts is not None and r["first_sentence"]:
                row["floor_tts_first_chunk"] = fl.tts(r["first_sentence"], turn.language or clip.language)
            parts: list[float | None] = [row.get("floor_stt"), row.get("floor_llm_first_sentence"),
                                         row.get("floor_tts_first_chunk")]
            known = [p for p in parts if p is not None]
            if len(known) == len(parts):
                row["floors_sum"] = round(sum(known), 3)
            fl.reset_llm()
            row.update(sequential_path(pipe, messages, turn.language or clip.language))
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        row["floor_error"] = f"{type(exc).__name__}: {exc}"
    return row
