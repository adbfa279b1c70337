"""The server's routers, one per concern; :func:`spark_voice.serve.app.create_app` includes them."""

from . import audio, chat, embeddings, health, models, realtime, ui, voice

ROUTERS = (health.router, models.router, audio.router, chat.router, embeddings.router, voice.router,
           realtime.router, ui.router)

__all__ = ["ROUTERS"]
