"""What routes share: the server state (injected with ``Depends(get_state)``), request ids, engine
look-up, queue admission, error mapping and streaming helpers."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, AsyncGenerator, AsyncIterator, Callable, Iterator, TypeVar, cast

from fastapi import Request
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from ..backends.base import Backend, Embedder, LanguageModel, SpeechToText, TextToSpeech
from ..events import new_request_id
from ..types import Role
from .engines import Ticket, iterate_in_thread
from .limits import OFFLOAD_JSON_BYTES
from .openai_compat import ApiError, api_error
from .schemas import parse_body
from .state import ServerState

log = logging.getLogger("spark_voice.serve")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, state: ServerState, model: type[M]) -> M:
    """The request's JSON body as a validated `model` (400 in OpenAI's shape otherwise); nesting
    limited by SERVE_MAX_JSON_DEPTH; large bodies are parsed in a worker thread, off the loop."""
    raw = await request.body()
    depth = state.settings.serve_max_json_depth
    if len(raw) > OFFLOAD_JSON_BYTES:
        return await state.runner.call(parse_body, raw, model, depth)
    return parse_body(raw, model, depth)


def get_state(conn: HTTPConnection) -> ServerState:
    """The app's :class:`ServerState` (a FastAPI dependency, for HTTP routes and websockets)."""
    state: ServerState = conn.app.state.sv
    return state


def request_id(request: Request) -> str:
    """The request id set by the RequestContext middleware (X-Request-ID)."""
    rid = request.scope.get("state", {}).get("request_id")
    return str(rid) if rid else new_request_id()


def backend(state: ServerState, role: Role) -> Backend:
    """The engine of a role, or 503 when none is configured or it is still loading."""
    b = state.backends.get(role)
    if b is None:
        raise ApiError(503, f"no {role} provider is configured", "server_error", code="not_configured")
    if state.loading(role):
        raise ApiError(503, f"{role} model is still loading; retry shortly (GET /ready)", "server_error",
                       code="loading", headers={"Retry-After": "5"})
    return b


def stt_engine(state: ServerState) -> SpeechToText:
    return cast(SpeechToText, backend(state, "stt"))


def llm_engine(state: ServerState) -> LanguageModel:
    return cast(LanguageModel, backend(state, "llm"))


def tts_engine(state: ServerState) -> TextToSpeech:
    return cast(TextToSpeech, backend(state, "tts"))


def embedding_engine(state: ServerState) -> Embedder:
    return cast(Embedder, backend(state, "embedding"))


def admit(state: ServerState, role: Role) -> Ticket:
    """A place in the role's engine queue, or 429 at once when it is full."""
    try:
        return state.gates[role].admit()
    except Exception as exc:
        raise api_error(exc, role) from None


def fail(state: ServerState, role: Role, exc: BaseException) -> ApiError:
    """An engine exception as the client's error; engine failures are kept for /health."""
    e = api_error(exc, role)
    if e.status >= 500 and e.code != "cancelled":
        state.runtime_errors[role] = e.message
        log.error("engine error", extra={"role": role, "error": e.message})
    return e


def iterate(ticket: Ticket, cancel: threading.Event, make: Callable[[], Iterator[T]],
            name: str) -> AsyncGenerator[T, None]:
    """A blocking engine iterator driven in its own thread holding `ticket`."""
    return iterate_in_thread(make, ticket, cancel, name)


async def peek(agen: AsyncGenerator[T, None]) -> tuple[bool, T | None]:
    """Run a stream up to its first item so that errors become a proper status code."""
    try:
        return True, await agen.__anext__()
    except StopAsyncIteration:
        return False, None


async def prepend(has_first: bool, first: T | None, agen: AsyncIterator[T]) -> AsyncIterator[T]:
    if has_first:
        yield first  # type: ignore[misc]
    async for item in agen:
        yield item


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def model_ids(state: ServerState) -> dict[Role, str]:
    """The model id each role answers to in /v1/models and responses."""
    s = state.settings
    files: dict[Role, object] = {"llm": s.llm_model, "stt": s.stt_model, "embedding": s.embedding_model}
    out = {}
    for role, b in state.backends.items():
        if getattr(b, "is_mock", False):
            out[role] = f"mock-{role}"
        elif role in files:
            out[role] = stem(str(files[role]))
        else:
            out[role] = "tts-" + str(getattr(b, "provider", "tts")).replace(",", "+")
    return out


def stem(name: str) -> str:
    n = Path(str(name)).name
    for ext in (".gguf", ".bin"):
        if n.endswith(ext):
            return n[: -len(ext)]
    return n
