"""POST /v1/chat/completions: OpenAI chat, streamed (SSE) or whole, optionally with retrieval, with
tools (``tools``, ``tool_choice``, ``role: "tool"`` results; ``tool_calls`` with ids, streamed as
argument deltas by call index). ``finish_reason`` and ``usage`` come from the engine's own counts
(``stats=``) when the engine reports them."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, AsyncGenerator, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ...backends.base import LanguageModel, count_prompt_tokens, supports_tools, takes_kwarg
from ...errors import ToolError
from ...prompt import with_context
from ...tools import ToolChoice, new_call_id, normalize_tool_choice
from ...types import LlmDelta
from ..deps import admit, fail, get_state, iterate, llm_engine, model_ids, peek, prepend, read_body, request_id, sse
from ..limits import check_chat, clamp_max_tokens
from ..openai_compat import bad_request, chat_chunk, chat_completion
from ..schemas import ChatRequest
from ..state import ServerState

router = APIRouter(tags=["openai"])
log = logging.getLogger("spark_voice.serve")

Message = dict[str, Any]


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: ServerState = Depends(get_state)) -> Response:
    rid = request_id(request)
    t0 = time.perf_counter()
    req = await read_body(request, state, ChatRequest)
    check_chat(req, state.settings)
    _refuse_unsupported(req)
    messages = req.prompt()
    max_tokens = clamp_max_tokens(req.token_limit, state.settings)
    llm = llm_engine(state)
    model = model_ids(state).get("llm", "llm")
    tools, tool_choice = _tools(req, llm, model)
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
    kw: dict[str, Any] = {"max_tokens": max_tokens,
                          "temperature": None if req.temperature is None else float(req.temperature)}
    if tools:
        kw.update(tools=tools, tool_choice=tool_choice)
    stats: dict[str, Any] = {}
    if takes_kwarg(llm, "stats"):
        kw["stats"] = stats
    ticket = admit(state, "llm")
    cancel = threading.Event()
    agen = iterate(ticket, cancel, lambda: llm.stream_chat(messages, cancel=cancel, **kw), f"chat-{rid}")
    try:
        has_first, first = await peek(agen)
    except ToolError as exc:
        await agen.aclose()
        raise bad_request(str(exc), param="tools") from None
    except Exception as exc:
        await agen.aclose()
        raise fail(state, "llm", exc) from None
    deltas = prepend(has_first, first, agen)
    prompt_tokens = 0
    if (include_usage or not req.stream) and "prompt_tokens" not in stats:
        prompt_tokens = await state.runner.call(count_prompt_tokens, llm, messages)
    reply = _Reply(state, rid, t0, f"chatcmpl-{rid}", model, max_tokens, prompt_tokens,
                   bool(state.settings.llm_emit_analysis), extra, stats)
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


def tool_format(llm: LanguageModel) -> str:
    """How a model calls tools (GET /v1/models): harmony | template | prompted | mock | "" (it cannot)."""
    if not supports_tools(llm):
        return ""
    if getattr(llm, "is_mock", False):
        return "mock"
    return str(getattr(llm, "tool_format", "") or "native")


def _tools(req: ChatRequest, llm: LanguageModel, model: str) -> tuple[list[dict[str, Any]], ToolChoice]:
    """The request's tools and tool_choice, checked against each other and the model."""
    tools = req.tool_specs()
    try:
        mode, _ = normalize_tool_choice(req.tool_choice, tools)
    except ToolError as exc:
        raise bad_request(str(exc), param="tool_choice") from None
    if tools and mode != "none" and not tool_format(llm):
        raise bad_request(f"model {model!r} cannot call tools (its backend takes no `tools`); GET /v1/models "
                          "says which model can", param="tools", code="tools_not_supported")
    return tools, req.tool_choice


def _refuse_unsupported(req: ChatRequest) -> None:
    if req.functions is not None or req.function_call is not None:
        raise bad_request("`functions` / `function_call` are deprecated; send `tools` and `tool_choice`",
                          param="functions")
    if req.stop:
        raise bad_request("`stop` sequences are not supported by this server", param="stop")


