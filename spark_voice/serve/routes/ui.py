"""GET / and /ui: the voice page; GET /static/*: its files (package data, spark_voice/serve/static)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from ..openai_compat import ApiError

router = APIRouter(tags=["ui"])

STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "audio-worklet.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# The page loads nothing from elsewhere; media from the microphone, sockets to this server only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; media-src 'self' blob:; worker-src 'self' blob:; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


def _file(name: str) -> Response:
    if name not in STATIC:
        raise ApiError(404, f"no such file: /static/{name}", "invalid_request_error", code="not_found")
    data = resources.files("spark_voice.serve").joinpath("static").joinpath(name).read_bytes()
    return Response(data, media_type=STATIC[name],
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                             "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"})


@router.get("/", include_in_schema=False)
@router.get("/ui", include_in_schema=False)
async def page() -> Response:
    return _file("index.html")


@router.get("/static/{name}", include_in_schema=False)
async def static(name: str) -> Response:
    return _file(name)
