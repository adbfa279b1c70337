"""Sentence embeddings in-process on llama-cpp-python (``Llama(embedding=True)``).

Settings map to engine parameters:

=========================  ===============================================================
EMBEDDING_MODEL(_DIR)      ``model_path`` (a local GGUF: nomic-bert, bert, ...)
EMBEDDING_POOLING          ``pooling_type``: mean / cls / last (``none`` gives token vectors
                           and is refused)
EMBEDDING_UBATCH           ``n_ubatch`` = ``n_batch`` = ``n_ctx``: tokens per decode call. An
                           encoder (BERT) needs a whole batch in one micro-batch, so this is
                           also the most tokens one text can have
EMBEDDING_PARALLEL         texts (sequences) packed into one decode call. llama-cpp-python
                           0.3.36 cannot pass ``n_seq_max`` (it sets min(n_batch, 256) itself
                           for embedding contexts), so this caps our own batching instead
EMBEDDING_NGPU             ``n_gpu_layers`` (-1 = all; BACKEND=cpu forces 0)
EMBEDDING_THREADS          ``n_threads`` and ``n_threads_batch``
EMBEDDING_*_PREFIX         prepended by ``kind``: document (ingest) or query (search)
=========================  ===============================================================

Texts longer than the model's context (``min(training context, EMBEDDING_UBATCH)`` tokens) are
**truncated** to it (the trailing separator token is kept) and a warning is logged; they are
not split. Output: float32 ``(n, dim)``, every row L2-normalised. ``dim`` and ``model_id``
(``<file name>:<architecture>:<dim>:<pooling>``, which RAG stores to refuse an index built with
another model) are known once the model is loaded (reading them loads it).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BackendUnavailable, ConfigError, ModelNotFound
from .base import BaseBackend
from .llm_llama_cpp import LlamaCppPlacement, gpu_offload_supported, import_llama_cpp

log = logging.getLogger("spark_voice.embedding")

POOLINGS = ("mean", "cls", "last")


class LlamaCppEmbedder(LlamaCppPlacement, BaseBackend):
    provider = "llama_cpp"
    role = "embedding"

    def __init__(self, model_path: str | Path, *, pooling: str = "mean", ubatch: int = 512, parallel: int = 4,
                 n_gpu_layers: int = -1, n_threads: int = 2, backend: str = "cuda", document_prefix: str = "",
                 query_prefix: str = "", endpoint: str = "") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"EMBEDDING_POOLING: invalid value {pooling!r}; accepted values: "
                              f"{', '.join(POOLINGS)} ('none' gives token vectors, not sentence vectors)")
        self.model_path = Path(model_path)
        self.pooling = pooling
        self.ubatch = int(ubatch)
        self.parallel = max(1, int(parallel))
        self.backend = backend
        self.n_gpu_layers = 0 if backend == "cpu" else int(n_gpu_layers)
        self.n_threads = int(n_threads)
        self.document_prefix, self.query_prefix = document_prefix, query_prefix
        self.endpoint_override = endpoint
        self.llm: Any = None
        self.arch = ""
        self.max_tokens = 0          # per text, after truncation
        self._dim = 0
        self._model_id = ""
        self._offload = False
        self._embed_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> "LlamaCppEmbedder":
        return cls(settings.model_path("embedding"), pooling=settings.embedding_pooling,
                   ubatch=settings.embedding_ubatch, parallel=settings.embedding_parallel,
                   n_gpu_layers=settings.embedding_ngpu, n_threads=settings.embedding_threads,
                   backend=settings.backend, document_prefix=settings.embedding_document_prefix,
                   query_prefix=settings.embedding_query_prefix, endpoint=settings.embedding_endpoint)

    # ------------------------------------------------------------------ load / health
    def _load(self) -> None:
        llama_cpp = import_llama_cpp("embed")
        if not self.model_path.is_file():
            raise ModelNotFound(f"embedding model {self.model_path} not found (EMBEDDING_MODEL / "
                                f"EMBEDDING_MODEL_DIR); for the small dev model run "
                                f"`spark-voice models prepare --small`")
        pool = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
                "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}[self.pooling]
        try:
            llm = llama_cpp.Llama(model_path=str(self.model_path), embedding=True, n_ctx=self.ubatch,
                                  n_batch=self.ubatch, n_ubatch=self.ubatch, n_threads=self.n_threads,
                                  n_threads_batch=self.n_threads, n_gpu_layers=self.n_gpu_layers,
                                  pooling_type=pool, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendUnavailable(f"llama.cpp could not load {self.model_path}: {exc}") from exc
        md = llm.metadata or {}
        self.arch = str(md.get("general.architecture", "unknown"))
        self._dim = int(llm.n_embd())
        self.max_tokens = max(1, min(int(llm._model.n_ctx_train()) or self.ubatch, self.ubatch))
        self._model_id = f"{self.model_path.name}:{self.arch}:{self._dim}:{self.pooling}"
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._keep_last = bool(llama_cpp.llama_vocab_get_add_eos(vocab))  # e.g. BERT's trailing [SEP]
        self._filler = next((t for t in (llm.token_bos(), llm.token_eos()) if t >= 0), 0)
        self._get_seq = llama_cpp.llama_get_embeddings_seq
        # sequences per decode: ours, within what the context was built for
        self._seq_cap = min(self.parallel, int(llm.context_params.n_seq_max) or 1)
        self._offload = bool(llama_cpp.llama_supports_gpu_offload())
        self.llm = llm
        log.info("embedder loaded", extra={"model": str(self.model_path), "arch": self.arch, "dim": self._dim,
                                           "pooling": self.pooling, "max_tokens": self.max_tokens})

    def _probe(self) -> None:
        v = self.embed(["probe"], kind="query")
        if v.shape != (1, self.dim) or not np.isfinite(v).all():
            raise BackendUnavailable(f"embedding probe returned shape {v.shape}")

    @property
    def dim(self) -> int:
        self.load()
        return self._dim

    @property
    def model_id(self) -> str:
        self.load()
        return self._model_id

    def warnings(self) -> list[str]:
        if self.backend == "cuda" and self.n_gpu_layers != 0 and gpu_offload_supported() is False:
            return ["embedding: BACKEND=cuda but llama-cpp-python was built without GPU offload: "
                    "embeddings run on the CPU"]
        return []

    def close(self) -> None:
        with self._embed_lock:
            if self.llm is not None:
                self.llm.close()
                self.llm = None
        super().close()

    # ------------------------------------------------------------------ embedding
    def tokenize(self, text: str) -> list[int]:
        """Tokens of one text as embedded (special tokens of the model added, truncated)."""
        self.load()
        toks = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        if len(toks) > self.max_tokens:
            log.warning("embedding input truncated", extra={"tokens": len(toks), "max_tokens": self.max_tokens,
                                                            "chars": len(text)})
            toks = toks[:self.max_tokens - 1] + toks[-1:] if self._keep_last else toks[:self.max_tokens]
        return toks or [self._filler]  # an empty text without special tokens

    def embed(self, texts: Sequence[str], *, kind: str = "document") -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised; `kind` picks the document/query prefix."""
        if kind not in ("document", "query"):
            raise ValueError(f"kind must be 'document' or 'query', not {kind!r}")
        if isinstance(texts, str):
            texts = [texts]
        self.load()
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        if not len(texts):
            return out
        prefix = self.document_prefix if kind == "document" else self.query_prefix
        with self._embed_lock:
            if self.llm is None:
                raise BackendUnavailable("the embedder was closed")
            llm = self.llm
            batch, ctx = llm._batch, llm._ctx
            n_batch, cap, dim, get_seq = self.ubatch, self._seq_cap, self._dim, self._get_seq
            rows: list[int] = []
            used = 0

            def decode() -> None:
                ctx.kv_cache_clear()
                try:
                    ctx.decode(batch)
                except RuntimeError as exc:
                    raise BackendUnavailable(f"llama.cpp embedding failed: {exc}") from exc
                finally:
                    batch.reset()
                for seq, row in enumerate(rows):
                    out[row] = np.ctypeslib.as_array(get_seq(ctx.ctx, seq), shape=(dim,))

            batch.reset()
            try:
                for row, text in enumerate(texts):
                    toks = self.tokenize(prefix + str(text))
                    if rows and (used + len(toks) > n_batch or len(rows) >= cap):
                        decode()
                        rows, used = [], 0
                    batch.add_sequence(toks, len(rows), True)
                    rows.append(row)
                    used += len(toks)
                if rows:
                    decode()
            finally:
                batch.reset()
                ctx.kv_cache_clear()
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out
