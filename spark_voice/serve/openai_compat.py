"""OpenAI wire shapes: the error object, exception -> HTTP status mapping, transcription formats,
chat chunks, and incremental audio encoders for /v1/audio/speech. No FastAPI import here."""

from __future__ import annotations

import time
from typing import Any

from ..errors import (
    AudioError,
    AudioTooLong,
    BackendUnavailable,
    Cancelled,
    ConfigError,
    ContextOverflow,
    InputTooLarge,
    Overloaded,
    RagIndexError,
    SparkVoiceError,
    VoiceError,
)

SPEECH_FORMATS = ("opus", "wav", "flac", "pcm")
PCM_DEFAULT_RATE = 24_000  # what OpenAI clients assume for response_format=pcm
# OpenAI's built-in voice names: accepted as "the default voice" so unchanged clients work.
OPENAI_VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer",
                 "verse", "marin", "cedar"}


class ApiError(Exception):
    """An HTTP error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", *,
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def api_error(exc: BaseException, stage: str = "") -> ApiError:
    """Map an exception to the HTTP error the client sees. Input errors -> 4xx, engines -> 503."""
    where = f"{stage}: " if stage else ""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, Overloaded):
        ra = str(int(max(1, round(exc.retry_after))))
        return ApiError(429, str(exc), "rate_limit_error", code="engine_overloaded", headers={"Retry-After": ra})
    if isinstance(exc, AudioTooLong):
        return ApiError(413, str(exc), param="file", code="audio_too_long")
    if isinstance(exc, InputTooLarge):
        return ApiError(413, str(exc), param=exc.param, code="input_too_large")
    if isinstance(exc, AudioError):
        return ApiError(400, str(exc), param="file", code="invalid_audio")
    if isinstance(exc, VoiceError):
        return ApiError(400, str(exc), param="voice", code="unknown_voice")
    if isinstance(exc, ContextOverflow):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, ConfigError):
        return ApiError(400, str(exc), code="invalid_value")
    if isinstance(exc, Cancelled):
        return ApiError(503, f"{where}request cancelled: {exc}", "server_error", code="cancelled")
    if isinstance(exc, RagIndexError):
        return ApiError(503, f"{where}{exc}", "server_error", code="rag_index_error")
    if isinstance(exc, BackendUnavailable):
        return ApiError(503, f"{where}engine unavailable: {exc}", "server_error", code="engine_unavailable",
                        headers={"Retry-After": "5"})
    if isinstance(exc, SparkVoiceError):
        return ApiError(400, str(exc), code="invalid_request")
    return ApiError(503, f"{where}engine failed: {type(exc).__name__}: {exc}", "server_error",
                    code="engine_error", headers={"Retry-After": "5"})


# ------------------------------------------------------------------ transcriptions
def _ts(seconds: float, sep: str) -> str:
    ms = int(round(max(0.0, seconds) * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def transcription_body(tr, fmt: str, duration: float) -> tuple[Any, str]:
    """(body, media type) of a Transcript in OpenAI's response_format."""
    segs = tr.segments or ([] if not tr.text else [_Seg(0.0, duration, tr.text)])
    if fmt == "text":
        return tr.text + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        lines = [f"{i + 1}\n{_ts(s.start, ',')} --> {_ts(s.end, ',')}\n{s.text.strip()}\n" for i, s in enumerate(segs)]
        return "\n".join(lines), "text/plain; charset=utf-8"
    if fmt == "vtt":
        lines = ["WEBVTT\n"] + [f"{_ts(s.start, '.')} --> {_ts(s.end, '.')}\n{s.text.strip()}\n" for s in segs]
        return "\n".join(lines), "text/vtt; charset=utf-8"
    usage = {"type": "duration", "seconds": round(duration, 3)}
    if fmt == "verbose_json":
        return {"task": "transcribe", "language": tr.language, "duration": round(duration, 3), "text": tr.text,
                "segments": [{"id": i, "seek": 0, "start": round(s.start, 3), "end": round(s.end, 3),
                              "text": s.text, "tokens": [], "temperature": 0.0, "avg_logprob": 0.0,
                              "compression_ratio": 1.0, "no_speech_prob": 0.0} for i, s in enumerate(segs)],
                "usage": usage}, "application/json"
    return {"text": tr.text, "usage": usage}, "application/json"


class _Seg:
    def __init__(self, start: float, end: float, text: str) -> None:
        self.start, self.end, self.text = start, end, text


# ------------------------------------------------------------------ chat
def chat_chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None,
               **extra: Any) -> dict[str, Any]:
    d = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
         "system_fingerprint": None,
         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    d.update(extra)
    return d


def chat_completion(cid: str, model: str, content: str, finish: str, usage: dict[str, int],
                    reasoning: str | None = None, **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning:
        msg["reasoning_content"] = reasoning
    d = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
         "system_fingerprint": None,
         "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": finish}], "usage": usage}
    d.update(extra)
    return d
