"""The job's memory: OUT_DIR/manifest.jsonl, one JSON record per processed file, one writer.

Every record is appended with a single write() on an O_APPEND descriptor and fsync'ed before the
call returns, after the file's outputs were written atomically (temp file + rename). So after a
crash, Ctrl-C, a killed node or a power loss the manifest holds whole records of files whose
outputs exist, plus at most one half-written last line, which :meth:`Manifest.open` cuts off.
Only the driver appends (a lock file stops a second run on the same OUT_DIR); workers return
records to it.

Only a small index is kept in memory (hash -> status, path -> size/mtime/hash/status), not the
records, so a manifest of millions of files costs tens of bytes per file.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SparkVoiceError
from .inputs import Task, file_sha256

log = logging.getLogger("spark_voice.batch")

MANIFEST = "manifest.jsonl"
LOCK = ".batch.lock"


class BatchError(SparkVoiceError, RuntimeError):
    """A batch job cannot run (folder missing, OUT_DIR in use, no worker could start ...)."""


@dataclass(frozen=True)
class _Seen:
    size: int
    mtime_ns: int
    sha256: str | None
    status: str
    stages: frozenset[str] = frozenset()


class Manifest:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.by_hash: dict[str, str] = {}  # sha256 -> "ok" if any record of it is ok, else its last status
        self.name_of: dict[str, str] = {}  # sha256 -> file name of its ok record
        self.stages_of: dict[str, frozenset[str]] = {}  # sha256 -> stages its ok records covered
        self._stage_sets: dict[frozenset[str], frozenset[str]] = {}  # one object per distinct set
        self.by_path: dict[str, _Seen] = {}
        self.sizes: set[int] = set()  # sizes of hashed files with a record (rename candidates)
        self.records = 0
        self.dropped_bytes = 0
        self.bad_lines = 0

    @classmethod
    def open(cls, out_dir: Path) -> "Manifest":
        m = cls(Path(out_dir) / MANIFEST)
        m._load()
        return m

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # a crash in the middle of an append
            keep = data.rfind(b"\n") + 1
            self.dropped_bytes = len(data) - keep
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                f.flush()
                os.fsync(f.fileno())
            data = data[:keep]
        for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                self._index(rec)
            except (ValueError, KeyError, TypeError, AttributeError):
                self.bad_lines += 1
                log.warning("manifest %s line %d is not a record; ignored", self.path, n)

    def _index(self, rec: dict[str, Any]) -> None:
        name, status, sha = rec["file"], str(rec["status"]), rec.get("sha256")
        stages = frozenset(rec.get("stages") or ())
        stages = self._stage_sets.setdefault(stages, stages)
        self.by_path[name] = _Seen(int(rec.get("size", -1)), int(rec.get("mtime_ns", -1)), sha, status, stages)
        if sha:
            if self.by_hash.get(sha) != "ok":
                self.by_hash[sha] = status
            if status == "ok":
                self.name_of.setdefault(sha, name)
                both = self.stages_of.get(sha, frozenset()) | stages
                self.stages_of[sha] = self._stage_sets.setdefault(both, both)
            if rec.get("size") is not None:
                self.sizes.add(int(rec["size"]))
        self.records += 1

    def append(self, record: dict[str, Any]) -> None:
        """One line, one write() on an O_APPEND descriptor, fsync before returning."""
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._index(record)

    # ------------------------------------------------------------------ resume decisions
    def status_of(self, sha: str, stages: frozenset[str]) -> str | None:
        """ok when some record of this content covered `stages`; else its last status or None."""
        status = self.by_hash.get(sha)
        if status == "ok" and not stages <= self.stages_of.get(sha, frozenset()):
            return None  # done with fewer stages: to do again with these
        return status

    def cheap_status(self, rel: str, st: os.stat_result, stages: frozenset[str]) -> str | None:
        """Status of an unchanged file (same name, size, mtime as its record) without reading it."""
        seen = self.by_path.get(rel)
        if seen is None or seen.size != st.st_size or seen.mtime_ns != st.st_mtime_ns:
            return None
        if seen.sha256:
            return self.status_of(seen.sha256, stages)
        return seen.status

    def plan(self, rel: str, path: Path, st: os.stat_result, retry_errors: bool,
             stages: frozenset[str]) -> tuple[str, Task | None]:
        """("todo", task) or ("done" | "renamed" | "failed", None).

        done: finished under this name (with at least these stages); renamed: its content was
        finished under another name; failed: recorded as failed before (redone with retry_errors)."""
        task = Task(rel=rel, path=str(Path(path).resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns)
        seen = self.by_path.get(rel)
        sha: str | None = None
        if seen is not None and seen.size == st.st_size and seen.mtime_ns == st.st_mtime_ns:
            sha = seen.sha256
            if sha is None:  # a failure before the file could be read: nothing to compare
                return ("failed", None) if seen.status != "ok" and not retry_errors else ("todo", task)
        elif st.st_size in self.sizes:
            try:
                sha = file_sha256(path)
            except OSError:
                sha = None  # the worker reads it again and records why it cannot
        if sha is not None:
            task.sha256 = sha
            status = self.status_of(sha, stages)
            if status == "ok":
                mine = seen is not None and seen.sha256 == sha and seen.status == "ok"
                return ("done", None) if mine or self.name_of.get(sha) == rel else ("renamed", None)
            if status is not None and not retry_errors:
                return "failed", None
        return "todo", task


class OutDirLock:
    """An exclusive lock on OUT_DIR for the run (the manifest has one writer)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> "OutDirLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise BatchError(f"{self.path.parent}: another batch job is writing to this folder") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
