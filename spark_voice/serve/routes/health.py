"""/health, /ready, /metrics and /v1/latency."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from ..deps import get_state
from ..openai_compat import ApiError
from ..state import ServerState

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(state: ServerState = Depends(get_state)) -> JSONResponse:
    return JSONResponse(state.body())


@router.get("/ready")
async def ready(state: ServerState = Depends(get_state)) -> JSONResponse:
    body = state.body()
    return JSONResponse(body, status_code=200 if body["ready"] else 503,
                        headers=None if body["ready"] else {"Retry-After": "5"})


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
