"""POST /v1/chat/completions: OpenAI chat, streamed (SSE) or whole, optionally with retrieval."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, AsyncGenerator, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ...prompt import with_context
from ...types import LlmDelta
from ..deps import admit, fail, get_state, iterate, llm_engine, model_ids, peek, prepend, request_id, sse
from ..openai_compat import bad_request, chat_chunk, chat_completion
from ..schemas import ChatRequest, parse_body
from ..state import ServerState

router = APIRouter(tags=["openai"])
log = logging.getLogger("spark_voice.serve")

Message = dict[str, str]


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: ServerState = Depends(get_state)) -> Response:
    rid = request_id(request)
    t0 = time.perf_counter()
    req = parse_body(await request.body(), ChatRequest)
    _refuse_unsupported(req)
    messages = req.prompt()
    max_tokens = req.token_limit
    llm = llm_engine(state)
    model = model_ids(state).get("llm", "llm")
    rag = req.rag if req.rag is not None else (
        request.headers.get("x-spark-voice-rag", "").lower() in ("1", "true", "on", "yes"))
    hits_out: list[dict[str, Any]] = []
    headers: dict[str, str] = {}
    if rag:
        messages, hits_out, warning = await _with_retrieval(state, messages)
        if warning:
            headers["X-Spark-Voice-Warning"] = warning
    extra = {"rag": {"hits": hits_out}} if rag else {}
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    temperature = None if req.temperature is None else float(req.temperature)
    ticket = admit(state, "llm")
    cancel = threading.Event()
    agen = iterate(ticket, cancel, lambda: llm.stream_chat(messages, cancel=cancel, max_tokens=max_tokens,
                                                           temperature=temperature), f"chat-{rid}")
    try:
        has_first, first = await peek(agen)
    except Exception as exc:
        await agen.aclose()
        raise fail(state, "llm", exc) from None
    deltas = prepend(has_first, first, agen)
    prompt_tokens = 0
    if include_usage or not req.stream:
        prompt_tokens = await state.runner.call(llm.count_prompt_tokens, messages)
    reply = _Reply(state, rid, t0, f"chatcmpl-{rid}", model, max_tokens, prompt_tokens,
                   bool(state.settings.llm_emit_analysis), extra)
    if not req.stream:
        try:
            body = await reply.whole(deltas)
        except Exception as exc:
            raise fail(state, "llm", exc) from None
        finally:
            await agen.aclose()
        return JSONResponse(body, headers=headers)
    return StreamingResponse(reply.events(deltas, agen, include_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})


def _refuse_unsupported(req: ChatRequest) -> None:
    if req.tools or req.functions:
        raise bad_request("tools / function calling are not supported by this server", param="tools")
    if req.stop:
        raise bad_request("`stop` sequences are not supported by this server", param="stop")


class _Reply:
    """One answer in OpenAI's shapes: a whole chat.completion or a stream of chunks."""

    def __init__(self, state: ServerState, rid: str, t0: float, cid: str, model: str, max_tokens: int | None,
                 prompt_tokens: int, emit_analysis: bool, extra: dict[str, Any]) -> None:
        self.state, self.rid, self.t0, self.cid, self.model = state, rid, t0, cid, model
        self.max_tokens, self.prompt_tokens, self.emit_analysis = max_tokens, prompt_tokens, emit_analysis
        self.extra = extra
        self.created = int(time.time())
        self.n = 0
        self.first_final: float | None = None

    def _finish(self) -> str:
        return "length" if self.max_tokens is not None and self.n >= self.max_tokens else "stop"

    def _usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.n,
                "total_tokens": self.prompt_tokens + self.n}

    def _record(self) -> None:
        lat = {"end_to_end": round((time.perf_counter() - self.t0) * 1000, 3)}
        if self.first_final is not None:
            lat["first_token"] = round((self.first_final - self.t0) * 1000, 3)
        self.state.http_latency["chat"].record(self.rid, lat)

    def _count(self, d: LlmDelta) -> None:
        self.n += 1
        if d.channel == "final" and d.text and self.first_final is None:
            self.first_final = time.perf_counter()

    async def whole(self, deltas: AsyncIterator[LlmDelta]) -> dict[str, Any]:
        content: list[str] = []
        reasoning: list[str] = []
        async for d in deltas:
            self._count(d)
            (content if d.channel == "final" else reasoning).append(d.text)
        self._record()
        return chat_completion(self.cid, self.model, "".join(content).strip(), self._finish(), self._usage(),
                               "".join(reasoning) if self.emit_analysis else None, **self.extra)

    async def events(self, deltas: AsyncIterator[LlmDelta], agen: AsyncGenerator[LlmDelta, None],
                     include_usage: bool) -> AsyncIterator[str]:
        cid, created, model = self.cid, self.created, self.model
        finished = False
        try:
            yield sse(chat_chunk(cid, created, model, {"role": "assistant", "content": ""}, **self.extra))
            async for d in deltas:
                self._count(d)
                if d.channel == "final":
                    if d.text:
                        yield sse(chat_chunk(cid, created, model, {"content": d.text}))
                elif self.emit_analysis and d.text:
                    yield sse(chat_chunk(cid, created, model, {"reasoning_content": d.text}))
            yield sse(chat_chunk(cid, created, model, {}, self._finish()))
            if include_usage:
                yield sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [], "usage": self._usage()})
            yield "data: [DONE]\n\n"
            finished = True
        except Exception as exc:  # after the 200 went out: an error event in OpenAI's shape
            yield sse(fail(self.state, "llm", exc).body())
        finally:
            await agen.aclose()
            if finished:
                self._record()


async def _with_retrieval(state: ServerState,
                          messages: list[Message]) -> tuple[list[Message], list[dict[str, Any]], str]:
    """Add the retriever's hits for the last user message to the system prompt (like a voice turn)."""
    retriever = state.pipeline.retriever
    if retriever is None:
        return messages, [], "rag requested but no index is loaded (see /health rag)"
    query = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    try:
        hits = await state.runner.call(retriever.search, query, state.pipeline.top_k)
    except Exception as exc:
        log.warning("retrieval failed; answering without it", extra={"error": str(exc)})
        return messages, [], "retrieval failed; answering without it"
    return with_context(messages, hits), [h.to_dict(text_chars=500) for h in hits], ""
