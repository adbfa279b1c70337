"""`spark-voice` / `python -m spark_voice`: run, config, voices, models, ingest, serve, bench, doctor, batch."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Sequence

from .cli_common import common, dispatch, pipeline_for, settings_from_args

# subcommand -> module exposing add_parser(subparsers) (imported only to build the parser)
SUBCOMMAND_MODULES = [
    "spark_voice.models.cli",
    "spark_voice.rag.cli",
    "spark_voice.serve.cli",
    "spark_voice.bench",
    "spark_voice.doctor",
    "spark_voice.talk",
    "spark_voice.batch.cli",
]


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
    s = settings_from_args(args)
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

    s = settings_from_args(args)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run" and args.input is None and args.text is None:
        parser.error("run needs an audio file or --text")
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
