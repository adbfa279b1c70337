"""The FastAPI app: /health, /ready, /metrics, OpenAI-compatible /v1 routes, WS /v1/voice.

    from spark_voice.serve.app import create_app
    app = create_app()                      # settings from .env.default / .env / environment
    app = create_app(settings, pipeline)    # tests: mock backends with delays, failing providers ...

Blocking engine calls run in worker threads behind one bounded queue per engine (engines.py);
the event loop only parses requests and moves bytes, so /health answers while models generate.
Shapes of every body are documented in spark_voice/serve/README.md.
"""


import base64
import contextlib
import json
import logging
import threading
import time
from typing import Any

import numpy as np

from ..events import new_request_id
from .openai_compat import (OPENAI_VOICES, PCM_DEFAULT_RATE, SPEECH_FORMATS, ApiError, api_error,
                            bad_request, chat_chunk, chat_completion, message_text, transcription_body)
from .state import ServerState

log = logging.getLogger("spark_voice.serve")

TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_SPEECH_CHARS = 4096


def create_app(settings: Any = None, pipeline: Any = None, *, embedder: Any = None, load: bool = True):
    """Build the app. settings: a Settings (default: Settings.load()); pipeline: a VoicePipeline
    (default: VoicePipeline.from_settings(settings)); embedder: the /v1/embeddings backend (default:
    the pipeline's, else the configured one). load: load and probe the models in the background at
    start-up (the server answers /health at once; /ready turns 200 when every provider passed)."""
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

    from ..config import Settings
    from ..pipeline import VoicePipeline
    from .middleware import ApiKeyAuth, BodyLimit, RequestContext

    own = pipeline is None
    if settings is None:
        settings = pipeline.settings if pipeline is not None else Settings.load()
    if pipeline is None:
        pipeline = VoicePipeline.from_settings(settings)
    state = ServerState(settings, pipeline, embedder=embedder, own_pipeline=own)
    try:
        from .metrics import Metrics

        metrics = Metrics(state)
    except ImportError:
        log.warning("prometheus-client is not installed; /metrics is disabled (pip install 'spark-voice[serve]')")
        metrics = None
    state.attach_metrics(metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        log.info("server starting", extra={"profile": settings.profile, "providers":
                                           {k: getattr(b, "provider", "?") for k, b in state.backends.items()}})
        for w in pipeline.warnings:
            log.warning(w)
        if load:
            state.start_loading()
        else:
            state.lazy()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="spark-voice", version=_version(), lifespan=lifespan,
                  description="Local voice assistant server with OpenAI-compatible routes "
                              "(see spark_voice/serve/README.md).")
    app.state.sv = state
    # outermost last: RequestContext -> ApiKeyAuth -> BodyLimit -> routes
    app.add_middleware(BodyLimit, limit=int(settings.serve_max_body_mb * 1024 * 1024))
    app.add_middleware(ApiKeyAuth, key=settings.serve_api_key)
    app.add_middleware(RequestContext, state=state)

    def err_response(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return err_response(exc)

    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return err_response(ApiError(exc.status_code, str(exc.detail), code=code, headers=exc.headers))

    def rid_of(request) -> str:
        return request.scope.get("state", {}).get("request_id") or new_request_id()

    def backend(stage: str) -> Any:
        b = state.backends.get(stage)
        if b is None:
            raise ApiError(503, f"no {stage} provider is configured", "server_error", code="not_configured")
        if state.loading(stage):
            raise ApiError(503, f"{stage} model is still loading; retry shortly (GET /ready)", "server_error",
                           code="loading", headers={"Retry-After": "5"})
        return b

    def fail(stage: str, exc: BaseException) -> ApiError:
        e = api_error(exc, stage)
        if e.status >= 500 and e.code != "cancelled":
            state.runtime_errors[stage] = e.message
            log.error("engine error", extra={"stage": stage, "error": e.message})
        return e

    async def json_body(request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object", code="invalid_json")
        return body

    def model_ids() -> dict[str, str]:
        s = settings
        out = {}
        for stage, b in state.backends.items():
            if getattr(b, "is_mock", False):
                out[stage] = f"mock-{stage}"
            elif stage == "llm":
                out[stage] = _stem(s.llm_model)
            elif stage == "stt":
                out[stage] = _stem(s.stt_model)
            elif stage == "embedding":
                out[stage] = _stem(s.embedding_model)
            else:
                out[stage] = "tts-" + str(getattr(b, "provider", "tts")).replace(",", "+")
        return out

    async def peek(agen) -> tuple[bool, Any]:
        """Run a stream up to its first item so that errors become a proper status code."""
        try:
            return True, await agen.__anext__()
        except StopAsyncIteration:
            return False, None

    # ------------------------------------------------------------------ health
    @app.get("/health", tags=["health"])
    async def health():
        return JSONResponse(state.body())

    @app.get("/ready", tags=["health"])
    async def ready():
        body = state.body()
        return JSONResponse(body, status_code=200 if body["ready"] else 503,
                            headers=None if body["ready"] else {"Retry-After": "5"})

    @app.get("/metrics", tags=["health"])
    async def metrics_route():
        if state.metrics is None:
            raise ApiError(503, "prometheus-client is not installed (pip install 'spark-voice[serve]')",
                           "server_error", code="not_configured")
        data, ctype = state.metrics.render()
        return Response(data, media_type=ctype)

    @app.get("/v1/latency", tags=["health"])
    async def latency():
        body = state.pipeline.latency.summary()
        body["source"] = "voice turns (WS /v1/voice and pipeline turns)"
        body["http"] = {k: r.summary() for k, r in state.http_latency.items()}
        return JSONResponse(body)

    # ------------------------------------------------------------------ models
    @app.get("/v1/models", tags=["openai"])
    async def list_models():
        created = int(state.started)
        data = [{"id": mid, "object": "model", "created": created, "owned_by": "spark-voice",
                 "spark_voice": {"stage": stage, "provider": getattr(state.backends[stage], "provider", "?"),
                                 "is_mock": bool(getattr(state.backends[stage], "is_mock", False))}}
                for stage, mid in model_ids().items()]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/v1/models/{model_id}", tags=["openai"])
    async def get_model(model_id: str):
        for stage, mid in model_ids().items():
            if mid == model_id:
                return JSONResponse({"id": mid, "object": "model", "created": int(state.started),
                                     "owned_by": "spark-voice"})
        raise ApiError(404, f"model {model_id!r} not found; available: {', '.join(model_ids().values())}",
                       param="model", code="model_not_found")

    # ------------------------------------------------------------------ transcriptions
    @app.post("/v1/audio/transcriptions", tags=["openai"])
    async def transcriptions(request: Request):
        from ..audio.io import load_audio
        from ..backends.base import SAMPLE_RATE_STT

        rid = rid_of(request)
        t0 = time.perf_counter()
        ctype = request.headers.get("content-type", "")
        if "multipart/form-data" not in ctype:
            raise bad_request("expected multipart/form-data with a `file` field", param="file", code="invalid_body")
        try:
            form = await request.form(max_files=1, max_fields=32)
        except ApiError:
            raise
        except Exception as exc:
            if _is_body_too_large(exc):
                raise
            raise bad_request(f"cannot parse the form: {exc}", code="invalid_body") from None
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
            language = str(form.get("language") or "").strip().lower() or state.pipeline.language
            name = getattr(upload, "filename", None) or "upload"
            data = await upload.read()
        finally:
            await form.close()
        if language == "auto":
            language = None
        stt = backend("stt")
        try:
            audio = await state.runner.call(lambda: load_audio(bytes(data), SAMPLE_RATE_STT, name=name))
        except Exception as exc:
            raise api_error(exc, "stt") from None
        if audio.duration == 0:
            raise ApiError(400, f"{name}: the audio is empty", param="file", code="invalid_audio")
        ticket = _admit(state, "stt")
        t1 = time.perf_counter()
        try:
            tr = await state.runner.gated(ticket, stt.transcribe, audio, language)
        except Exception as exc:
            raise fail("stt", exc) from None
        t_done = time.perf_counter()
        state.http_latency["transcription"].record(rid, {"final": round((t_done - t1) * 1000, 3),
                                                         "end_to_end": round((t_done - t0) * 1000, 3)})
        body, media = transcription_body(tr, fmt, audio.duration)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=media)

    # ------------------------------------------------------------------ speech
    @app.post("/v1/audio/speech", tags=["openai"])
    async def speech(request: Request):
        from ..text import guess_language

        rid = rid_of(request)
        t0 = time.perf_counter()
        body = await json_body(request)
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise bad_request("`input` must be a non-empty string", param="input")
        if len(text) > MAX_SPEECH_CHARS:
            raise bad_request(f"`input` is longer than {MAX_SPEECH_CHARS} characters", param="input")
        fmt = body.get("response_format") or settings.tts_output_format
        if fmt not in SPEECH_FORMATS:
            raise bad_request(f"unsupported response_format {fmt!r}; accepted values: {', '.join(SPEECH_FORMATS)}",
                              param="response_format", code="unsupported_format")
        if body.get("stream_format") not in (None, "audio"):
            raise bad_request("only stream_format 'audio' is supported (the audio is streamed as it is made)",
                              param="stream_format")
        rate = body.get("sample_rate")
        if rate is not None and (not isinstance(rate, int) or not 8000 <= rate <= 192000):
            raise bad_request("sample_rate must be an integer between 8000 and 192000", param="sample_rate")
        voice = body.get("voice")
        if isinstance(voice, dict):
            voice = voice.get("id")
        if voice is not None and not isinstance(voice, str):
            raise bad_request("`voice` must be a string or {\"id\": ...}", param="voice")
        tts = backend("tts")
        names = [v.name for v in await state.runner.call(tts.voices)]
        if not voice or voice in OPENAI_VOICES and voice not in names:
            voice = settings.tts_default_voice or None  # OpenAI's names mean "the default voice"
        if voice and names and voice not in names:
            raise ApiError(400, f"unknown voice {voice!r}; available voices: {', '.join(names)} "
                                f"(OpenAI voice names select the default voice)", param="voice", code="unknown_voice")
        language = body.get("language") or guess_language(text)
        ticket = _admit(state, "tts")
        cancel = threading.Event()
        agen = _iterate(state, ticket, cancel, lambda: tts.synthesize(text, voice=voice, language=language,
                                                                       cancel=cancel), f"speech-{rid}")
        try:
            has_first, first = await peek(agen)
        except Exception as exc:
            await agen.aclose()
            raise fail("tts", exc) from None
        from ..audio.io import StreamEncoder

        # opus: Ogg pages as the audio comes; wav: a streaming header, then frames; pcm: frames;
        # flac: one piece at the end (libsndfile cannot stream it). Chunks are resampled statefully.
        enc = StreamEncoder(fmt, rate or (PCM_DEFAULT_RATE if fmt == "pcm" else settings.tts_sample_rate))
        t_first = time.perf_counter()

        async def audio_bytes():
            done = False
            try:
                if has_first:
                    piece = enc.add(first)
                    if piece:
                        yield piece
                    async for chunk in agen:
                        piece = enc.add(chunk)
                        if piece:
                            yield piece
                tail = enc.finish() if has_first else b""
                if tail:
                    yield tail
                done = True
            except Exception as exc:  # mid-stream: the status is sent; log and end the body
                e = fail("tts", exc)
                log.error("speech stream failed", extra={"request_id": rid, "error": e.message})
            finally:
                await agen.aclose()
                if done:
                    t_end = time.perf_counter()
                    state.http_latency["speech"].record(rid, {
                        "tts_start": round((t_first - t0) * 1000, 3), "end_to_end": round((t_end - t0) * 1000, 3)})

        from ..audio.io import MEDIA_TYPES, encoded_rate

        out_rate = enc.rate or encoded_rate(fmt, rate or 24000)
        media = MEDIA_TYPES[fmt] + (f"; rate={out_rate}; channels=1" if fmt == "pcm" else "")
        return StreamingResponse(audio_bytes(), media_type=media,
                                 headers={"X-Sample-Rate": str(out_rate), "X-Audio-Format": fmt})

    # ------------------------------------------------------------------ chat
    @app.post("/v1/chat/completions", tags=["openai"])
    async def chat_completions(request: Request):
        rid = rid_of(request)
        t0 = time.perf_counter()
        body = await json_body(request)
        messages = _messages(body.get("messages"))
        if body.get("n") not in (None, 1):
            raise bad_request("only n=1 is supported", param="n")
        if body.get("tools") or body.get("functions"):
            raise bad_request("tools / function calling are not supported by this server", param="tools")
        if body.get("stop"):
            raise bad_request("`stop` sequences are not supported by this server", param="stop")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                       or max_tokens < 1):
            raise bad_request("max_tokens must be a positive integer", param="max_tokens")
        temperature = body.get("temperature")
        if temperature is not None and (not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2):
            raise bad_request("temperature must be a number between 0 and 2", param="temperature")
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        llm = backend("llm")
        model = model_ids().get("llm", "llm")
        hits_out: list[dict] = []
        warn_headers: dict[str, str] = {}
        rag = body.get("rag")
        if rag is None:
            rag = request.headers.get("x-spark-voice-rag", "").lower() in ("1", "true", "on", "yes")
        if rag:
            messages, hits_out, warning = await _with_retrieval(state, messages)
            if warning:
                warn_headers["X-Spark-Voice-Warning"] = warning
        emit_analysis = bool(settings.llm_emit_analysis)
        kw = {"max_tokens": max_tokens, "temperature": None if temperature is None else float(temperature)}
        ticket = _admit(state, "llm")
        cancel = threading.Event()
        agen = _iterate(state, ticket, cancel, lambda: llm.stream_chat(messages, cancel=cancel, **kw), f"chat-{rid}")
        try:
            has_first, first = await peek(agen)
        except Exception as exc:
            await agen.aclose()
            raise fail("llm", exc) from None
        cid = f"chatcmpl-{rid}"
        created = int(time.time())
        prompt_tokens = await state.runner.call(_count_tokens, llm, messages) if (include_usage or not stream) else 0

        def record(t_first_token: float | None) -> None:
            lat = {"end_to_end": round((time.perf_counter() - t0) * 1000, 3)}
            if t_first_token is not None:
                lat["first_token"] = round((t_first_token - t0) * 1000, 3)
            state.http_latency["chat"].record(rid, lat)

        if not stream:
            content, reasoning, n = [], [], 0
            first_final = None
            try:
                async for d in _prepend(has_first, first, agen):
                    n += 1
                    if d.channel == "final":
                        if first_final is None and d.text:
                            first_final = time.perf_counter()
                        content.append(d.text)
                    else:
                        reasoning.append(d.text)
            except Exception as exc:
                raise fail("llm", exc) from None
            finally:
                await agen.aclose()
            record(first_final)
            finish = "length" if max_tokens is not None and n >= max_tokens else "stop"
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
            extra = {"rag": {"hits": hits_out}} if rag else {}
            return JSONResponse(chat_completion(cid, model, "".join(content).strip(), finish, usage,
                                                "".join(reasoning) if emit_analysis else None, **extra),
                                headers=warn_headers)

        async def sse():
            n = 0
            first_final = None
            finished = False
            try:
                extra = {"rag": {"hits": hits_out}} if rag else {}
                yield _sse(chat_chunk(cid, created, model, {"role": "assistant", "content": ""}, **extra))
                async for d in _prepend(has_first, first, agen):
                    n += 1
                    if d.channel == "final":
                        if not d.text:
                            continue
                        if first_final is None:
                            first_final = time.perf_counter()
                        yield _sse(chat_chunk(cid, created, model, {"content": d.text}))
                    elif emit_analysis and d.text:
                        yield _sse(chat_chunk(cid, created, model, {"reasoning_content": d.text}))
                finish = "length" if max_tokens is not None and n >= max_tokens else "stop"
                yield _sse(chat_chunk(cid, created, model, {}, finish))
                if include_usage:
                    u = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
                    yield _sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                "choices": [], "usage": u})
                yield "data: [DONE]\n\n"
                finished = True
            except Exception as exc:  # after the 200 went out: an error event in OpenAI's shape
                yield _sse(fail("llm", exc).body())
            finally:
                await agen.aclose()
                if finished:
                    record(first_final)

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **warn_headers})

    # ------------------------------------------------------------------ embeddings
    @app.post("/v1/embeddings", tags=["openai"])
    async def embeddings(request: Request):
        body = await json_body(request)
        inp = body.get("input")
        if isinstance(inp, str):
            texts = [inp]
        elif isinstance(inp, list) and inp and all(isinstance(t, str) for t in inp):
            texts = inp
        elif isinstance(inp, list) and inp and all(isinstance(t, (int, list)) for t in inp):
            raise bad_request("token-id input is not supported; send strings", param="input")
        else:
            raise bad_request("`input` must be a non-empty string or a non-empty list of strings", param="input")
        if len(texts) > 2048:
            raise bad_request("at most 2048 inputs per request", param="input")
        if any(not t.strip() for t in texts):
            raise bad_request("`input` must not contain empty strings", param="input")
        enc = body.get("encoding_format") or "float"
        if enc not in ("float", "base64"):
            raise bad_request("encoding_format must be 'float' or 'base64'", param="encoding_format")
        kind = body.get("input_type") or "document"
        if kind not in ("document", "query"):
            raise bad_request("input_type must be 'document' or 'query'", param="input_type")
        emb = backend("embedding")
        ticket = _admit(state, "embedding")
        try:
            vecs = await state.runner.gated(ticket, lambda: emb.embed(texts, kind=kind))
        except Exception as exc:
            raise fail("embedding", exc) from None
        vecs = np.asarray(vecs, dtype=np.float32)
        dims = body.get("dimensions")
        if dims is not None:
            if not isinstance(dims, int) or not 1 <= dims <= vecs.shape[1]:
                raise bad_request(f"dimensions must be an integer between 1 and {vecs.shape[1]}", param="dimensions")
            vecs = vecs[:, :dims]
            norms = np.linalg.norm(vecs, axis=1, keepdims=True)
            vecs = vecs / np.where(norms == 0, 1, norms)
        data = []
        for i, v in enumerate(vecs):
            e = base64.b64encode(v.astype("<f4").tobytes()).decode() if enc == "base64" else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": e})
        ntok = sum(len(t.split()) for t in texts)
        model = getattr(emb, "model_id", None) or model_ids().get("embedding", "embedding")
        return JSONResponse({"object": "list", "data": data, "model": model,
                             "usage": {"prompt_tokens": ntok, "total_tokens": ntok}})

    # ------------------------------------------------------------------ websocket voice
    @app.websocket("/v1/voice")
    async def voice(websocket: WebSocket):
        from .voice_ws import voice_endpoint

        await voice_endpoint(websocket, state)

    return app


