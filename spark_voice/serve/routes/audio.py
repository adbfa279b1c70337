"""POST /v1/audio/transcriptions (multipart upload) and /v1/audio/speech (streamed audio)."""

from __future__ import annotations

import logging
import threading
import time
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ...audio.io import MEDIA_TYPES, StreamEncoder, encoded_rate
from ...audio.limits import decode_bounded
from ...text import guess_language
from ...types import SAMPLE_RATE_STT, Audio
from ..deps import admit, fail, get_state, iterate, peek, read_body, request_id, stt_engine, tts_engine
from ..middleware import BodyTooLarge
from ..openai_compat import OPENAI_VOICES, PCM_DEFAULT_RATE, ApiError, api_error, bad_request, transcription_body
from ..schemas import TRANSCRIPTION_FORMATS, SpeechRequest
from ..state import ServerState

router = APIRouter(tags=["openai"])
log = logging.getLogger("spark_voice.serve")


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request, state: ServerState = Depends(get_state)) -> Response:
    rid = request_id(request)
    t0 = time.perf_counter()
    if "multipart/form-data" not in request.headers.get("content-type", ""):
        raise bad_request("expected multipart/form-data with a `file` field", param="file", code="invalid_body")
    try:
        form = await request.form(max_files=1, max_fields=32)
    except ApiError:
        raise
    except Exception as exc:
        if _is_body_too_large(exc):
            raise
        raise bad_request("cannot parse the multipart form", code="invalid_body") from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise bad_request("missing the audio `file` field", param="file", code="missing_file")
        fmt = str(form.get("response_format") or "json")
        if fmt not in TRANSCRIPTION_FORMATS:
            raise bad_request(f"unknown response_format {fmt!r}; accepted values: "
                              f"{', '.join(TRANSCRIPTION_FORMATS)}", param="response_format")
        if str(form.get("stream") or "false").lower() == "true":
            raise bad_request("stream=true is not supported here; use WS /v1/voice for live transcription",
                              param="stream")
        language: str | None = str(form.get("language") or "").strip().lower() or state.pipeline.language
        name = upload.filename or "upload"
        data = await upload.read()
    finally:
        await form.close()
    if language == "auto":
        language = None
    stt = stt_engine(state)
    # a place in the engine queue first (429 when full): decoding is the heavy part of a bomb
    ticket = admit(state, "stt")
    max_s = float(state.settings.serve_max_audio_s)
    try:
        audio: Audio = await state.runner.call(
            lambda: decode_bounded(data, max_seconds=max_s, sample_rate=SAMPLE_RATE_STT, name=name))
        if audio.duration == 0:
            raise ApiError(400, f"{name}: the audio is empty", param="file", code="invalid_audio")
    except BaseException as exc:
        ticket.abandon()
        if isinstance(exc, Exception):
            raise api_error(exc, "stt") from None
        raise
    t1 = time.perf_counter()
    try:
        tr = await state.runner.gated(ticket, stt.transcribe, audio, language)
    except Exception as exc:
        raise fail(state, "stt", exc) from None
    t_done = time.perf_counter()
    state.http_latency["transcription"].record(rid, {"final": round((t_done - t1) * 1000, 3),
                                                     "end_to_end": round((t_done - t0) * 1000, 3)})
    body, media = transcription_body(tr, fmt, audio.duration)
    if isinstance(body, dict):
        return JSONResponse(body)
    return PlainTextResponse(body, media_type=media)


@router.post("/v1/audio/speech")
async def speech(request: Request, state: ServerState = Depends(get_state)) -> StreamingResponse:
    rid = request_id(request)
    t0 = time.perf_counter()
    req = await read_body(request, state, SpeechRequest)
    settings = state.settings
    fmt = req.response_format or settings.tts_output_format
    text = req.input
    tts = tts_engine(state)
    names = [v.name for v in await state.runner.call(tts.voices)]
    voice = req.voice_name
    if not voice or voice in OPENAI_VOICES and voice not in names:
        voice = settings.tts_default_voice or None  # OpenAI's names mean "the default voice"
    if voice and names and voice not in names:
        raise ApiError(400, f"unknown voice {voice!r}; available voices: {', '.join(names)} "
                            f"(OpenAI voice names select the default voice)", param="voice", code="unknown_voice")
    language = req.language or guess_language(text)
    ticket = admit(state, "tts")
    cancel = threading.Event()
    agen = iterate(ticket, cancel, lambda: tts.synthesize(text, voice=voice, language=language, cancel=cancel),
                   f"speech-{rid}")
    try:
        has_first, first = await peek(agen)
    except Exception as exc:
        await agen.aclose()
        raise fail(state, "tts", exc) from None
    # opus: Ogg pages as the audio comes; wav: a streaming header, then frames; pcm: frames;
    # flac: one piece at the end (libsndfile cannot stream it). Chunks are resampled statefully.
    rate = req.sample_rate
    enc = StreamEncoder(fmt, rate or (PCM_DEFAULT_RATE if fmt == "pcm" else settings.tts_sample_rate))
    t_first = time.perf_counter()

    async def audio_bytes() -> AsyncIterator[bytes]:
        # resampling and encoding (Opus, FLAC) run in worker threads: the loop only moves bytes
        done = False
        try:
            if has_first and first is not None:
                piece = await state.runner.call(enc.add, first)
                if piece:
                    yield piece
                async for chunk in agen:
                    piece = await state.runner.call(enc.add, chunk)
                    if piece:
                        yield piece
            tail = await state.runner.call(enc.finish) if has_first else b""
            if tail:
                yield tail
            done = True
        except Exception as exc:  # mid-stream: the status is sent; log and end the body
            e = fail(state, "tts", exc)
            log.error("speech stream failed", extra={"request_id": rid, "error": e.message})
        finally:
            await agen.aclose()
            if done:
                t_end = time.perf_counter()
                state.http_latency["speech"].record(rid, {
                    "tts_start": round((t_first - t0) * 1000, 3), "end_to_end": round((t_end - t0) * 1000, 3)})

    out_rate = enc.rate or encoded_rate(fmt, rate or 24000)
    media = MEDIA_TYPES[fmt] + (f"; rate={out_rate}; channels=1" if fmt == "pcm" else "")
    return StreamingResponse(audio_bytes(), media_type=media,
                             headers={"X-Sample-Rate": str(out_rate), "X-Audio-Format": fmt})


def _is_body_too_large(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, BodyTooLarge):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
