"""Ingest a folder of documents into a RAG index: read, chunk, embed in batches, commit atomically.

Reads ``.txt``, ``.md`` and ``.markdown`` files (UTF-8; hidden files and folders are skipped). PDF
and HTML are not read: no small, well-kept parser is a dependency of spark-voice, and a half-way
text extraction would put garbage into prompts — convert them to text first.

Incremental by content hash (sha256 of the file bytes): unchanged files keep their stored vectors,
only new or changed files are chunked and embedded, removed files are dropped, and ``rebuild=True``
starts from nothing. A change of RAG_CHUNK_CHARS/RAG_CHUNK_OVERLAP re-chunks (and re-embeds) every
file; a change of RAG_INDEX_TYPE only rebuilds the FAISS index from the stored vectors. An index
built with another embedding model id or dimension is refused unless ``rebuild=True``. One ingest
at a time per index (a lock file); see :mod:`spark_voice.rag.store` for the on-disk format and why
a killed ingest leaves the previous index loadable.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RagIndexError
from .chunking import split_text
from .store import INDEX_TYPES, IndexStore, build_index, normalize_rows, set_threads

log = logging.getLogger("spark_voice.rag")

SUFFIXES = (".txt", ".md", ".markdown")
DEFAULT_BATCH = 32


@dataclass
class IngestSummary:
    source: str
    index: str
    files_added: int = 0
    files_changed: int = 0
    files_removed: int = 0
    files_unchanged: int = 0
    chunks: int = 0            # chunks in the index after the run
    chunks_embedded: int = 0   # chunks embedded by this run
    chunks_removed: int = 0    # chunks of changed/removed files dropped
    seconds: float = 0.0
    embed_seconds: float = 0.0
    index_type: str = ""
    embedding_model: str = ""
    dim: int = 0
    written: bool = False      # False: nothing changed, the index was left as it was
    stamp: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def chunks_per_s(self) -> float:
        return self.chunks_embedded / self.seconds if self.seconds > 0 else 0.0

    @property
    def files(self) -> int:
        return self.files_added + self.files_changed + self.files_unchanged

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunks_per_s"] = round(self.chunks_per_s, 2)
        d["seconds"], d["embed_seconds"] = round(self.seconds, 3), round(self.embed_seconds, 3)
        return d

    def __str__(self) -> str:
        state = "written" if self.written else "unchanged (nothing to do)"
        return (f"index {self.index}: {state}\n"
                f"  files:  {self.files_added} added, {self.files_changed} changed, "
                f"{self.files_removed} removed, {self.files_unchanged} unchanged\n"
                f"  chunks: {self.chunks} in the index, {self.chunks_embedded} embedded, "
                f"{self.chunks_removed} dropped\n"
                f"  time:   {self.seconds:.2f} s ({self.embed_seconds:.2f} s embedding, "
                f"{self.chunks_per_s:.1f} chunks/s)\n"
                f"  model:  {self.embedding_model} (dim {self.dim}), index {self.index_type}"
                + "".join(f"\n  warning: {w}" for w in self.warnings))


def _setting(settings: Any, name: str) -> Any:
    if settings is not None and hasattr(settings, name):
        return getattr(settings, name)
    from ..config import Settings

    return Settings.model_fields[name].default


def scan(source_dir: Path, *, follow_symlinks: bool = False, max_bytes: int | None = None,
         warnings: list[str] | None = None) -> list[tuple[str, Path]]:
    """(relative posix path, path) of the documents under source_dir, sorted.

    A document whose real path lies outside source_dir (a symlink to ~/.ssh/id_rsa named notes.txt)
    is skipped unless `follow_symlinks`; so is one larger than `max_bytes`. Each skip adds a line
    to `warnings`."""
    out = []
    root = source_dir.resolve()
    for p in source_dir.rglob("*"):
        rel = p.relative_to(source_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() not in SUFFIXES or not p.is_file():
            continue
        if not follow_symlinks:
            real = p.resolve()
            if real != root and root not in real.parents:
                if warnings is not None:
                    warnings.append(f"{rel.as_posix()}: a link to {real}, outside the source folder; skipped "
                                    "(ingest --follow-symlinks includes it)")
                continue
        if max_bytes is not None:
            try:
                nbytes = p.stat().st_size
            except OSError:
                nbytes = 0  # reported when it is read
            if nbytes > max_bytes:
                if warnings is not None:
                    warnings.append(f"{rel.as_posix()}: {nbytes / 1e6:.1f} MB is over the "
                                    f"{max_bytes / 1e6:g} MB limit (RAG_MAX_FILE_MB); skipped")
                continue
        out.append((rel.as_posix(), p))
    return sorted(out)


def embedder_identity(embedder: Any) -> tuple[str, int]:
    """(model id, dim) of an embedder, loading it when the dimension is known only after loading."""
    dim = getattr(embedder, "dim", 0)
    if not dim and hasattr(embedder, "load"):
        embedder.load()
        dim = getattr(embedder, "dim", 0)
    model_id = str(getattr(embedder, "model_id", "") or "")
    if not model_id or not dim:
        raise RagIndexError(f"embedder {type(embedder).__name__} reports no model id / dimension")
    return model_id, int(dim)


def _progress(total: int, enabled: bool):
    if not enabled or total <= 0 or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="chunk", desc="embedding", file=sys.stderr, dynamic_ncols=True)


def embed_batches(embedder: Any, texts: list[str], dim: int, batch_size: int, progress: bool = False
                  ) -> np.ndarray:
    """Embed ``texts`` as documents, ``batch_size`` at a time -> (n, dim) unit rows."""
    out = np.empty((len(texts), dim), dtype=np.float32)
    bar = _progress(len(texts), progress)
    try:
        for i in range(0, len(texts), batch_size):
            part = texts[i:i + batch_size]
            v = normalize_rows(embedder.embed(part, kind="document"))
            if v.shape != (len(part), dim):
                raise RagIndexError(f"embedder returned shape {v.shape} for {len(part)} texts; "
                                    f"expected ({len(part)}, {dim})")
            out[i:i + len(part)] = v
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    return out


def ingest(source_dir: str | Path, index_path: str | Path, embedder: Any, settings: Any = None, *,
           rebuild: bool = False, progress: bool = True, batch_size: int | None = None,
           index_type: str | None = None, follow_symlinks: bool = False) -> IngestSummary:
    """Bring the index at ``index_path`` in step with the documents under ``source_dir``.

    Links leading out of ``source_dir`` are skipped unless `follow_symlinks`; documents over
    RAG_MAX_FILE_MB are skipped; both with a warning in the summary."""
    t0 = time.perf_counter()
    source = Path(source_dir).expanduser().resolve()
    index_path = Path(index_path).expanduser()
    if not source.is_dir():
        raise RagIndexError(f"source folder {source} does not exist or is not a folder")
    size, overlap = int(_setting(settings, "rag_chunk_chars")), int(_setting(settings, "rag_chunk_overlap"))
    split_text("", size, overlap)  # validates the pair early (ConfigError)
    itype = index_type or str(_setting(settings, "rag_index_type"))
    if itype not in INDEX_TYPES:
        raise RagIndexError(f"index type {itype!r} unknown; accepted values: {', '.join(INDEX_TYPES)}")
    batch = int(batch_size or DEFAULT_BATCH)
    if batch < 1:
        raise RagIndexError(f"batch size must be >= 1, got {batch}")
    set_threads(_setting(settings, "rag_threads"))

    model_id, dim = embedder_identity(embedder)
    doc_prefix = getattr(embedder, "document_prefix", None)
    doc_prefix = doc_prefix if isinstance(doc_prefix, str) else None
    summary = IngestSummary(str(source), str(index_path), index_type=itype, embedding_model=model_id, dim=dim)
    store = IndexStore(index_path)
    with store.lock() as lock:
        store.remove_temps()  # left by a killed ingest (we hold the lock: nobody else writes)
        old = None
        if store.exists() and not rebuild:
            try:
                old = store.load(vectors=True, index=True)
            except RagIndexError as exc:
                raise RagIndexError(f"{exc} (or run ingest with --rebuild to start over)") from None
            old.check_embedder(model_id, dim, hint="; run ingest with --rebuild to re-embed everything "
                                                   "with the new model")
        old_header = old.header if old is not None else {}
        rechunk = old is not None and (old_header.get("chunk_chars") != size
                                       or old_header.get("chunk_overlap") != overlap)
        if rechunk:
            summary.warnings.append(f"chunk size/overlap changed ({old_header.get('chunk_chars')}/"
                                    f"{old_header.get('chunk_overlap')} -> {size}/{overlap}): "
                                    f"re-embedding every file")
        elif old is not None and old.header.get("document_prefix", doc_prefix) != doc_prefix:
            rechunk = True
            summary.warnings.append(f"EMBEDDING_DOCUMENT_PREFIX changed ({old.header.get('document_prefix')!r} "
                                    f"-> {doc_prefix!r}): re-embedding every file")
        old_files: dict[str, dict] = dict(old.files) if old is not None else {}

        # classify by content hash
        max_bytes = int(float(_setting(settings, "rag_max_file_mb")) * 1e6)
        docs = scan(source, follow_symlinks=follow_symlinks, max_bytes=max_bytes, warnings=summary.warnings)
        if not docs:
            if old_files:  # most likely a wrong --source: do not silently empty the index
                raise RagIndexError(f"no {', '.join(SUFFIXES)} files under {source}, but the index holds "
                                    f"{len(old_files)} files; refusing to empty it (use --rebuild to start over)")
            summary.warnings.append(f"no {', '.join(SUFFIXES)} files under {source}")
        seen: set[str] = set()
        todo: list[tuple[str, str, str, int]] = []  # rel, sha, text, size
        unchanged: set[str] = set()
        for rel, p in docs:
            seen.add(rel)
            try:
                raw = p.read_bytes()
            except OSError as exc:
                if rel in old_files and not rechunk:  # keep what the index has for it
                    summary.warnings.append(f"{rel}: cannot read ({exc}); kept its indexed version")
                    unchanged.add(rel)
                else:
                    summary.warnings.append(f"{rel}: cannot read ({exc}); skipped")
                    seen.discard(rel)
                continue
            sha = hashlib.sha256(raw).hexdigest()
            prev = old_files.get(rel)
            if prev is not None and prev.get("sha256") == sha and not rechunk:
                unchanged.add(rel)
                continue
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                text = raw.decode("utf-8-sig", errors="replace")
                summary.warnings.append(f"{rel}: not valid UTF-8; undecodable bytes replaced")
            todo.append((rel, sha, text, len(raw)))
            if prev is None:
                summary.files_added += 1
            else:
                summary.files_changed += 1
        removed = [rel for rel in old_files if rel not in seen]
        summary.files_removed = len(removed)
        summary.files_unchanged = len(unchanged)

        index_changed = old is not None and old.header.get("index_type_requested") != itype
        if old is not None and not todo and not removed and not index_changed:
            summary.chunks, summary.index_type, summary.stamp = len(old.chunks), old.header["index_type"], old.stamp
            store.cleanup(keep={old.stamp, old.header.get("previous")})  # sidecars of killed ingests
            summary.seconds = time.perf_counter() - t0
            log.info("ingest: nothing changed", extra={"index": str(index_path)})
            return summary

        # chunk and embed the new/changed files
        new_records: list[dict] = []
        new_files: dict[str, dict] = {}
        for rel, sha, text, nbytes in todo:
            pieces = split_text(text, size, overlap)
            new_files[rel] = {"sha256": sha, "size": nbytes, "chunks": len(pieces)}
            new_records += [{"source": rel, "start": c.start, "end": c.end, "sha256": sha, "text": c.text}
                            for c in pieces]
        te = time.perf_counter()
        new_vectors = embed_batches(embedder, [r["text"] for r in new_records], dim, batch, progress)
        summary.embed_seconds = time.perf_counter() - te
        summary.chunks_embedded = len(new_records)

        # keep the rows of unchanged files (old order), then the new rows
        old_chunks = old.chunks if old is not None else []
        keep_rows = [i for i, c in enumerate(old_chunks) if c["source"] in unchanged]
        summary.chunks_removed = len(old_chunks) - len(keep_rows)
        records = [old_chunks[i] for i in keep_rows] + new_records
        for i, rec in enumerate(records):
            rec["id"] = i
        records = [{"id": r["id"], **{k: v for k, v in r.items() if k != "id"}} for r in records]
        if old is not None and old.vectors is not None and keep_rows:
            vectors = np.concatenate([old.vectors[keep_rows], new_vectors]) if len(new_vectors) else \
                np.ascontiguousarray(old.vectors[keep_rows])
        else:
            vectors = new_vectors
        files = {rel: old_files[rel] for rel in sorted(unchanged)}
        files.update(new_files)

        # the FAISS index: append when only files were added, else rebuild from the vectors
        old_index = old.index if old is not None else None
        append = (old_index is not None and not index_changed
                  and len(keep_rows) == len(old_chunks) and old_header.get("index_type") == itype
                  and itype != "sq8")  # sq8's quantiser ranges are trained on all the vectors
        if append and old_index is not None:
            index, actual, params = old_index, itype, dict(old_header.get("index_params") or {})
            if len(new_vectors):
                index.add(new_vectors)
        else:
            index, actual, params, warns = build_index(vectors, itype, dim)
            summary.warnings += warns
        header = {"embedding_model": model_id, "dim": dim, "index_type": actual, "index_type_requested": itype,
                  "index_params": params, "metric": "inner_product", "normalized": True,
                  "chunk_chars": size, "chunk_overlap": overlap, "source_dir": str(source),
                  "document_prefix": doc_prefix, "n_files": len(files), "files": files,
                  "spark_voice": _version()}
        if old is not None and old.header.get("created"):
            header["created"] = old.header["created"]
        summary.stamp = store.commit(header, records, vectors, index, lock=lock,
                                     previous=old.stamp if old is not None else None)
        summary.written, summary.chunks, summary.index_type = True, len(records), actual
    summary.seconds = time.perf_counter() - t0
    for w in summary.warnings:
        log.warning(w)
    log.info("ingest done", extra={"index": str(index_path), **{k: v for k, v in summary.as_dict().items()
                                                                  if k not in ("warnings", "index")}})
    return summary


def _version() -> str:
    try:
        from .. import __version__

        return str(__version__)
    except Exception:
        return ""
