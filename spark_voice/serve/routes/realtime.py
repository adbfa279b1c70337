"""WS /v1/realtime: the OpenAI Realtime API (protocol in spark_voice/serve/README.md)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from ..deps import get_state
from ..realtime import realtime_endpoint

router = APIRouter(tags=["realtime"])


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket) -> None:
    await realtime_endpoint(websocket, get_state(websocket))
