"""Pure ASGI middleware: request ids + access log + request metrics, browser origin check, bearer key,
body size cap."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from typing import Any
from urllib.parse import urlsplit

from ..events import new_request_id
from .auth import bearer, http_authenticated, key_matches, ws_authenticate
from .limits import method_label
from .openai_compat import error_body

log = logging.getLogger("spark_voice.serve")
access_log = logging.getLogger("spark_voice.serve.access")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("spark_voice_request_id", default="")
_RID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestIdFilter(logging.Filter):
    """Adds the current request id to log records that have none (logs from worker threads too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)  # uvicorn's ANSI copy of the message
        if not getattr(record, "request_id", None):
            rid = REQUEST_ID.get()
            if rid:
                record.request_id = rid
        return True


def header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers") or []:
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def request_id_of(scope: dict) -> str:
    rid = (header(scope, b"x-request-id") or "").strip()
    return rid if _RID_RE.match(rid) else new_request_id()


async def send_json(send, status: int, body: dict, rid: str = "", headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body, ensure_ascii=False).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if rid:
        raw.append((b"x-request-id", rid.encode()))
    for k, v in (headers or {}).items():
        raw.append((k.lower().encode(), str(v).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class RequestContext:
    """X-Request-ID in (validated) or generated; echoed on every response; one JSON access log line
    and request metrics per request; an unhandled exception becomes a 500 in OpenAI's shape."""

    def __init__(self, app, state: Any) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        rid = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = rid
        token = REQUEST_ID.set(rid)
        if scope["type"] == "websocket":
            try:
                return await self.app(scope, receive, send)
            finally:
                REQUEST_ID.reset(token)
        t0 = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: BLE001 - the server stays up, the client gets JSON
            log.exception("unhandled error", extra={"request_id": rid, "path": scope.get("path")})
            if not started:
                # the details go to the log (with the request id), never to the client
                await send_json(send, 500, error_body(f"internal error (request id {rid}); see the server log",
                                                      "server_error", code="internal_error"), rid)
                status = 500
        finally:
            REQUEST_ID.reset(token)
            dt = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            access_log.info("request", extra={"request_id": rid, "method": scope.get("method"),
                                              "path": scope.get("path"), "route": route, "status": status,
                                              "ms": round(dt * 1000.0, 2)})
            m = self.state.metrics
            if m is not None:
                m.requests.labels(route, method_label(scope.get("method")), str(status)).inc()
                m.request_seconds.labels(route).observe(dt)


def bearer_ok(scope: dict, key: str) -> bool:
    """The request carries 'Authorization: Bearer <key>' (bytes compared: UTF-8 keys work)."""
    return key_matches(bearer(scope), key)


def offered_protocols(scope: dict) -> list[str]:
    """The subprotocols a websocket client offered (Sec-WebSocket-Protocol), in its order."""
    return [p.strip() for p in (header(scope, b"sec-websocket-protocol") or "").split(",") if p.strip()]


LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def parse_origins(value: str) -> tuple[str, ...]:
    """SERVE_ALLOWED_ORIGINS as a tuple of keywords (self, localhost, *) and lower-case origins."""
    return tuple(x.strip().lower().rstrip("/") for x in value.split(",") if x.strip())


def origin_allowed(origin: str, host: str | None, allowed: tuple[str, ...], loopback: bool = False) -> bool:
    """Whether a browser `origin` may talk to this server (see SERVE_ALLOWED_ORIGINS). loopback: the
    server listens on loopback only, so `self` must be a loopback name too (a page of another site
    whose name was re-bound to 127.0.0.1 has Origin == Host, but not a loopback name)."""
    o = origin.strip().lower().rstrip("/")
    if "*" in allowed or o in allowed:
        return True
    try:
        u = urlsplit(o)
        hostname = u.hostname
    except ValueError:
        return False
    if u.scheme not in ("http", "https") or not hostname:
        return False
    if "localhost" in allowed and hostname in LOOPBACK_HOSTS:
        return True
    if loopback and hostname not in LOOPBACK_HOSTS:
        return False
    return "self" in allowed and bool(host) and u.netloc == (host or "").strip().lower()


class OriginCheck:
    """Browser requests from other sites: a websocket upgrade or a state-changing request (POST ...)
    whose Origin is not in SERVE_ALLOWED_ORIGINS gets 403; so does a cross-site request without an
    Origin (Sec-Fetch-Site: cross-site) unless its body is JSON (a browser sends JSON cross-site only
    after a CORS preflight, which this server never grants). Requests without Origin and
    Sec-Fetch-Site (SDKs, curl) are not browser requests and pass."""

    def __init__(self, app, allowed: str, loopback: bool = False) -> None:
        self.app, self.allowed, self.loopback = app, parse_origins(allowed), loopback

    def refused(self, scope: dict) -> str:
        """Why the request is refused, or '' when it may pass."""
        if scope["type"] == "http" and scope.get("method", "GET") in SAFE_METHODS:
            return ""
        origin = header(scope, b"origin")
        if origin is not None:
            if origin_allowed(origin, header(scope, b"host"), self.allowed, self.loopback):
                return ""
            return f"origin {origin!r} is not allowed (SERVE_ALLOWED_ORIGINS)"
        site = (header(scope, b"sec-fetch-site") or "").lower()
        if site in ("cross-site", "same-site"):
            ctype = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if scope["type"] == "websocket" or ctype != "application/json":
                return "cross-site request refused: send JSON from an allowed origin (SERVE_ALLOWED_ORIGINS)"
        return ""

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or not (why := self.refused(scope)):
            return await self.app(scope, receive, send)
        rid = scope.get("state", {}).get("request_id", "")
        body = error_body(why, "invalid_request_error", code="origin_not_allowed")
        log.warning("cross-origin request refused", extra={"request_id": rid, "path": scope.get("path"),
                                                            "origin": header(scope, b"origin")})
        if scope["type"] == "http":
            await send_json(send, 403, body, rid)
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in (scope.get("extensions") or {}):
            data = json.dumps(body).encode()
            await send({"type": "websocket.http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(data)).encode())]})
            await send({"type": "websocket.http.response.body", "body": data})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "origin not allowed"})


def unauthorized_body() -> dict:
    return error_body("Incorrect or missing API key: send 'Authorization: Bearer <SERVE_API_KEY>' "
                      "(browsers: a token from POST /v1/session-token).",
                      "invalid_request_error", code="invalid_api_key")


# Reachable without the key when SERVE_API_KEY is set (/health then leaves out paths and errors).
OPEN_PATHS = frozenset({"/health", "/ready", "/", "/ui"})
OPEN_PREFIX = "/static/"  # the page's own files (routes/ui.py serves four names, 404 for the rest)
# Needs the key itself: a session token cannot mint new tokens.
KEY_ONLY_PATHS = frozenset({"/v1/session-token"})


class ApiKeyAuth:
    """With SERVE_API_KEY set, every route needs 'Authorization: Bearer <key or session token>' (401
    before the body is read), except OPEN_PATHS (health and the voice page). Websockets: the key header, a key or token
    subprotocol, or ``?token=`` (see auth.py); refused handshakes get 401 (or close 1008). Sets
    ``scope["state"]["authenticated"]`` (for /health) and ``["ws_subprotocol"]`` (to accept with)."""

    def __init__(self, app, key: str) -> None:
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        path = scope.get("path", "")
        if kind == "websocket":
            ok, proto = ws_authenticate(scope, self.key)
            state["authenticated"] = ok
            state["ws_subprotocol"] = proto
            if not ok:
                return await _deny_websocket(scope, receive, send)
            return await self.app(scope, receive, send)
        ok = http_authenticated(scope, self.key, allow_token=path not in KEY_ONLY_PATHS)
        state["authenticated"] = ok
        if not ok and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIX):
            await send_json(send, 401, unauthorized_body(), state.get("request_id", ""),
                            {"WWW-Authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)


async def _deny_websocket(scope, receive, send) -> None:
    message = await receive()  # websocket.connect
    if message.get("type") != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        data = json.dumps(unauthorized_body()).encode()
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "websocket.http.response.body", "body": data})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": "invalid api key or token"})


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413: at once when Content-Length says so,
    otherwise while reading (chunked uploads are counted as they arrive)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, int(limit)

    def _body(self) -> dict:
        mb = self.limit / (1024 * 1024)
        return error_body(f"request body too large: the limit is {mb:g} MiB (SERVE_MAX_BODY_MB)",
                          "invalid_request_error", code="request_too_large")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = scope.get("state", {}).get("request_id", "")
        cl = header(scope, b"content-length")
        if cl is not None and cl.strip().isdigit() and int(cl) > self.limit:
            await send_json(send, 413, self._body(), rid, {"Connection": "close"})
            return
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await send_json(send, 413, self._body(), rid, {"Connection": "close"})
        except Exception as exc:
            # frameworks may wrap the error (e.g. "error parsing the body"): look through the chain
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, BodyTooLarge):
                cause = cause.__cause__ or cause.__context__
            if cause is None or started:
                raise
            await send_json(send, 413, self._body(), rid, {"Connection": "close"})
