"""The ``spark-voice bench`` subcommand: its arguments and the command itself."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cli_common import settings_from_args, setup_logs
from ..errors import SparkVoiceError
from .runner import run_bench

__all__ = ["add_parser", "cmd_bench"]

DESCRIPTION = "`spark-voice bench`: voice-turn latency over N replayed clips, component floors, overhead ratios."


def add_parser(subparsers: Any, common: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    p = common(subparsers.add_parser(
        "bench", help="latency benchmark: streaming turns over N clips, floors, table, JSON/CSV/PNG",
        description=DESCRIPTION))
    p.add_argument("-n", type=int, default=15, help="number of turns (cycling through the clips; default 15)")
    p.add_argument("--samples", type=Path, metavar="DIR",
                   help="folder (or file) of audio clips (default: the bundled examples/audio/question_*.wav)")
    p.add_argument("--realtime", action="store_true",
                   help="feed the 20 ms frames at real-time pace (default: as fast as possible)")
    p.add_argument("--out", type=Path, default=Path("results"), help="results folder (default ./results)")
    p.add_argument("--no-floors", action="store_true", help="skip the raw-engine floors and the sequential path")
    p.add_argument("--language", choices=["ja", "en", "auto"],
                   help="STT language for every clip (default: from the file name, *_ja / *_en, "
                        "else STT_LANGUAGE)")
    p.add_argument("--warmup", type=int, default=2, help="un-recorded warm-up turns first (default 2)")
    p.add_argument("--no-plot", action="store_true", help="do not write latency.png")
    p.add_argument("--compare", action="store_true",
                   help="also compare turn-taking side by side: today's path vs the new one (end of speech -> "
                        "first audio, Japanese first audio, pause and back-channel clips) and the STT final "
                        "decode (full vs fitted context vs faster-whisper int8); see spark_voice/bench/turn_compare.py")
    p.add_argument("--compare-rounds", type=int, default=3, help="rounds of the --compare turns (default 3)")
    p.add_argument("--compare-old-stt", default="ggml-base.bin", metavar="MODEL",
                   help="the whisper file today's path decodes with in --compare (default ggml-base.bin, the dev "
                        "profile's model when the turn-taking issue was filed; '' = the pipeline's own)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    given = {s.split("=", 1)[0].strip().upper() for s in (args.set or []) if "=" in s}
    args.set = list(args.set or [])
    for name, value in (("LLM_TEMPERATURE", "0"), ("LLM_SEED", "0")):
        if name not in given:
            args.set.append(f"{name}={value}")
    s = settings_from_args(args)
    setup_logs(args, s)
    if not args.verbose:  # one INFO line per turn would bury the table; the JSON has every turn
        logging.getLogger("spark_voice.pipeline").setLevel(logging.WARNING)
    if args.n < 1:
        raise SparkVoiceError("-n must be at least 1")
    report = run_bench(s, n=args.n, samples=args.samples, realtime=args.realtime, out=args.out,
                       floors=not args.no_floors, language=args.language, warmup=max(0, args.warmup),
                       plot=not args.no_plot, compare=args.compare, compare_rounds=max(1, args.compare_rounds),
                       compare_old_stt_model=args.compare_old_stt or None)
    return 1 if report["errors"] == report["n"] else 0
