"""POST /v1/embeddings."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..deps import admit, embedding_engine, fail, get_state, model_ids, read_body
from ..limits import check_embeddings
from ..openai_compat import bad_request
from ..schemas import EmbeddingsRequest
from ..state import ServerState

router = APIRouter(tags=["openai"])


@router.post("/v1/embeddings")
async def embeddings(request: Request, state: ServerState = Depends(get_state)) -> Response:
    req = await read_body(request, state, EmbeddingsRequest)
    check_embeddings(req, state.settings)
    texts = req.texts
    emb = embedding_engine(state)
    ticket = admit(state, "embedding")
    try:
        vecs = await state.runner.gated(ticket, lambda: emb.embed(texts, kind=req.input_type))
    except Exception as exc:
        raise fail(state, "embedding", exc) from None
    dim = int(np.asarray(vecs).shape[1])
    if req.dimensions is not None and req.dimensions > dim:
        raise bad_request(f"dimensions must be an integer between 1 and {dim}", param="dimensions")
    model = getattr(emb, "model_id", None) or model_ids(state).get("embedding", "embedding")
    # vectors -> JSON (tolist, base64, dumps) is CPU work: a worker thread, not the event loop
    body = await state.runner.call(_render, vecs, req, texts, str(model))
    return Response(body, media_type="application/json")


def _render(vecs: Any, req: EmbeddingsRequest, texts: list[str], model: str) -> bytes:
    vecs = np.asarray(vecs, dtype=np.float32)
    if req.dimensions is not None:
        vecs = vecs[:, :req.dimensions]
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs = vecs / np.where(norms == 0, 1, norms)
    data: list[dict[str, Any]] = []
    for i, v in enumerate(vecs):
        e = base64.b64encode(v.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": e})
    ntok = sum(len(t.split()) for t in texts)
    return json.dumps({"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": ntok, "total_tokens": ntok}}, ensure_ascii=False).encode()
