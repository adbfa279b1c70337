"""WS /v1/voice: a live voice conversation (protocol in spark_voice/serve/README.md)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from ..deps import get_state
from ..voice_ws import voice_endpoint

router = APIRouter(tags=["voice"])


@router.websocket("/v1/voice")
async def voice(websocket: WebSocket) -> None:
    await voice_endpoint(websocket, get_state(websocket))
