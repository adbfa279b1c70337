"""The thin server: `python -m spark_voice.serve` / `spark-voice serve` (FastAPI on uvicorn).

Routes, JSON shapes and the websocket protocol: spark_voice/serve/README.md. FastAPI, uvicorn
and prometheus-client are imported only when an app is built, so `import spark_voice` (and the
CLI parser) never needs them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .cli import serve

        return serve
    raise AttributeError(name)
