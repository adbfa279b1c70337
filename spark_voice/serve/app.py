"""The FastAPI app: routers for health, models, audio, chat, embeddings and the voice websocket.

    from spark_voice.serve.app import create_app
    app = create_app()                      # settings from .env.default / .env / environment
    app = create_app(settings, pipeline)    # tests: mock backends with delays, failing providers ...

Blocking engine calls run in worker threads behind one bounded queue per engine (engines.py);
the event loop only parses requests and moves bytes, so /health answers while models generate.
Shapes of every body are documented in spark_voice/serve/README.md; request bodies are the
pydantic models of schemas.py; routes get the :class:`ServerState` injected (deps.get_state).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..backends.base import Embedder
from ..config import Settings
from ..errors import SparkVoiceError
from ..pipeline import VoicePipeline
from .middleware import ApiKeyAuth, BodyLimit, OriginCheck, RequestContext
from .openai_compat import ApiError, api_error
from .routes import ROUTERS
from .state import ServerState

log = logging.getLogger("spark_voice.serve")


def create_app(settings: Settings | None = None, pipeline: VoicePipeline | None = None, *,
               embedder: Embedder | None = None, load: bool = True) -> FastAPI:
    """Build the app. settings: a Settings (default: Settings.load()); pipeline: a VoicePipeline
    (default: VoicePipeline.from_settings(settings)); embedder: the /v1/embeddings backend (default:
    the pipeline's, else the configured one). load: load and probe the models in the background at
    start-up (the server answers /health at once; /ready turns 200 when every provider passed)."""
    own = pipeline is None
    if settings is None:
        settings = pipeline.settings if pipeline is not None else Settings.load()
    if pipeline is None:
        pipeline = VoicePipeline.from_settings(settings)
    state = ServerState(settings, pipeline, embedder=embedder, own_pipeline=own)
    state.attach_metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("server starting", extra={"profile": state.settings.profile, "providers":
                                           {k: b.provider for k, b in state.backends.items()}})
        for w in state.pipeline.warnings:
            log.warning(w)
        state.start_loading() if load else state.lazy()
        try:
            yield
        finally:
            state.close()

    app = FastAPI(title="spark-voice", version=__version__, lifespan=lifespan,
                  description="Local voice assistant server with OpenAI-compatible routes "
                              "(see spark_voice/serve/README.md).")
    app.state.sv = state
    # outermost last: RequestContext -> OriginCheck -> ApiKeyAuth -> BodyLimit -> routes
    app.add_middleware(BodyLimit, limit=int(settings.serve_max_body_mb * 1024 * 1024))
    app.add_middleware(ApiKeyAuth, key=settings.serve_api_key)
    app.add_middleware(OriginCheck, allowed=settings.serve_allowed_origins,
                       loopback=settings.serve_host in ("127.0.0.1", "localhost", "::1"))
    app.add_middleware(RequestContext, state=state)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(SparkVoiceError, _typed_error)  # a typed library error is its 4xx/503
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for router in ROUTERS:
        app.include_router(router)
    return app


async def _api_error(request: Request, exc: Any) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _typed_error(request: Request, exc: Any) -> JSONResponse:
    return await _api_error(request, api_error(exc))


async def _http_error(request: Request, exc: Any) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return await _api_error(request, ApiError(exc.status_code, str(exc.detail), code=code, headers=exc.headers))