# ---------------------------------------------------------------------- helpers
def _admit(state: ServerState, stage: str):
    try:
        return state.gates[stage].admit()
    except Exception as exc:
        raise api_error(exc, stage) from None


def _iterate(state: ServerState, ticket, cancel: threading.Event, make, name: str):
    from .engines import iterate_in_thread

    return iterate_in_thread(make, ticket, cancel, name)


async def _prepend(has_first: bool, first: Any, agen):
    if has_first:
        yield first
    async for item in agen:
        yield item


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _stem(name: str) -> str:
    from pathlib import Path

    n = Path(str(name)).name
    for ext in (".gguf", ".bin"):
        if n.endswith(ext):
            return n[: -len(ext)]
    return n


def _version() -> str:
    from .. import __version__

    return __version__


def _is_body_too_large(exc: BaseException) -> bool:
    from .middleware import BodyTooLarge

    while exc is not None:
        if isinstance(exc, BodyTooLarge):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("`messages` must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise bad_request(f"messages[{i}].role {role!r} is not one of {', '.join(CHAT_ROLES)}",
                              param=f"messages[{i}].role")
        text = message_text(m.get("content"), i)
        out.append({"role": "system" if role == "developer" else role, "content": text})
    if not any(m["role"] == "user" for m in out):
        raise bad_request("`messages` needs at least one user message", param="messages")
    return out


