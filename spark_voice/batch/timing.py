"""Backends seen through a stopwatch: the engine seconds of each stage of a batch file.

The pipeline runs the LLM and the TTS of an answer at the same time (TTS speaks each sentence
while the LLM writes the next), so the wall time of a turn does not tell the stages apart.
``Timed(backend, role, watch)`` returns the wrapper implementing that role's Protocol
(:class:`TimedStt`, :class:`TimedLlm`, :class:`TimedTts`); it adds the time spent inside the
engine's work calls to ``watch.seconds[role]`` and passes the bookkeeping calls straight through.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

from ..backends.base import SttStream
from ..types import Audio, BackendInfo, LlmDelta, Transcript, Voice


class Stopwatch:
    """Per-file engine seconds by stage, and the last transcript (it carries the segments)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.stage = ""
        self.transcript: Transcript | None = None

    def reset(self) -> None:
        with self._lock:
            self.seconds, self.stage, self.transcript = {}, "", None

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:  # the TTS thread and the LLM thread add at the same time
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def timed(self, stage: str, it: Iterator[Any]) -> Iterator[Any]:
        """Yield from `it`, adding the time spent producing each item (not the consumer's)."""
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    self.add(stage, time.perf_counter() - t0)
                    return
                self.add(stage, time.perf_counter() - t0)
                yield item
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()


class Timed:
    def __new__(cls, backend: Any, role: str, watch: Stopwatch) -> "Timed":
        if cls is Timed:
            cls = _TIMED[role]
        return super().__new__(cls)

    def __init__(self, backend: Any, role: str, watch: Stopwatch) -> None:
        self.raw, self.role, self.watch = backend, role, watch
        self.provider: str = str(backend.provider)  # info() reports the live one (after a fallback)
        self.is_mock: bool = bool(backend.is_mock)

    def load(self) -> None:
        self.raw.load()

    def probe(self) -> None:
        self.raw.probe()

    def info(self) -> BackendInfo:
        return self.raw.info()

    def close(self) -> None:
        self.raw.close()


class TimedStt(Timed):
    def transcribe(self, audio: Audio, language: str | None = None) -> Transcript:
        self.watch.stage = "stt"
        t0 = time.perf_counter()
        tr = self.raw.transcribe(audio, language)
        self.watch.add("stt", time.perf_counter() - t0)
        self.watch.transcript = tr
        return tr

    def stream(self, language: str | None = None, **options: Any) -> SttStream:
        return self.raw.stream(language, **options)  # a batch job transcribes whole files


class TimedLlm(Timed):
    def stream_chat(self, messages: list[dict[str, Any]], **kw: Any) -> Iterator[LlmDelta]:
        self.watch.stage = "llm"
        return self.watch.timed("llm", self.raw.stream_chat(messages, **kw))

    def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        return int(self.raw.count_prompt_tokens(messages))


class TimedTts(Timed):
    def voices(self) -> list[Voice]:
        return list(self.raw.voices())

    def synthesize(self, text: str, **kw: Any) -> Iterator[Audio]:
        return self.watch.timed("tts", self.raw.synthesize(text, **kw))

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.raw, "sample_rate", 0))


_TIMED: dict[str, type[Timed]] = {"stt": TimedStt, "llm": TimedLlm, "tts": TimedTts}
