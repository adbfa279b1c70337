"""Speculative start: end of speech -> first audio with TURN_SPECULATIVE on vs off, in one run.

    python benchmarks/bench_speculative.py [--profile dev] [--rounds 3] [--stable 2] [--threads 0]
                                           [--llm-threads 2] [--stt-threads 2] [--fast] [--json out.json]

The bundled question and pause clips (examples/audio, our own voices) go through the new
turn-taking path (Smart Turn, fitted final, eager chunker) at real-time pace (``--fast``: as fast
as possible), alternating on / off per clip and round, each turn from an empty history and KV cache
(see spark_voice.bench.speculative_compare). ``spark-voice bench --compare`` runs the same
comparison after its other ones. Timings only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="dev")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stable", type=int, default=None, help="TURN_SPECULATIVE_STABLE (default: from the settings)")
    ap.add_argument("--threads", type=int, default=None, help="TURN_SPECULATIVE_THREADS (default: from the settings)")
    ap.add_argument("--llm-threads", type=int, default=None, help="LLM_THREADS")
    ap.add_argument("--stt-threads", type=int, default=None, help="STT_THREADS")
    ap.add_argument("--max-tokens", type=int, default=64, help="LLM_MAX_TOKENS (first audio is what counts)")
    ap.add_argument("--fast", action="store_true", help="feed the clips as fast as possible, not at real-time pace")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args(argv)

    import spark_voice  # noqa: F401  (sets OMP_WAIT_POLICY before pywhispercpp loads)
    from spark_voice.bench.clips import PacedSTT
    from spark_voice.bench.speculative_compare import format_speculative, run_speculative
    from spark_voice.config import Settings
    from spark_voice.fsutil import atomic_write_bytes
    from spark_voice.pipeline import VoicePipeline

    over = {"profile": args.profile, "LLM_MAX_TOKENS": str(args.max_tokens), "RAG_ENABLED": "off"}
    for key, val in (("TURN_SPECULATIVE_STABLE", args.stable), ("TURN_SPECULATIVE_THREADS", args.threads),
                     ("LLM_THREADS", args.llm_threads), ("STT_THREADS", args.stt_threads)):
        if val is not None:
            over[key] = str(val)
    settings = Settings.load(ROOT, **over)
    pipe = VoicePipeline.from_settings(settings, load=True)
    try:
        report = run_speculative(pipe, settings, rounds=max(1, args.rounds), paced=None if args.fast else PacedSTT)
    finally:
        pipe.close()
    report["settings"] = {k: getattr(settings, k) for k in ("turn_speculative_stable", "turn_speculative_threads",
                                                            "llm_threads", "stt_threads", "llm_model", "stt_model")}
    report["cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for line in format_speculative(report):
        print(line)
    if args.json:
        atomic_write_bytes(args.json, json.dumps(report, ensure_ascii=False, indent=2, default=str).encode("utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
