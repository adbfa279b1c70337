#!/usr/bin/env python
"""Offline batch: a folder of audio files -> transcripts, answers and spoken answers (.ogg).

    python examples/offline_batch.py questions/ --out answers/            # configured profile
    python examples/offline_batch.py questions/ --out answers/ --profile mock --language en

A thin wrapper around `spark-voice batch IN_DIR OUT_DIR` (spark_voice/batch), which does the work:
resumable manifest (OUT_DIR/manifest.jsonl, files known by their content), atomic outputs per
file, bad files recorded, progress bar and summary, `--ray` for a Ray cluster. This script keeps
the older flags: --out (default <input>-answers) and --no-speak (= --stages stt,llm).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="folder of audio files")
    p.add_argument("--out", type=Path, help="output folder (default: <input>-answers)")
    p.add_argument("--no-speak", action="store_true", help="transcripts and answers only, no .ogg")
    args, rest = p.parse_known_args(argv)  # everything else goes to `spark-voice batch` as is
    from spark_voice.cli import main as spark_voice

    out = args.out or args.input.with_name(args.input.name + "-answers")
    stages = ["--stages", "stt,llm"] if args.no_speak else []
    return spark_voice(["batch", str(args.input), str(out), *stages, *rest])


if __name__ == "__main__":
    sys.exit(main())
