"""Input files of a batch job: a sorted, streamed walk of IN_DIR, content hashes, and the resume plan.

A file is identified by the SHA-256 of its content, so a renamed or moved file is not redone and a
changed one is. Reading every file in the driver just to hash it would move all the audio through
one process, so the plan reads a file only when it has to:

* same relative path, size and mtime as a record  -> the record's hash (no read);
* otherwise, when some record has a file of the same size -> hash it here (it may be a renamed one);
* otherwise the file is new -> the worker that processes it hashes it while reading it anyway.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

AUDIO_EXTS = frozenset({".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aiff", ".aif"})
HASH_CHUNK = 1 << 20


@dataclass
class Task:
    """One file to process. Small and picklable: this is all that goes to a worker."""

    rel: str  # path relative to IN_DIR, '/'-separated: the file's name in the manifest
    path: str  # absolute path (the same on every node when IN_DIR is a shared filesystem)
    size: int
    mtime_ns: int
    sha256: str | None = None  # None: the worker hashes it
    attempt: int = 1


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def iter_inputs(in_dir: Path, out_dir: Path | None = None) -> Iterator[tuple[str, Path, os.stat_result]]:
    """(relative name, path, stat) of every audio file under in_dir, sorted, streamed (one folder
    listing in memory at a time). Hidden files and folders and anything under out_dir are skipped."""
    in_dir = Path(in_dir)
    skip = Path(out_dir).resolve() if out_dir is not None else None

    def walk(folder: Path, prefix: str) -> Iterator[tuple[str, Path, os.stat_result]]:
        if skip is not None and folder.resolve() == skip:
            return
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            rel = prefix + e.name
            try:
                if e.is_dir(follow_symlinks=True):
                    yield from walk(Path(e.path), rel + "/")
                elif e.is_file(follow_symlinks=True) and os.path.splitext(e.name)[1].lower() in AUDIO_EXTS:
                    yield rel, Path(e.path), e.stat(follow_symlinks=True)
            except OSError:
                continue

    yield from walk(in_dir, "")
