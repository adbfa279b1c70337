"""Provider name -> backend class (imported lazily), the fallback wrapper and the TTS language router.

A fallback is just another backend wrapping several: it tries them in order, counts how often it
had to move on and remembers why, so that /health can warn.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from ..errors import AudioError, BackendUnavailable, Cancelled, ConfigError, ContextOverflow, ToolError, VoiceError
from ..types import PROVIDERS, Audio, BackendInfo, LlmDelta, Role, Transcript, Voice
from .base import BaseBackend, SttStream, supports_tools

if TYPE_CHECKING:
    from ..config import Settings

T = TypeVar("T")

log = logging.getLogger("spark_voice.backends")


# Errors caused by the input, not by the engine: never a reason to fall back.
USER_ERRORS = (AudioError, VoiceError, ContextOverflow, Cancelled, ConfigError, ToolError)


def backend_class(role: Role, provider: str) -> type[Any]:
    try:
        target = PROVIDERS[role][provider]
    except KeyError:
        raise ConfigError(f"unknown {role} provider {provider!r}; accepted values: "
                          f"{', '.join(PROVIDERS.get(role, {}))}") from None
    module, cls = target.split(":")
    mod = importlib.import_module(f"{__package__}.{module}")
    return getattr(mod, cls)


def create_backend(role: Role, provider: str, settings: Settings) -> Any:
    return backend_class(role, provider).from_settings(settings)


def build(role: Role, settings: Settings) -> Any:
    """The backend of a role as configured: provider(s), router for TTS lists, fallback chain."""
    providers, fallbacks = settings.providers(role)

    def one(names: Sequence[str]) -> Any:
        made = [create_backend(role, n, settings) for n in names]
        if role == "tts" and len(made) > 1:
            return TtsRouter(made)
        return made[0]

    primary = one(providers)
    if not fallbacks:
        return primary
    return Fallback(role, [primary, one(fallbacks)])


class Fallback(BaseBackend):
    """Try each backend in order; count and explain every move to the next one.

    ``Fallback(role, backends)`` returns the subclass that implements the Protocol of that role
    (:class:`SttFallback`, :class:`LlmFallback`, :class:`TtsFallback`, :class:`EmbedderFallback`);
    nothing else of the wrapped engines is forwarded.
    """

    role: Role

    def __new__(cls, role: Role, backends: Sequence[Any]) -> "Fallback":
        if cls is Fallback:
            cls = _FALLBACKS[role]
        return super().__new__(cls)

    def __init__(self, role: Role, backends: Sequence[Any]) -> None:
        super().__init__()
        if len(backends) < 2:
            raise ValueError("a fallback needs at least two backends")
        self.role = role
        self.backends = list(backends)
        self.primary = self.backends[0]  # the configured provider, reported even after a move
        self.fallback_count = 0
        self.last_reason = ""
        self.active = self.backends[0]
        self._count_lock = threading.Lock()
        self.is_mock = bool(getattr(self.primary, "is_mock", False))

    @property
    def provider(self) -> str:  # type: ignore[override]
        return str(self.primary.provider)

    @property
    def endpoint(self) -> str:
        return str(getattr(self.primary, "endpoint", f"inproc:{self.provider}"))

    def _fell_back(self, backend: Any, exc: BaseException, op: str) -> None:
        with self._count_lock:
            self.fallback_count += 1
            self.last_reason = f"{backend.provider} {op} failed: {type(exc).__name__}: {exc}"
        log.warning("fallback", extra={"role": self.role, "reason": self.last_reason,
                                       "fallback_count": self.fallback_count})

    # -- load / probe: a primary that cannot load is skipped for good (counted once)
    def _load(self) -> None:
        errors = []
        for b in list(self.backends):
            try:
                b.load()
                self.active = b
                return
            except USER_ERRORS:
                raise
            except Exception as exc:
                errors.append(exc)
                if b is not self.backends[-1]:
                    self._fell_back(b, exc, "load")
                    self.backends.remove(b)
                    self.backends.append(b)  # keep it last: a later restart may fix it
        raise BackendUnavailable("; ".join(str(e) for e in errors))

    def _probe(self) -> None:
        self._call("probe", lambda b: b.probe())

    def _call(self, op: str, fn: Callable[[Any], T]) -> T:
        self.load()
        last: BaseException | None = None
        for i, b in enumerate(self.backends):
            try:
                result = fn(b)
                self.active = b
                return result
            except USER_ERRORS:
                raise
            except Exception as exc:
                last = exc
                if i + 1 < len(self.backends):
                    self._fell_back(b, exc, op)
        assert last is not None
        raise last

    def _stream(self, op: str, fn: Callable[[Any], Iterator[T]]) -> Iterator[T]:
        """Fall back only while nothing was produced yet; a failure mid-stream is raised."""
        self.load()
        for i, b in enumerate(self.backends):
            produced = False
            try:
                for item in fn(b):
                    produced = True
                    self.active = b
                    yield item
                return
            except USER_ERRORS:
                raise
            except Exception as exc:
                if produced or i + 1 == len(self.backends):
                    raise
                self._fell_back(b, exc, op)

    def info(self) -> BackendInfo:
        inf = self.primary.info()  # provider, endpoint, device of the configured engine
        inf.fallback_count = self.fallback_count
        inf.loaded, inf.ready = self._loaded, self._ready
        inf.is_mock = getattr(self.active, "is_mock", False)
        if self.fallback_count:
            inf.warnings.append(f"{self.role}: fell back {self.fallback_count}x to "
                                f"{self.active.provider}; last reason: {self.last_reason}")
        inf.last_error = self.last_reason
        return inf

    def close(self) -> None:
        for b in self.backends:
            b.close()
        super().close()


class SttFallback(Fallback):
    """SpeechToText over a fallback chain."""

    def transcribe(self, audio: Audio, language: str | None = None) -> Transcript:
        return self._call("transcribe", lambda b: b.transcribe(audio, language))

    def stream(self, language: str | None = None, **options: Any) -> SttStream:
        return self._call("stream", lambda b: b.stream(language, **options))


class LlmFallback(Fallback):
    """LanguageModel over a fallback chain."""

    def stream_chat(self, messages: list[dict[str, Any]], **kw: Any) -> Iterator[LlmDelta]:
        return self._stream("stream_chat", lambda b: b.stream_chat(messages, **kw))

    def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        return int(self.active.count_prompt_tokens(messages))

    @property
    def supports_tools(self) -> bool:
        return all(supports_tools(b) for b in self.backends)

    @property
    def tool_format(self) -> str:
        return str(getattr(self.active, "tool_format", "") or "")


class TtsFallback(Fallback):
    """TextToSpeech over a fallback chain (voices: the union, first engine wins a name)."""

    def voices(self) -> list[Voice]:
        seen, out = set(), []
        for b in self.backends:
            try:
                for v in b.voices():
                    if v.name not in seen:
                        seen.add(v.name)
                        out.append(v)
            except Exception:
                continue
        return out

    def synthesize(self, text: str, **kw: Any) -> Iterator[Audio]:
        return self._stream("synthesize", lambda b: b.synthesize(text, **kw))

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.active, "sample_rate", 0))


class EmbedderFallback(Fallback):
    """Embedder over a fallback chain (model_id and dim: the active engine's)."""

    def embed(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return self._call("embed", lambda b: b.embed(texts, **kw))

    @property
    def model_id(self) -> str:
        return str(self.active.model_id)

    @property
    def dim(self) -> int:
        return int(self.active.dim)


_FALLBACKS: dict[Role, type[Fallback]] = {"stt": SttFallback, "llm": LlmFallback, "tts": TtsFallback,
                                          "embedding": EmbedderFallback}


def unwrap(backend: T) -> T:
    """The engine that serves a backend's calls now: a Fallback's active backend (the configured
    one until it fails), any other backend itself. For code that needs an engine's own extras,
    such as the benchmark's raw-floor hooks; it does not unwrap a TtsRouter (use its ``pick``)."""
    return backend.active if isinstance(backend, Fallback) else backend


class TtsRouter(BaseBackend):
    """Several TTS engines as one: a request goes to the first engine whose voices speak its
    language (or that owns the requested voice)."""

    role = "tts"

    def __init__(self, backends: Sequence[Any]) -> None:
        super().__init__()
        self.backends = list(backends)
        self.is_mock = all(getattr(b, "is_mock", False) for b in self.backends)

    @property
    def provider(self) -> str:  # type: ignore[override]
        return ",".join(b.provider for b in self.backends)

    @property
    def endpoint(self) -> str:
        return " | ".join(getattr(b, "endpoint", b.provider) for b in self.backends)

    def _load(self) -> None:
        errors = []
        for b in self.backends:
            try:
                b.load()
            except Exception as exc:
                errors.append(f"{b.provider}: {exc}")
        if len(errors) == len(self.backends):
            raise BackendUnavailable("; ".join(errors))
        self._errors = errors

    def _usable(self) -> list[Any]:
        self.load()
        return [b for b in self.backends if b.info().loaded]

    def _probe(self) -> None:
        for b in self._usable():
            b.probe()

    def voices(self) -> list[Voice]:
        return [v for b in self._usable() for v in b.voices()]

    def pick(self, voice: str | None, language: str | None) -> Any:
        usable = self._usable()
        if voice:
            for b in usable:
                if any(v.name == voice for v in b.voices()):
                    return b
            names = ", ".join(v.name for b in usable for v in b.voices())
            raise VoiceError(f"unknown voice {voice!r}; available voices: {names}")
        if language:
            for b in usable:
                if any(v.language == language for v in b.voices()):
                    return b
        return usable[0]

    def synthesize(self, text: str, *, voice: str | None = None, language: str | None = None,
                   cancel: threading.Event | None = None) -> Iterator[Audio]:
        b = self.pick(voice, language)
        return b.synthesize(text, voice=voice, language=language, cancel=cancel)

    @property
    def sample_rate(self) -> int:
        return getattr(self.backends[0], "sample_rate", 0)

    def warnings(self) -> list[str]:
        return [w for b in self.backends for w in b.info().warnings] + list(getattr(self, "_errors", []))

    def close(self) -> None:
        for b in self.backends:
            b.close()
        super().close()

