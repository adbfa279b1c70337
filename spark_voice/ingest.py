"""`python -m spark_voice.ingest --source DIR --index PATH [--rebuild] [--batch N]`.

The same command as `spark-voice ingest` (see :mod:`spark_voice.rag.cli`)."""

from __future__ import annotations

import sys

from .rag.cli import main

if __name__ == "__main__":
    sys.exit(main())
