"""On-disk RAG index: a FAISS index plus a metadata sidecar, replaced atomically together.

Files, for ``RAG_INDEX_PATH=data/faiss/index.bin``::

    index.bin                          the FAISS index (a plain faiss file: faiss.read_index works)
    index.bin.<stamp>.meta.jsonl       line 1 {"header": ...}; then one JSON object per chunk
    index.bin.<stamp>.vectors.npy      the chunk vectors (float32, L2-normalised), row = chunk id
    index.bin.lock                     fcntl.flock'ed by the ingest that is writing (holds its pid)

``<stamp>`` is the first 16 hex digits of the sha256 of ``index.bin``'s bytes; the header holds
the full sha256 of both the index and the vectors file. The index file *names* its sidecars by its
own content hash, so the pair can never be mixed up: a reader hashes ``index.bin``, opens the
sidecar of that stamp and checks the full hash (this is also the corruption check).

Why a kill at any moment leaves a loadable index — a commit (:meth:`IndexStore.commit`) is:

1. write ``vectors.npy`` and ``meta.jsonl`` of the new stamp (temp file, fsync, rename, fsync dir);
2. write the new ``index.bin`` to a temp file, fsync, **rename over index.bin** (the one commit
   point), fsync the folder;
3. delete sidecars other than the new stamp and the previous one, and stale temp files.

Before step 2's rename ``index.bin`` is the old file and its sidecars are untouched (old sidecars
are deleted only in step 3, after the commit); after it, the new sidecars already exist on disk.
Either way the file found at ``index.bin`` has its sidecar. If the new index bytes equal the old
ones (same vectors, e.g. a renamed file) step 1 atomically replaces a sidecar with another one
that is equally valid for those bytes. A reader racing a writer retries when the sidecar of the
stamp it read has just been cleaned up; the previous generation is kept to make that rare.

Removing vectors of changed or removed files: the vectors are stored next to the index, so an
incremental ingest keeps the rows of unchanged files, embeds only new/changed files and rebuilds
the FAISS index from the kept + new rows (exact for flat; HNSW cannot delete, so rebuilding is the
honest way). When a run only adds files and the index type is unchanged, the new rows are
appended to the loaded index instead (no rebuild). Chunk id = row number, renumbered each commit.

Index types (RAG_INDEX_TYPE): ``flat`` = IndexFlatIP, exact inner product on unit vectors
(cosine); ``hnsw`` = IndexHNSWFlat(M=32, METRIC_INNER_PRODUCT); ``ivf`` = IndexIVFFlat trained on
the vectors (nlist ~ 4 sqrt(n)), which needs >= IVF_MIN_VECTORS vectors — with fewer the store
builds ``flat`` and warns; ``sq8`` = IndexScalarQuantizer(QT_8bit, METRIC_INNER_PRODUCT): an
exhaustive scan of 8-bit codes, a quarter of flat's memory traffic (100k x 384 on one core:
4.3 ms vs 7.9 ms, recall@3 0.975 on random unit vectors); it is always rebuilt, never appended
to, since its per-dimension ranges are trained on the vectors. faiss is imported lazily (extra ``rag``).

Length: one file because the commit protocol above (write order, stamps, cleanup, locking, the
readers' retry) is one invariant; split, each half would have to re-state it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingDependency, RagIndexError
from ..fsutil import fsync_dir

log = logging.getLogger("spark_voice.rag")

FORMAT = "spark-voice-rag"
FORMAT_VERSION = 1
INDEX_TYPES = ("flat", "hnsw", "ivf", "sq8")
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
IVF_MIN_VECTORS = 1000
STAMP_LEN = 16


def faiss_module():
    """Import faiss (lazily); MissingDependency names the extra."""
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependency("faiss-cpu", "rag", str(exc)) from None
    return faiss


def set_threads(n: int | None) -> None:
    """FAISS OpenMP threads (process-wide)."""
    if n:
        faiss_module().omp_set_num_threads(int(n))


def sha256_hex(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """float32, C-contiguous, rows scaled to unit length (zero rows left as they are)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise RagIndexError(f"embedder returned an array of shape {v.shape}; expected (n, dim)")
    if v.size and not np.isfinite(v).all():
        raise RagIndexError("embedder returned NaN or infinite values")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(v / norms, dtype=np.float32)


