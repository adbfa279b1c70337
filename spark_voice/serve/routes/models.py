"""GET /v1/models and /v1/models/{id}: one model id per configured role."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ..deps import get_state, model_ids
from ..openai_compat import ApiError
from ..state import ServerState

router = APIRouter(tags=["openai"])


@router.get("/v1/models")
async def list_models(state: ServerState = Depends(get_state)) -> JSONResponse:
    created = int(state.started)
    data = [{"id": mid, "object": "model", "created": created, "owned_by": "spark-voice",
             "spark_voice": {"role": role, "provider": getattr(state.backends[role], "provider", "?"),
                             "is_mock": bool(getattr(state.backends[role], "is_mock", False))}}
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
