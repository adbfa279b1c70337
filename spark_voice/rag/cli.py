"""`spark-voice ingest` (also `python -m spark_voice.ingest`): documents -> FAISS index."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

HELP = "ingest .txt/.md documents into the RAG index (incremental; --rebuild starts over)"


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--source", required=True, metavar="DIR", help="folder of .txt / .md documents (recursive)")
    p.add_argument("--index", metavar="PATH", help="index file (default RAG_INDEX_PATH)")
    p.add_argument("--rebuild", action="store_true",
                   help="start over: ignore the existing index (also after changing the embedding model)")
    p.add_argument("--batch", type=int, metavar="N", help="texts per embedder call (default 32)")
    p.add_argument("--index-type", choices=["flat", "hnsw", "ivf", "sq8"], help="override RAG_INDEX_TYPE")
    p.add_argument("--follow-symlinks", action="store_true",
                   help="also index documents whose links lead out of --source (default: skipped)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_ingest)
    return p


def add_parser(subparsers: Any, common: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    configure(common(subparsers.add_parser("ingest", help=HELP, description=HELP)))


def cmd_ingest(args: argparse.Namespace) -> int:
    from ..backends.registry import build
    from ..cli_common import settings_from_args, setup_logs
    from ..errors import RagIndexError
    from .ingest import ingest

    s = settings_from_args(args)
    setup_logs(args, s)
    if args.batch is not None and args.batch < 1:
        raise RagIndexError(f"--batch must be >= 1, got {args.batch}")
    index = s.path(args.index) if args.index else s.path(s.rag_index_path)
    embedder = build("embedding", s)
    try:
        summary = ingest(s.path(args.source), index, embedder, s, rebuild=args.rebuild,
                         progress=not args.no_progress, batch_size=args.batch, index_type=args.index_type,
                         follow_symlinks=args.follow_symlinks)
    except OSError as exc:  # disk full, permissions: a message, not a traceback
        raise RagIndexError(f"ingest failed: {exc}") from None
    finally:
        try:
            embedder.close()
        except Exception:
            pass
    if args.json:
        print(json.dumps(summary.as_dict(), ensure_ascii=False, indent=2))
    else:
        print(summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m spark_voice.ingest` (same options as `spark-voice ingest`)."""
    from ..cli_common import common, dispatch

    parser = configure(common(argparse.ArgumentParser(prog="python -m spark_voice.ingest", description=HELP)))
    args = parser.parse_args(argv)
    return dispatch(args)