# ----------------------------------------------------------------------------------- index
def build_index(vectors: np.ndarray, index_type: str, dim: int) -> tuple[Any, str, dict, list[str]]:
    """A FAISS index holding ``vectors`` -> (index, actual type, params, warnings)."""
    faiss = faiss_module()
    if index_type not in INDEX_TYPES:
        raise RagIndexError(f"RAG_INDEX_TYPE={index_type!r} unknown; accepted values: {', '.join(INDEX_TYPES)}")
    n = len(vectors)
    warnings: list[str] = []
    params: dict[str, Any] = {}
    if index_type == "ivf":
        nlist = int(min(4 * math.sqrt(max(n, 1)), n // 39))
        if n < IVF_MIN_VECTORS or nlist < 8:
            warnings.append(f"RAG_INDEX_TYPE=ivf needs at least {IVF_MIN_VECTORS} vectors to train "
                            f"(the corpus has {n}); built an exact flat index instead")
            index_type = "flat"
        else:
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.add(vectors)
            nprobe = int(min(nlist, max(8, nlist // 8)))
            index.nprobe = nprobe
            params = {"nlist": nlist, "nprobe": nprobe}
            return index, "ivf", params, warnings
    if index_type == "sq8" and n:
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.add(vectors)
        return index, "sq8", params, warnings
    if index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        if n:
            index.add(vectors)
        return index, "hnsw", {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION,
                               "ef_search": HNSW_EF_SEARCH}, warnings
    index = faiss.IndexFlatIP(dim)
    if n:
        index.add(vectors)
    return index, "flat", params, warnings


def apply_params(index: Any, index_type: str, params: dict) -> None:
    """Search-time parameters are not all serialised: set them again after loading."""
    if index_type == "hnsw" and "ef_search" in params:
        index.hnsw.efSearch = int(params["ef_search"])
    elif index_type == "ivf" and "nprobe" in params:
        index.nprobe = int(params["nprobe"])


def search_index(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the top-k rows; k is capped to the index size; id -1 = no hit."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    k = max(0, min(int(k), int(index.ntotal)))
    if k == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    return index.search(q, k)


# ----------------------------------------------------------------------------------- files
@dataclass
class IndexData:
    """A loaded index: header, chunk records (list index = chunk id), FAISS index, vectors."""

    path: Path
    stamp: str
    header: dict
    chunks: list[dict]
    index: Any = None
    vectors: np.ndarray | None = None
    stat: tuple = field(default=(), repr=False)

    @property
    def files(self) -> dict[str, dict]:
        return self.header.get("files", {})

    @property
    def model_id(self) -> str:
        return str(self.header.get("embedding_model", ""))

    @property
    def dim(self) -> int:
        return int(self.header.get("dim", 0))

    def check_embedder(self, model_id: str | None, dim: int | None, hint: str = "") -> None:
        """RagIndexError when the index was built with another embedding model or dimension."""
        bad_model = bool(model_id) and model_id != self.model_id
        bad_dim = dim is not None and dim != 0 and int(dim) != self.dim
        if bad_model or bad_dim:
            raise RagIndexError(
                f"index {self.path} was built with embedding model {self.model_id!r} (dim {self.dim}), "
                f"but the embedder is {model_id!r} (dim {dim if dim else '?'}); vectors of different "
                f"models cannot be compared{hint}")


class IndexLock:
    """Exclusive, non-blocking fcntl.flock on ``<index>.lock``; the file holds the owner's pid.

    The lock dies with its process (kill -9 included), so a stale lock file never blocks."""

    def __init__(self, index_path: Path) -> None:
        self.index_path = Path(index_path)
        self.path = self.index_path.with_name(self.index_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> IndexLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            except OSError:
                pid = "?"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RagIndexError(f"index {self.index_path} is locked by pid {pid} (another ingest is "
                                    f"writing it; wait for it to finish)") from None
            raise RagIndexError(f"cannot lock {self.path}: {exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> IndexLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class IndexStore:
    """The files of one index path (see the module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.dir = self.path.parent
        name = re.escape(self.path.name)
        self._own = re.compile(rf"^{name}\.(?:tmp-\d+-[0-9a-f]+|([0-9a-f]{{{STAMP_LEN}}})\.(?:meta\.jsonl|vectors\.npy))$")  # noqa: E501

    # -- names
    def meta_path(self, stamp: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{stamp}.meta.jsonl")

    def vectors_path(self, stamp: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{stamp}.vectors.npy")

    def _tmp_path(self) -> Path:
        return self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")

    def lock(self) -> IndexLock:
        return IndexLock(self.path)

    def exists(self) -> bool:
        return self.path.is_file()

    def stat_key(self) -> tuple:
        try:
            st = os.stat(self.path)
        except OSError:
            return ()
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    # -- reading
    def load(self, *, vectors: bool = False, index: bool = True) -> IndexData:
        """Read and verify the committed index. RagIndexError when missing or corrupt."""
        for attempt in range(4):
            key = self.stat_key()
            if not key:
                if self.path.exists():
                    raise RagIndexError(f"index {self.path} is not a regular file")
                raise RagIndexError(f"no index at {self.path}; build one with "
                                    f"`spark-voice ingest --source DIR --index {self.path}`")
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                raise RagIndexError(f"cannot read index {self.path}: {exc}") from None
            digest = sha256_hex(data)
            stamp = digest[:STAMP_LEN]
            meta = self.meta_path(stamp)
            try:
                raw = meta.read_bytes()
            except FileNotFoundError:
                if self.stat_key() != key and attempt < 3:
                    continue  # a writer committed while we read: read the new one
                raise RagIndexError(
                    f"index {self.path} is corrupt or incomplete: its metadata {meta.name} is missing "
                    f"(the index file does not match any metadata sidecar); rebuild it with "
                    f"`spark-voice ingest --rebuild`") from None
            except OSError as exc:
                raise RagIndexError(f"cannot read index metadata {meta}: {exc}") from None
            header, chunks = self._parse_meta(meta, raw)
            if header.get("index_sha256") != digest:
                raise RagIndexError(f"index {self.path} does not match its metadata {meta.name} "
                                    f"(sha256 differs); rebuild it with `spark-voice ingest --rebuild`")
            out = IndexData(self.path, stamp, header, chunks, stat=key)
            if index:
                out.index = self._deserialize(data, header)
            if vectors:
                out.vectors = self._load_vectors(stamp, header)
            return out
        raise RagIndexError(f"index {self.path} keeps changing while being read")  # pragma: no cover

    def _parse_meta(self, meta: Path, raw: bytes) -> tuple[dict, list[dict]]:
        def bad(why: str) -> RagIndexError:
            return RagIndexError(f"index metadata {meta} is corrupt ({why}); rebuild the index with "
                                 f"`spark-voice ingest --rebuild`")

        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad(f"not UTF-8: {exc}") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if not lines:
            raise bad("empty file")
        try:
            first = json.loads(lines[0])
            header = first["header"]
            if not isinstance(header, dict):
                raise TypeError("header is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise bad(f"line 1: {exc}") from None
        if header.get("format") != FORMAT:
            raise bad(f"format is {header.get('format')!r}, expected {FORMAT!r}")
        version = header.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise RagIndexError(f"index metadata {meta} has format version {version!r}; this spark-voice "
                                f"reads version <= {FORMAT_VERSION}: upgrade, or rebuild with --rebuild")
        chunks: list[dict] = []
        for i, line in enumerate(lines[1:], start=2):
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or not isinstance(rec["text"], str):
                    raise TypeError("not a chunk record")
                rec["source"], rec["start"], rec["end"] = str(rec["source"]), int(rec["start"]), int(rec["end"])
            except (ValueError, KeyError, TypeError) as exc:
                raise bad(f"line {i}: {exc}") from None
            chunks.append(rec)
        for key in ("embedding_model", "dim", "index_type", "n_chunks", "index_sha256"):
            if key not in header:
                raise bad(f"header has no {key!r}")
        if int(header["n_chunks"]) != len(chunks):
            raise bad(f"header says {header['n_chunks']} chunks, file has {len(chunks)}")
        return header, chunks

    def _deserialize(self, data: bytes, header: dict) -> Any:
        faiss = faiss_module()
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except Exception as exc:  # faiss raises RuntimeError with a C++ message
            raise RagIndexError(f"index {self.path} cannot be read by faiss: {str(exc).strip()[:300]}") from None
        if int(index.ntotal) != int(header["n_chunks"]) or int(index.d) != int(header["dim"]):
            raise RagIndexError(f"index {self.path} holds {index.ntotal} vectors of dim {index.d}, its metadata "
                                f"says {header['n_chunks']} of dim {header['dim']}; rebuild with --rebuild")
        apply_params(index, str(header.get("index_type")), dict(header.get("index_params") or {}))
        return index

    def _load_vectors(self, stamp: str, header: dict) -> np.ndarray:
        p = self.vectors_path(stamp)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise RagIndexError(f"index vectors {p} cannot be read ({exc}); rebuild with --rebuild") from None
        if sha256_hex(raw) != header.get("vectors_sha256"):
            raise RagIndexError(f"index vectors {p} are corrupt (sha256 differs); rebuild with --rebuild")
        try:
            v = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception as exc:
            raise RagIndexError(f"index vectors {p} are corrupt ({exc}); rebuild with --rebuild") from None
        if v.dtype != np.float32 or v.shape != (int(header["n_chunks"]), int(header["dim"])):
            raise RagIndexError(f"index vectors {p} have shape {v.shape}, expected "
                                f"({header['n_chunks']}, {header['dim']}); rebuild with --rebuild")
        return v

    # -- writing (the caller holds the lock)
    def _write_file(self, final: Path, chunks: Iterable[bytes | memoryview]) -> None:
        tmp = self._tmp_path()
        try:
            with open(tmp, "wb") as f:
                f.writelines(chunks)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def commit(self, header: dict, chunks: list[dict], vectors: np.ndarray, index: Any,
               lock: IndexLock | None = None, previous: str | None = None) -> str:
        """Write index + sidecars as one atomic change (see module docstring); returns the stamp."""
        if lock is not None and not lock.held:
            raise RagIndexError("commit needs the index lock")
        faiss = faiss_module()
        self.dir.mkdir(parents=True, exist_ok=True)
        blob = faiss.serialize_index(index)  # numpy uint8
        digest = sha256_hex(blob)
        stamp = digest[:STAMP_LEN]
        vbuf = io.BytesIO()
        np.save(vbuf, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
        vbytes = vbuf.getvalue()
        if previous is None:
            try:
                previous = sha256_hex(self.path.read_bytes())[:STAMP_LEN] if self.exists() else None
            except OSError:
                previous = None
        header = dict(header, format=FORMAT, version=FORMAT_VERSION, stamp=stamp, index_sha256=digest,
                      vectors_sha256=sha256_hex(vbytes), n_chunks=len(chunks), previous=previous,
                      generation=uuid.uuid4().hex, updated=_now())
        header.setdefault("created", header["updated"])
        lines = [json.dumps({"header": header}, ensure_ascii=False)]
        lines += [json.dumps(c, ensure_ascii=False) for c in chunks]
        meta_bytes = ("\n".join(lines) + "\n").encode("utf-8")
        # 1. sidecars of the new stamp
        self._write_file(self.vectors_path(stamp), [vbytes])
        self._write_file(self.meta_path(stamp), [meta_bytes])
        fsync_dir(self.dir)
        # 2. the commit point
        self._write_file(self.path, [memoryview(blob)])
        fsync_dir(self.dir)
        # 3. clean up
        self.cleanup(keep={stamp, previous})
        return stamp

    def remove_temps(self) -> list[Path]:
        """Delete temp files left by a killed writer (only call with the lock held)."""
        removed = []
        for p in self.dir.glob(f"{glob.escape(self.path.name)}.tmp-*") if self.dir.is_dir() else []:
            if self._own.match(p.name):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
        return removed

    def cleanup(self, keep: set[str | None]) -> list[Path]:
        """Delete sidecars of other stamps and stale temp files (only call with the lock held)."""
        removed: list[Path] = []
        try:
            names = os.listdir(self.dir)
        except OSError:
            return removed
        for name in names:
            m = self._own.match(name)
            if not m or (m.group(1) is not None and m.group(1) in keep):
                continue
            p = self.dir / name
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
        return removed