class _Reply:
    """One answer in OpenAI's shapes: a whole chat.completion or a stream of chunks."""

    def __init__(self, state: ServerState, rid: str, t0: float, cid: str, model: str, max_tokens: int | None,
                 prompt_tokens: int, emit_analysis: bool, extra: dict[str, Any], stats: dict[str, Any]) -> None:
        self.state, self.rid, self.t0, self.cid, self.model = state, rid, t0, cid, model
        self.max_tokens, self.prompt_tokens, self.emit_analysis = max_tokens, prompt_tokens, emit_analysis
        self.extra, self.stats = extra, stats
        self.created = int(time.time())
        self.n = 0
        self.first_final: float | None = None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[dict[str, Any]] = []      # OpenAI tool_calls, arguments accumulated
        self._call_index: dict[tuple[int, str], int] = {}

    def _finish(self) -> str:
        reason = self.stats.get("finish_reason")  # the engine's own, when it reports one
        if reason in ("stop", "length", "tool_calls"):
            return "tool_calls" if self.calls and reason != "length" else reason
        if self.calls:
            return "tool_calls"
        return "length" if self.max_tokens is not None and self.n >= self.max_tokens else "stop"

    def _usage(self) -> dict[str, int]:
        p = int(self.stats.get("prompt_tokens", self.prompt_tokens))
        c = int(self.stats.get("completion_tokens", self.n))
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def _record(self) -> None:
        lat = {"end_to_end": round((time.perf_counter() - self.t0) * 1000, 3)}
        if self.first_final is not None:
            lat["first_token"] = round((self.first_final - self.t0) * 1000, 3)
        self.state.http_latency["chat"].record(self.rid, lat)

    def _push(self, d: LlmDelta) -> list[dict[str, Any]]:
        """Take one engine delta; the chunk deltas it makes (content, reasoning, tool_calls)."""
        self.n += 1
        if getattr(d, "kind", "text") == "tool_call":
            key = (d.index, d.recipient)
            if key not in self._call_index:
                self._call_index[key] = len(self.calls)
                call: dict[str, Any] = {"id": new_call_id(), "type": "function",
                                        "function": {"name": d.tool_name, "arguments": d.text}}
                self.calls.append(call)
                return [{"tool_calls": [{"index": self._call_index[key], "id": call["id"], "type": "function",
                                         "function": {"name": d.tool_name, "arguments": d.text}}]}]
            i = self._call_index[key]
            self.calls[i]["function"]["arguments"] += d.text
            return [{"tool_calls": [{"index": i, "function": {"arguments": d.text}}]}] if d.text else []
        if not d.text:
            return []
        if not getattr(d, "recipient", "") and d.channel in ("final", "commentary"):  # answer or preamble
            if self.first_final is None:
                self.first_final = time.perf_counter()
            self.content.append(d.text)
            return [{"content": d.text}]
        self.reasoning.append(d.text)
        return [{"reasoning_content": d.text}] if self.emit_analysis else []

    async def whole(self, deltas: AsyncIterator[LlmDelta]) -> dict[str, Any]:
        async for d in deltas:
            self._push(d)
        self._record()
        body = chat_completion(self.cid, self.model, "".join(self.content).strip(), self._finish(), self._usage(),
                               "".join(self.reasoning) if self.emit_analysis else None, **self.extra)
        if self.calls:
            msg = body["choices"][0]["message"]
            msg["tool_calls"] = self.calls
            msg["content"] = msg["content"] or None
        return body

    async def events(self, deltas: AsyncIterator[LlmDelta], agen: AsyncGenerator[LlmDelta, None],
                     include_usage: bool) -> AsyncIterator[str]:
        cid, created, model = self.cid, self.created, self.model
        finished = False
        try:
            yield sse(chat_chunk(cid, created, model, {"role": "assistant", "content": ""}, **self.extra))
            async for d in deltas:
                for delta in self._push(d):
                    yield sse(chat_chunk(cid, created, model, delta))
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
