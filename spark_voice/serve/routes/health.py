"""/health, /ready, /metrics, /v1/latency and POST /v1/session-token.

With SERVE_API_KEY set, /health and /ready answer everyone but show callers without the key only
the public part (status, readiness, per-role state): no model paths, endpoints or error texts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ..auth import token_body
from ..deps import get_state
from ..openai_compat import ApiError
from ..state import ServerState

router = APIRouter(tags=["health"])


def authenticated(request: Request) -> bool:
    return bool(request.scope.get("state", {}).get("authenticated", True))


def public_body(body: dict[str, Any]) -> dict[str, Any]:
    """What /health and /ready show to callers without the key."""
    return {"status": body["status"], "ready": body["ready"], "version": body["version"],
            "providers": {role: {"state": p.get("state"), "ready": p.get("ready")}
                          for role, p in body["providers"].items()},
            "detail": "send 'Authorization: Bearer <SERVE_API_KEY>' for providers, paths and warnings"}


@router.get("/health")
async def health(request: Request, state: ServerState = Depends(get_state)) -> JSONResponse:
    body = state.body()
    return JSONResponse(body if authenticated(request) else public_body(body))


@router.get("/ready")
async def ready(request: Request, state: ServerState = Depends(get_state)) -> JSONResponse:
    body = state.body()
    ok = bool(body["ready"])
    return JSONResponse(body if authenticated(request) else public_body(body), status_code=200 if ok else 503,
                        headers=None if ok else {"Retry-After": "5"})


@router.post("/v1/session-token")
async def session_token(state: ServerState = Depends(get_state)) -> JSONResponse:
    """A short-lived token for browsers (websocket subprotocol or ?token=); needs the key itself."""
    s = state.settings
    return JSONResponse(token_body(s.serve_api_key, float(s.serve_token_ttl_min) * 60.0))


@router.get("/metrics")
async def metrics(state: ServerState = Depends(get_state)) -> Response:
    if state.metrics is None:
        raise ApiError(503, "prometheus-client is not installed (pip install 'spark-voice[serve]')",
                       "server_error", code="not_configured")
    data, ctype = state.metrics.render()
    return Response(data, media_type=ctype)


@router.get("/v1/latency")
async def latency(state: ServerState = Depends(get_state)) -> JSONResponse:
    body = state.pipeline.latency.summary()
    body["source"] = "voice turns (WS /v1/voice and pipeline turns)"
    body["http"] = {k: r.summary() for k, r in state.http_latency.items()}
    return JSONResponse(body)
