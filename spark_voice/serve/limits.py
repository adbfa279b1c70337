"""Server-side limits on untrusted input, in one place (routes call these; settings name them).

* JSON: nesting depth is measured on the raw bytes before ``json.loads`` (a cheap vectorised scan),
  so ``[`` x 200 000 is a 400, not a RecursionError; bodies above OFFLOAD_JSON_BYTES are parsed
  in a worker thread so the event loop keeps answering.
* chat / embeddings: characters and inputs per request (SERVE_MAX_CHAT_CHARS,
  SERVE_MAX_EMBEDDING_CHARS, SERVE_MAX_EMBEDDING_INPUTS); ``max_tokens`` clamped to LLM_MAX_TOKENS.
* exposure: a non-loopback bind needs SERVE_API_KEY unless SERVE_INSECURE / --insecure.
* websocket transport: largest message and messages buffered by uvicorn (``uvicorn_options``).
* metrics: HTTP methods outside a fixed set are counted as "other" (bounded label values).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, InputTooLarge

if TYPE_CHECKING:
    from ..config import Settings
    from .schemas import ChatRequest, EmbeddingsRequest

OFFLOAD_JSON_BYTES = 256 * 1024   # larger bodies are parsed off the event loop
WS_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # one websocket message (uvicorn ws_max_size); larger: 1009
WS_MAX_QUEUE = 4                   # messages uvicorn buffers before it stops reading the socket
METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})

_STEP = np.zeros(256, dtype=np.int32)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1
_SCAN_CHUNK = 1 << 20  # bytes per vectorised step: memory stays a few MiB whatever the body size


def json_depth(raw: bytes | str, stop_above: int | None = None) -> int:
    """The deepest bracket nesting of a JSON text, brackets inside strings not counted.

    Linear, vectorised, in chunks of 1 MiB (bounded memory): strings are found from the unescaped
    quotes (an odd run of backslashes escapes a quote), then a running sum of +1/-1 over the
    brackets outside them. Bodies with fewer brackets than `stop_above` are not scanned at all;
    the scan stops once the depth passes `stop_above`. Invalid JSON may give any number (json.loads
    then fails at the first stray character, before reaching a deeper bracket).
    """
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    if stop_above is not None and data.count(b"[") + data.count(b"{") <= stop_above:
        return 0 if b"[" not in data and b"{" not in data else min(stop_above, 1)
    depth = best = 0
    in_str = False
    bs_run = 0  # backslashes ending the previous chunk
    for off in range(0, len(data), _SCAN_CHUNK):
        a = np.frombuffer(data, dtype=np.uint8, count=min(_SCAN_CHUNK, len(data) - off), offset=off)
        quote = a == 34  # '"'
        bs = a == 92     # '\\'
        qidx = np.flatnonzero(quote)
        if len(qidx) and (bs.any() or bs_run):
            pos = np.arange(len(a), dtype=np.int32)
            last_other = np.maximum.accumulate(np.where(bs, np.int32(-1), pos))  # last non-backslash <= i
            before = np.where(qidx > 0, last_other[np.maximum(qidx - 1, 0)], -1)
            run = (qidx - 1 - before).astype(np.int64)
            run[before < 0] += bs_run  # the run reaches back into the previous chunk
            qidx = qidx[run % 2 == 0]
        if bs.all():
            bs_run += len(a)
        else:
            bs_run = int(len(a) - 1 - np.flatnonzero(~bs)[-1])
        steps = _STEP[a]
        if len(qidx):
            toggles = np.zeros(len(a), dtype=np.int8)
            toggles[qidx] = 1
            inside = ((np.cumsum(toggles, dtype=np.int32) + int(in_str)) & 1).astype(bool)
            steps[inside] = 0  # the closing quote itself reads as outside: it is no bracket anyway
            in_str = bool((len(qidx) + int(in_str)) & 1)
        elif in_str:
            steps[:] = 0
        run_depth = np.cumsum(steps, dtype=np.int64)
        if len(run_depth):
            best = max(best, depth + int(run_depth.max()))
            depth += int(run_depth[-1])
        if stop_above is not None and best > stop_above:
            return best
    return best


def check_json_depth(raw: bytes | str, max_depth: int) -> None:
    depth = json_depth(raw, stop_above=max_depth)
    if depth > max_depth:
        raise InputTooLarge(f"the JSON is nested more than {max_depth} levels deep (SERVE_MAX_JSON_DEPTH)")


def _too_large(message: str, param: str) -> Exception:
    """A 413 in OpenAI's shape (the ApiError of InputTooLarge)."""
    from .openai_compat import api_error

    return api_error(InputTooLarge(message, param=param))


def check_chat(req: "ChatRequest", settings: "Settings") -> None:
    total = sum(len(m.text) + sum(len(str(getattr(c.function, "arguments", "") or ""))
                                  for c in (getattr(m, "tool_calls", None) or []))
                for m in req.messages)
    if total > settings.serve_max_chat_chars:
        raise _too_large(f"the messages hold {total} characters; at most {settings.serve_max_chat_chars} "
                            "are accepted (SERVE_MAX_CHAT_CHARS)", param="messages")


def clamp_max_tokens(requested: int | None, settings: "Settings") -> int:
    """The answer's token budget: the client's max_tokens, never above LLM_MAX_TOKENS."""
    cap = int(settings.llm_max_tokens)
    return cap if requested is None else min(int(requested), cap)


def check_embeddings(req: "EmbeddingsRequest", settings: "Settings") -> None:
    texts = req.texts
    if len(texts) > settings.serve_max_embedding_inputs:
        raise _too_large(f"{len(texts)} inputs; at most {settings.serve_max_embedding_inputs} per request "
                            "(SERVE_MAX_EMBEDDING_INPUTS)", param="input")
    longest = max((len(t) for t in texts), default=0)
    if longest > settings.serve_max_embedding_chars:
        raise _too_large(f"an input holds {longest} characters; at most {settings.serve_max_embedding_chars} "
                            "per input (SERVE_MAX_EMBEDDING_CHARS)", param="input")


# ------------------------------------------------------------------------------ exposure
def is_loopback(host: str) -> bool:
    h = (host or "").strip().strip("[]").lower()
    if h in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a host name or an interface address: treat as exposed


def check_bind(host: str, settings: "Settings", insecure: bool = False) -> None:
    """Refuse to listen beyond loopback without an API key (ConfigError says how to proceed)."""
    if is_loopback(host) or settings.serve_api_key or insecure or settings.serve_insecure:
        return
    raise ConfigError(
        f"refusing to listen on {host} without SERVE_API_KEY: anyone who can reach this address could use "
        "the engines. Set SERVE_API_KEY (clients send 'Authorization: Bearer <key>'), bind 127.0.0.1, or "
        "pass --insecure (SERVE_INSECURE=true) if the network is trusted")


def uvicorn_options() -> dict[str, Any]:
    """Transport limits for uvicorn.run / uvicorn.Config (the CLI and the tests use the same)."""
    return {"ws_max_size": WS_MAX_MESSAGE_BYTES, "ws_max_queue": WS_MAX_QUEUE}


def method_label(method: str | None) -> str:
    m = (method or "").upper()
    return m if m in METHODS else "other"
