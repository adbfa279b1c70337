"""POST /v1/embeddings."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..deps import admit, embedding_engine, fail, get_state, model_ids
from ..openai_compat import bad_request
from ..schemas import EmbeddingsRequest, parse_body
from ..state import ServerState

router = APIRouter(tags=["openai"])


@router.post("/v1/embeddings")
async def embeddings(request: Request, state: ServerState = Depends(get_state)) -> JSONResponse:
    req = parse_body(await request.body(), EmbeddingsRequest)
    texts = req.texts
    emb = embedding_engine(state)
    ticket = admit(state, "embedding")
    try:
        vecs = await state.runner.gated(ticket, lambda: emb.embed(texts, kind=req.input_type))
    except Exception as exc:
        raise fail(state, "embedding", exc) from None
    vecs = np.asarray(vecs, dtype=np.float32)
    if req.dimensions is not None:
        if req.dimensions > vecs.shape[1]:
            raise bad_request(f"dimensions must be an integer between 1 and {vecs.shape[1]}", param="dimensions")
        vecs = vecs[:, :req.dimensions]
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = vecs / np.where(norms == 0, 1, norms)
    data: list[dict[str, Any]] = []
    for i, v in enumerate(vecs):
        e = base64.b64encode(v.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": e})
    ntok = sum(len(t.split()) for t in texts)
    model = getattr(emb, "model_id", None) or model_ids(state).get("embedding", "embedding")
    return JSONResponse({"object": "list", "data": data, "model": model,
                         "usage": {"prompt_tokens": ntok, "total_tokens": ntok}})
