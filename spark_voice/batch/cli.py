"""`spark-voice batch IN_DIR OUT_DIR`: a folder of audio through STT -> (RAG) -> LLM -> TTS."""

from __future__ import annotations

import argparse
import sys

from ..cli_common import settings_from_args, setup_logs
from .runner import run_batch

EPILOG = """\
outputs per file (IN_DIR/sub/q.wav): OUT_DIR/sub/q.wav.transcript.json (segments),
q.wav.answer.txt, q.wav.answer.ogg; one record per file in OUT_DIR/manifest.jsonl.
A rerun resumes: files are known by their content (a renamed file is not redone, a changed
one is); failed files are retried with --retry-errors. Exit status: 0 all ok, 1 some files
failed (see the manifest), 2 the job could not run, 130 interrupted.
"""


def add_parser(sub, common) -> None:
    b = common(sub.add_parser("batch", help="a folder of audio -> transcripts, answers, spoken answers (resumable; "
                                            "--ray for a cluster)", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter))
    b.add_argument("input", metavar="IN_DIR", help="folder of audio files (searched recursively)")
    b.add_argument("output", metavar="OUT_DIR", help="output folder (manifest.jsonl, outputs per file)")
    b.add_argument("--stages", default="all",
                   help="stt | stt,llm | stt,rag,llm | stt,llm,tts | all (default: all = stt,llm,tts)")
    b.add_argument("--language", help="STT language (ja, en, auto); default STT_LANGUAGE")
    b.add_argument("--voice", help="TTS voice (see `spark-voice voices`)")
    b.add_argument("--format", choices=["opus", "wav", "flac", "pcm"], help="spoken answers' format "
                   "(default TTS_OUTPUT_FORMAT)")
    b.add_argument("--sample-rate", type=int, help="spoken answers' rate (default TTS_SAMPLE_RATE)")
    b.add_argument("--retry-errors", action="store_true", help="redo files recorded as failed")
    b.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster: ADDRESS (host:port or auto) of a running one, else a local one "
                        "(needs spark-voice[ray])")
    b.add_argument("--actors", type=int, help="Ray actors (engine sets); default BATCH_ACTORS (0 = as many as "
                   "the cluster's CPUs/GPUs allow)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--exit-after", type=int, default=0, help=argparse.SUPPRESS)  # test hook: die after N records
    b.set_defaults(func=cmd_batch)


def cmd_batch(args) -> int:
    s = settings_from_args(args)
    if not args.verbose:  # per-turn INFO logs would tear the progress bar
        s_level = "WARNING" if s.log_level in ("DEBUG", "INFO") else s.log_level
        s = s.model_copy(update={"log_level": s_level})
    setup_logs(args, s)
    if args.actors is not None and args.actors < 1:
        print("error: --actors must be at least 1", file=sys.stderr)
        return 2
    if args.ray is None and args.actors:
        print("error: --actors needs --ray", file=sys.stderr)
        return 2
    if args.ray is not None:
        from .ray_exec import import_ray

        import_ray()  # a clear MissingDependency (naming the extra) before any work
    result = run_batch(args.input, args.output, s, stages=args.stages, language=args.language, voice=args.voice,
                       audio_format=args.format, sample_rate=args.sample_rate, retry_errors=args.retry_errors,
                       ray=args.ray is not None, ray_address=args.ray or None, actors=args.actors,
                       progress=not args.no_progress and sys.stderr.isatty(), exit_after=args.exit_after)
    for line in result.summary.lines():
        print(line)
    print(f"manifest:   {result.manifest}")
    return result.exit_code
