"""Search a RAG index built by :mod:`spark_voice.rag.ingest` from inside a voice turn.

``IndexRetriever.open(path, embedder, settings=s).search("question")`` embeds the query
(``kind="query"``, so query prefixes apply), takes the top RAG_TOP_K chunks by cosine and drops
those below RAG_MIN_SCORE. Opening refuses an index built with another embedding model or
dimension, and a missing or corrupt index, with a :class:`~spark_voice.errors.RagIndexError`
naming the file. When a later ingest commits a new index the retriever picks it up on the next
search (a cheap ``stat`` per query); if the new one cannot be loaded it keeps the old one.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ..errors import RagIndexError
from ..types import Hit
from .store import IndexData, IndexStore, normalize_rows, search_index, set_threads

log = logging.getLogger("spark_voice.rag")


def _default(settings: Any, name: str) -> Any:
    if settings is not None and hasattr(settings, name):
        return getattr(settings, name)
    from ..config import Settings

    return Settings.model_fields[name].default


def _identity(embedder: Any) -> tuple[str, int]:
    """The embedder's model id and dimension, without forcing a model load."""
    try:
        model_id = str(getattr(embedder, "model_id", "") or "")
    except Exception:
        model_id = ""
    try:
        dim = int(getattr(embedder, "dim", 0) or 0)
    except Exception:
        dim = 0
    return model_id, dim


class IndexRetriever:
    """A loaded index plus the embedder that made it; ``search`` returns pipeline Hits."""

    def __init__(self, store: IndexStore, data: IndexData, embedder: Any, *, top_k: int = 3,
                 min_score: float = 0.2, auto_reload: bool = True) -> None:
        self.store, self.embedder = store, embedder
        self.top_k, self.min_score, self.auto_reload = int(top_k), float(min_score), auto_reload
        self._data = data
        self._bad_key: tuple = ()
        self._reload_lock = threading.Lock()

    @classmethod
    def open(cls, index_path: str | Path, embedder: Any, settings: Any = None, *, top_k: int | None = None,
             min_score: float | None = None, auto_reload: bool = True) -> IndexRetriever:
        store = IndexStore(index_path)
        # A voice turn searches one query at a time: faiss is memory-bound there and OpenMP threads
        # only add overhead (100k x 384 flat, quiet 2-core box: 6.7 ms on 1 thread, 14.8 ms on 2).
        # RAG_THREADS is for ingest and index builds.
        set_threads(1)
        data = store.load(index=True)
        cls._check(data, embedder)
        return cls(store, data, embedder, top_k=top_k or _default(settings, "rag_top_k"),
                   min_score=_default(settings, "rag_min_score") if min_score is None else min_score,
                   auto_reload=auto_reload)

    @staticmethod
    def _check(data: IndexData, embedder: Any) -> None:
        model_id, dim = _identity(embedder)
        data.check_embedder(model_id, dim, hint="; re-ingest with --rebuild using this embedder, or configure "
                                                "the embedding model the index was built with")

    # ------------------------------------------------------------------ properties
    @property
    def data(self) -> IndexData:
        return self._data

    def __len__(self) -> int:
        return len(self._data.chunks)

    def info(self) -> dict[str, Any]:
        h = self._data.header
        return {"path": str(self.store.path), "chunks": len(self._data.chunks), "files": h.get("n_files"),
                "embedding_model": h.get("embedding_model"), "dim": h.get("dim"),
                "index_type": h.get("index_type"), "stamp": self._data.stamp, "updated": h.get("updated")}

    # ------------------------------------------------------------------ reload
    def reload_if_changed(self) -> bool:
        """Load the index again when the file changed since; True when a new one was taken."""
        key = self.store.stat_key()
        if not key or key == self._data.stat or key == self._bad_key:
            return False
        with self._reload_lock:
            if key == self._data.stat:
                return False
            try:
                data = self.store.load(index=True)
                self._check(data, self.embedder)
            except RagIndexError as exc:
                self._bad_key = key
                log.warning("rag: new index not usable, keeping the loaded one", extra={"error": str(exc)})
                return False
            self._data = data
            log.info("rag: index reloaded", extra={"index": str(self.store.path), "chunks": len(data.chunks)})
            return True

    # ------------------------------------------------------------------ search
    def search(self, query: str, top_k: int | None = None) -> list[Hit]:
        if self.auto_reload:
            self.reload_if_changed()
        data = self._data
        query = (query or "").strip()
        k = int(top_k or self.top_k)
        if not query or k <= 0 or not data.chunks:
            return []
        q = normalize_rows(self.embedder.embed([query], kind="query"))
        if q.shape != (1, data.dim):
            model_id, _ = _identity(self.embedder)
            raise RagIndexError(f"index {self.store.path} was built with embedding model {data.model_id!r} "
                                f"(dim {data.dim}), but the embedder {model_id!r} returns dim {q.shape[-1]}")
        scores, ids = search_index(data.index, q, k)
        hits = []
        for score, i in zip(scores[0].tolist(), ids[0].tolist()):
            if i < 0 or score < self.min_score:
                continue
            c = data.chunks[i]
            hits.append(Hit(text=c["text"], source=c["source"], score=float(score), chunk_id=int(i),
                            start=int(c["start"]), end=int(c["end"])))
        return hits

    def close(self) -> None:
        self._data.index = None
