"""What every `spark-voice` subcommand shares: the common options, settings and logging from them,
a pipeline for a command, and running a command with typed errors as one line and exit code 2.

Subcommand modules (models, ingest, serve, bench, doctor, talk) import this, never spark_voice.cli.
"""

from __future__ import annotations

import argparse
import sys

from .config import Settings
from .errors import SparkVoiceError
from .logs import setup_logging
from .pipeline import VoicePipeline


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings for a command: the usual sources plus --profile and --set NAME=VALUE."""
    over = {}
    if getattr(args, "profile", None):
        over["profile"] = args.profile
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise SystemExit(f"--set expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        over[k.strip().upper()] = v
    return Settings.load(**over)


def setup_logs(args: argparse.Namespace, settings: Settings, default: str = "text") -> None:
    """Logging for a command: LOG_FORMAT (auto -> `default`), --json-logs, -v."""
    fmt = settings.log_format if settings.log_format != "auto" else default
    if getattr(args, "json_logs", False):
        fmt = "json"
    setup_logging(fmt, "DEBUG" if getattr(args, "verbose", False) else settings.log_level)


def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--profile", choices=["prod", "dev", "mock"], help="override SPARK_VOICE_PROFILE")
    p.add_argument("--set", action="append", metavar="NAME=VALUE", help="override a setting (repeatable)")
    p.add_argument("--json-logs", action="store_true", help="JSON log lines on stderr")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def pipeline_for(args):
    """(settings, pipeline) for a command with --profile/--set/--language/--voice; prints warnings."""
    s = settings_from_args(args)
    setup_logs(args, s)
    pipe = VoicePipeline.from_settings(s)
    if getattr(args, "language", None):
        pipe.language = args.language
    if getattr(args, "voice", None):
        pipe.voice = args.voice
    for w in pipe.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return s, pipe


def dispatch(args) -> int:
    """Run a parsed command: typed errors become one `error:` line and exit code 2, no traceback."""
    try:
        return int(args.func(args) or 0)
    except SparkVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
