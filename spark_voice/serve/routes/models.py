"""GET /v1/models and /v1/models/{id}: one model id per configured role."""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ...backends.base import LanguageModel
from ..deps import get_state, model_ids
from ..openai_compat import ApiError
from ..state import ServerState
from .chat import tool_format

router = APIRouter(tags=["openai"])


@router.get("/v1/models")
async def list_models(state: ServerState = Depends(get_state)) -> JSONResponse:
    created = int(state.started)
    data = [{"id": mid, "object": "model", "created": created, "owned_by": "spark-voice",
             "spark_voice": _info(role, state.backends[role])}
            for role, mid in model_ids(state).items()]
    return JSONResponse({"object": "list", "data": data})


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, state: ServerState = Depends(get_state)) -> JSONResponse:
    ids = model_ids(state)
    if model_id in ids.values():
        return JSONResponse({"id": model_id, "object": "model", "created": int(state.started),
                             "owned_by": "spark-voice"})
    raise ApiError(404, f"model {model_id!r} not found; available: {', '.join(ids.values())}",
                   param="model", code="model_not_found")


def _info(role: str, b: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"role": role, "provider": getattr(b, "provider", "?"),
                            "is_mock": bool(getattr(b, "is_mock", False))}
    if role == "llm":  # which model can call tools, and in which format
        fmt = tool_format(cast(LanguageModel, b))
        info["tools"] = bool(fmt)
        if fmt:
            info["tool_format"] = fmt
    return info
