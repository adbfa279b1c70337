"""Typed exceptions. Every error spark_voice raises on bad input derives from SparkVoiceError."""

from __future__ import annotations


class SparkVoiceError(Exception):
    """Base class of spark-voice errors."""


class ConfigError(SparkVoiceError, ValueError):
    """A setting has an invalid value; the message names the variable and the accepted values."""


class BackendUnavailable(SparkVoiceError, RuntimeError):
    """An engine cannot be used: its Python extra is not installed or its model cannot load."""


class MissingDependency(BackendUnavailable, ImportError):
    """A native binding is not installed; the message names the extra to install (or, with
    ``install``, the exact command, for packages an extra cannot install such as fish-speech)."""

    def __init__(self, module: str, extra: str, detail: str = "", install: str | None = None):
        how = install or f"pip install 'spark-voice[{extra}]'"
        msg = (f"{module} is not installed (or failed to import{': ' + detail if detail else ''}); "
               f"install it with: {how}")
        super().__init__(msg)
        self.module, self.extra = module, extra


class EngineLoadError(BackendUnavailable):
    """An engine failed while loading its model (e.g. inside the engine's own worker thread)."""


class EngineLoadTimeout(EngineLoadError, TimeoutError):
    """An engine did not finish loading within its configured time (e.g. TTS_FISH_LOAD_TIMEOUT)."""


class ModelNotFound(BackendUnavailable, FileNotFoundError):
    """A configured model file does not exist."""


class AudioError(SparkVoiceError, ValueError):
    """Audio could not be decoded or is unusable; the message names the file and the reason."""


class AudioTooLong(AudioError):
    """Audio longer than a configured limit (e.g. SERVE_MAX_AUDIO_S); found before or while decoding."""


class InputTooLarge(SparkVoiceError, ValueError):
    """A request exceeds a size limit (characters, inputs, nesting); the message names the setting."""

    def __init__(self, msg: str, param: str | None = None):
        super().__init__(msg)
        self.param = param


class VoiceError(SparkVoiceError, ValueError):
    """Unknown or invalid TTS voice; the message lists the available voices."""


class ContextOverflow(SparkVoiceError, ValueError):
    """A single prompt does not fit in the LLM context window."""


class IndexError_(SparkVoiceError, RuntimeError):
    """A RAG index is missing, corrupt, locked or built with another embedding model."""


RagIndexError = IndexError_


class ToolError(SparkVoiceError, ValueError):
    """A tool definition or a tool request is invalid (bad name, schema, tool_choice ...)."""


class Cancelled(SparkVoiceError):
    """A turn was cancelled (barge-in or caller)."""


class Overloaded(SparkVoiceError):
    """An engine queue is full; retry later."""

    def __init__(self, msg: str, retry_after: float = 1.0):
        super().__init__(msg)
        self.retry_after = retry_after
