"""Backend contracts: SpeechToText, LanguageModel, TextToSpeech, Embedder (data types: spark_voice.types).

Engines are blocking native calls, so the contracts are synchronous (iterators); the pipeline and
the server run them in worker threads and turn them into async event streams. Cancellation is a
`threading.Event` checked between tokens / chunks.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

from ..types import SAMPLE_RATE_STT, Audio, BackendInfo, LlmDelta, Role, Segment, SttEvent, Transcript, Voice  # noqa: F401  (re-exported)


# --------------------------------------------------------------------------- contracts
@runtime_checkable
class Backend(Protocol):
    provider: str  # e.g. "llama_cpp", "whisper_cpp", "kokoro", "mock"
    is_mock: bool

    def load(self) -> None:
        """Load the model (idempotent, thread-safe). Raises BackendUnavailable / ModelNotFound."""

    def probe(self) -> None:
        """A tiny real inference proving the engine works (for /ready). Loads if needed."""

    def info(self) -> BackendInfo: ...

    def close(self) -> None: ...


@runtime_checkable
class SttStream(Protocol):
    def feed(self, audio: Audio) -> list[SttEvent]:
        """Push audio (any rate; resampled internally); returns events produced so far."""

    def flush(self) -> list[SttEvent]:
        """End of input: finalise the current utterance (if any speech) and return events."""


@runtime_checkable
class SpeechToText(Backend, Protocol):
    def transcribe(self, audio: Audio, language: str | None = None) -> Transcript: ...

    def stream(self, language: str | None = None) -> SttStream:
        """A live stream. Our recognisers also take keyword overrides for this stream only:
        silence_ms, vad_threshold, prefix_padding_ms, end_of_turn (see WhisperCppSTT.stream)."""
        ...


@runtime_checkable
class LanguageModel(Backend, Protocol):
    def stream_chat(self, messages: list[dict], *, max_tokens: int | None = None,
                    temperature: float | None = None,
                    cancel: threading.Event | None = None) -> Iterator[LlmDelta]:
        """Stream the answer to OpenAI-style messages; stops promptly when `cancel` is set.

        A model that can call tools also takes ``tools=`` (OpenAI function specs) and
        ``tool_choice=`` ("auto" | "none" | "required" | {"type": "function", "function":
        {"name": ...}}) and yields ``tool_call`` deltas (see :func:`supports_tools`); one that
        takes ``stats=`` (a dict) fills it with the engine's counts: prompt_tokens,
        completion_tokens, finish_reason (stop | length | tool_calls | cancelled).

        Optional: ``count_prompt_tokens(messages) -> int`` (the engine's template and tokenizer),
        used for `usage` when the engine reports no counts; see :func:`count_prompt_tokens`."""


def count_prompt_tokens(llm: LanguageModel, messages: list[dict]) -> int:
    """Prompt tokens of `messages` by the model's own count when it has one, else words."""
    own = getattr(llm, "count_prompt_tokens", None)
    if callable(own):
        return int(own(messages))
    return sum(len(str(m.get("content") or "").split()) for m in messages)


@runtime_checkable
class TextToSpeech(Backend, Protocol):
    def voices(self) -> list[Voice]: ...

    def synthesize(self, text: str, *, voice: str | None = None, language: str | None = None,
                   cancel: threading.Event | None = None) -> Iterator[Audio]:
        """Speak `text`; yields audio chunks (one per sentence or smaller). Empty text: nothing."""


@runtime_checkable
class Embedder(Backend, Protocol):
    model_id: str
    dim: int

    def embed(self, texts: Sequence[str], *, kind: Literal["document", "query"] = "document") -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised."""


def takes_kwarg(llm: object, name: str) -> bool:
    """Whether `llm.stream_chat` takes the keyword `name` (a wrapper with ``**kw`` around
    ``backends`` / ``raw`` takes it when every wrapped backend does)."""
    import inspect

    try:
        params = inspect.signature(llm.stream_chat).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return False
    if name in params:
        return True
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        inner = getattr(llm, "backends", None) or ([llm.raw] if hasattr(llm, "raw") else None)
        if inner:
            return all(takes_kwarg(b, name) for b in inner)
    return False


def supports_tools(llm: object) -> bool:
    """Whether `llm.stream_chat` takes ``tools=`` (an attribute ``supports_tools`` overrides)."""
    flag = getattr(llm, "supports_tools", None)
    if isinstance(flag, bool):
        return flag
    return takes_kwarg(llm, "tools")


# --------------------------------------------------------------------------- helper base class
class BaseBackend:
    """Shared bookkeeping: lazy thread-safe load, info(), probe() default."""

    provider = "base"
    is_mock = False
    role = ""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._loaded = False
        self._ready = False
        self._last_error = ""
        self.load_seconds = 0.0

    def load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            t0 = time.perf_counter()
            try:
                self._load()
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                raise
            self.load_seconds = time.perf_counter() - t0
            self._loaded = True

    def _load(self) -> None:  # override
        pass

    def probe(self) -> None:
        self.load()
        try:
            self._probe()
        except Exception as exc:
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise
        self._ready = True

    def _probe(self) -> None:  # override
        pass

    @property
    def endpoint(self) -> str:
        return f"inproc:{self.provider}"

    @property
    def device(self) -> str:
        return "cpu"

    def warnings(self) -> list[str]:
        return []

    def info(self) -> BackendInfo:
        return BackendInfo(provider=self.provider, endpoint=self.endpoint, is_mock=self.is_mock,
                           loaded=self._loaded, ready=self._ready, last_error=self._last_error,
                           device=self.device, warnings=self.warnings())

    def close(self) -> None:
        self._loaded = False
        self._ready = False
