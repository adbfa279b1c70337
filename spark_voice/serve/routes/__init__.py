"""The server's routers, one per concern; :func:`spark_voice.serve.app.create_app` includes them."""

from . import audio, chat, embeddings, health, models, voice

ROUTERS = (health.router, models.router, audio.router, chat.router, embeddings.router, voice.router)

__all__ = ["ROUTERS"]