def _count_tokens(llm: Any, messages: list[dict]) -> int:
    """Prompt tokens for `usage`: the engine's template + tokenizer when it has them, else words."""
    try:
        render, tokenize = getattr(llm, "render", None), getattr(llm, "tokenize", None)
        if callable(render) and callable(tokenize) and not getattr(llm, "is_mock", False):
            return len(tokenize(render(messages)))
    except Exception:
        pass
    return sum(len(m["content"].split()) for m in messages)


async def _with_retrieval(state: ServerState, messages: list[dict]) -> tuple[list[dict], list[dict], str]:
    """Add the retriever's hits for the last user message to the system prompt (like a voice turn)."""
    retriever = state.pipeline.retriever
    if retriever is None:
        return messages, [], "rag requested but no index is loaded (see /health rag)"
    query = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    try:
        hits = await state.runner.call(retriever.search, query, state.pipeline.top_k)
    except Exception as exc:
        log.warning("retrieval failed; answering without it", extra={"error": str(exc)})
        return messages, [], f"retrieval failed: {exc}"
    if not hits:
        return messages, [], ""
    ctx = "\n".join(f"[{i + 1}] ({h.source}) {h.text.strip()}" for i, h in enumerate(hits))
    note = f"Use the following context if it helps.\nContext:\n{ctx}"
    msgs = [dict(m) for m in messages]
    for m in msgs:
        if m["role"] == "system":
            m["content"] = f"{m['content']}\n\n{note}"
            break
    else:
        msgs.insert(0, {"role": "system", "content": note})
    return msgs, [{"source": h.source, "score": round(float(h.score), 4), "chunk_id": h.chunk_id,
                   "text": h.text[:500]} for h in hits], ""
