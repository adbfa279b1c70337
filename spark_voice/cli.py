"""`spark-voice` / `python -m spark_voice`: run, config, voices, models, ingest, serve, bench, doctor."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

# subcommand -> module exposing add_parser(subparsers) (imported only to build the parser)
SUBCOMMAND_MODULES = [
    "spark_voice.models.cli",
    "spark_voice.rag.cli",
    "spark_voice.serve.cli",
    "spark_voice.bench",
    "spark_voice.doctor",
    "spark_voice.talk",
]


def _settings(args):
    from .config import Settings

    over = {}
    if getattr(args, "profile", None):
        over["profile"] = args.profile
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise SystemExit(f"--set expects NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        over[k.strip().upper()] = v
    return Settings.load(**over)


def _setup_logs(args, settings, default: str = "text") -> None:
    from .logs import setup_logging

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
    from .pipeline import VoicePipeline

    s = _settings(args)
    _setup_logs(args, s)
    pipe = VoicePipeline.from_settings(s)
    if getattr(args, "language", None):
        pipe.language = args.language
    if getattr(args, "voice", None):
        pipe.voice = args.voice
    for w in pipe.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return s, pipe


# ---------------------------------------------------------------------------------------- run
def cmd_run(args) -> int:
    from .audio.io import format_for_path, write_audio

    s, pipe = pipeline_for(args)
    speak = not args.no_speak and args.output is not None
    if args.text is not None:
        turn = pipe.run(text=args.text, speak=speak, streaming_stt=args.streaming)
    else:
        turn = pipe.run(args.input, speak=speak, streaming_stt=args.streaming)
    info = {name: b.info().provider + (" (mock)" if b.info().is_mock else "") for name, b in pipe.backends().items()}
    out = {"request_id": turn.request_id, "transcript": turn.transcript, "answer": turn.answer,
           "language": turn.language, "latency_ms": turn.latencies, "providers": info}
    if turn.audio is not None and args.output:
        fmt = args.format or format_for_path(args.output, s.tts_output_format)
        path, rate = write_audio(args.output, turn.audio, fmt, args.sample_rate or s.tts_sample_rate)
        out.update(output=str(path), output_format=fmt, output_rate=rate,
                   output_seconds=round(turn.audio.duration, 2))
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print(f"transcript: {turn.transcript}")
        print(f"answer:     {turn.answer}")
        print("latency:    " + ", ".join(f"{k} {v:.0f} ms" for k, v in turn.latencies.items()))
        print("providers:  " + ", ".join(f"{k}={v}" for k, v in info.items()))
        if "output" in out:
            print(f"audio:      {out['output']} ({out['output_format']}, {out['output_rate']} Hz, "
                  f"{out['output_seconds']} s)")
    return 0


def cmd_config(args) -> int:
    s = _settings(args)
    env = s.as_env(mask_secrets=not args.show_secrets)
    if args.json:
        print(json.dumps({k: {"value": v, "source": s.sources.get(k.lower(), "default")} for k, v in env.items()},
                         indent=2, ensure_ascii=False))
        return 0
    print(f"# root: {s.root_dir}   profile: {s.profile}")
    width = max(len(k) for k in env)
    for k, v in env.items():
        print(f"{k:<{width}} = {v}    # {s.sources.get(k.lower(), 'default')}")
    return 0


def cmd_voices(args) -> int:
    from .backends.registry import build

    s = _settings(args)
    tts = build("tts", s)
    voices = tts.voices()
    if args.json:
        print(json.dumps([v.__dict__ for v in voices], ensure_ascii=False, indent=2))
    else:
        for v in voices:
            print(f"{v.name:<28} {v.language:<4} {v.provider:<8} {v.sample_rate or '':>6} {v.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spark-voice", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = common(sub.add_parser("run", help="one voice turn: audio file in -> transcript, answer, spoken answer"))
    r.add_argument("input", nargs="?", help="audio file (wav, flac, ogg, mp3 ...)")
    r.add_argument("-o", "--output", help="write the spoken answer here (.ogg = Opus, .wav, .flac, .pcm)")
    r.add_argument("--text", help="skip STT: ask this text")
    r.add_argument("--no-speak", action="store_true", help="skip TTS")
    r.add_argument("--language", help="override STT_LANGUAGE for this run (ja, en, auto)")
    r.add_argument("--voice", help="TTS voice (see `spark-voice voices`)")
    r.add_argument("--format", choices=["opus", "wav", "flac", "pcm"], help="output format (default from extension)")
    r.add_argument("--sample-rate", type=int, help="output rate (default TTS_SAMPLE_RATE)")
    r.add_argument("--streaming", action="store_true", help="feed the file through streaming STT (partials)")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=cmd_run)

    c = common(sub.add_parser("config", help="print the effective settings and where each comes from"))
    c.add_argument("--json", action="store_true")
    c.add_argument("--show-secrets", action="store_true")
    c.set_defaults(func=cmd_config)

    v = common(sub.add_parser("voices", help="list TTS voices"))
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_voices)

    for mod in SUBCOMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue
            raise
        m.add_parser(sub, common)
    return p


def dispatch(args) -> int:
    """Run a parsed command: typed errors become one `error:` line and exit code 2, no traceback."""
    from .errors import SparkVoiceError

    try:
        return int(args.func(args) or 0)
    except SparkVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.input is None and args.text is None:
        parser.error("run needs an audio file or --text")
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
