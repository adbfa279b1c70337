"""Provider name -> backend class (imported lazily), the fallback wrapper and the TTS language router.

A fallback is just another backend wrapping several: it tries them in order, counts how often it
had to move on and remembers why, so that /health can warn.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any, Callable, Iterator, Sequence

from ..errors import (AudioError, BackendUnavailable, Cancelled, ConfigError, ContextOverflow,
                      SparkVoiceError, VoiceError)
from .base import Audio, BackendInfo, BaseBackend, Voice

log = logging.getLogger("spark_voice.backends")

# stage -> provider -> "module:Class" (relative to spark_voice.backends)
PROVIDERS: dict[str, dict[str, str]] = {
    "llm": {"llama_cpp": "llm_llama_cpp:LlamaCppLLM", "mock": "mock:MockLLM"},
    "stt": {"whisper_cpp": "stt_whisper_cpp:WhisperCppSTT", "mock": "mock:MockSTT"},
    "tts": {"fish": "tts_fish:FishTTS", "kokoro": "tts_kokoro:KokoroTTS", "piper": "tts_piper:PiperTTS",
            "mock": "mock:MockTTS"},
    "embedding": {"llama_cpp": "embed_llama_cpp:LlamaCppEmbedder", "mock": "mock:MockEmbedder"},
}

# Errors caused by the input, not by the engine: never a reason to fall back.
USER_ERRORS = (AudioError, VoiceError, ContextOverflow, Cancelled, ConfigError)


def backend_class(stage: str, provider: str) -> type:
    try:
        target = PROVIDERS[stage][provider]
    except KeyError:
        raise ConfigError(f"unknown {stage} provider {provider!r}; accepted values: "
                          f"{', '.join(PROVIDERS.get(stage, {}))}") from None
    module, cls = target.split(":")
    mod = importlib.import_module(f"{__package__}.{module}")
    return getattr(mod, cls)


def create_backend(stage: str, provider: str, settings) -> Any:
    return backend_class(stage, provider).from_settings(settings)


def build(stage: str, settings) -> Any:
    """The backend of a stage as configured: provider(s), router for TTS lists, fallback chain."""
    providers, fallbacks = settings.providers(stage)

    def one(names: Sequence[str]) -> Any:
        made = [create_backend(stage, n, settings) for n in names]
        if stage == "tts" and len(made) > 1:
            return TtsRouter(made)
        return made[0]

    primary = one(providers)
    if not fallbacks:
        return primary
    return Fallback(stage, [primary, one(fallbacks)])


class Fallback(BaseBackend):
    """Try each backend in order; count and explain every move to the next one."""

    def __init__(self, role: str, backends: Sequence[Any]) -> None:
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
        return self.primary.provider

    @property
    def endpoint(self) -> str:
        return getattr(self.primary, "endpoint", f"inproc:{self.provider}")

    def _fell_back(self, backend: Any, exc: BaseException, op: str) -> None:
        with self._count_lock:
            self.fallback_count += 1
            self.last_reason = f"{backend.provider} {op} failed: {type(exc).__name__}: {exc}"
        log.warning("fallback", extra={"stage": self.role, "reason": self.last_reason,
                                       "fallback_count": self.fallback_count})

    def _candidates(self) -> list[Any]:
        return self.backends

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

    def _call(self, op: str, fn: Callable[[Any], Any]) -> Any:
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

    def _stream(self, op: str, fn: Callable[[Any], Iterator[Any]]) -> Iterator[Any]:
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

    # -- the four contracts, forwarded
    def transcribe(self, audio: Audio, language: str | None = None):
        return self._call("transcribe", lambda b: b.transcribe(audio, language))

    def stream(self, language: str | None = None):
        return self._call("stream", lambda b: b.stream(language))

    def stream_chat(self, messages, **kw):
        return self._stream("stream_chat", lambda b: b.stream_chat(messages, **kw))

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

    def synthesize(self, text: str, **kw):
        return self._stream("synthesize", lambda b: b.synthesize(text, **kw))

    def embed(self, texts, **kw):
        return self._call("embed", lambda b: b.embed(texts, **kw))

    @property
    def model_id(self) -> str:
        return self.active.model_id

    @property
    def dim(self) -> int:
        return self.active.dim

    @property
    def sample_rate(self) -> int:
        return getattr(self.active, "sample_rate", 0)

    def __getattr__(self, name: str) -> Any:  # engine-specific extras (is_harmony, n_ctx, ...)
        if name.startswith("_") or name == "backends":
            raise AttributeError(name)
        return getattr(self.active, name)

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


def is_spark_voice_error(exc: BaseException) -> bool:
    return isinstance(exc, SparkVoiceError)
