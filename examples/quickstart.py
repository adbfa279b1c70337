#!/usr/bin/env python
"""Quickstart: spark_voice as a library, notebook style (each `# %%` block is a cell).

    python examples/quickstart.py                   # the configured profile (.env / SPARK_VOICE_PROFILE)
    python examples/quickstart.py --profile mock    # no models needed
    python examples/quickstart.py --profile dev     # small CPU models (`spark-voice models prepare --small`)

Covers: settings, building the pipeline from them, one blocking turn (`run`), streaming the
events of a turn with asyncio (`stream`), the latencies computed from those events, and the
rolling p50/p95 summary the server also reports.
"""

# %% imports and arguments
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import spark_voice
from spark_voice import Settings, VoicePipeline
from spark_voice.audio.io import write_audio
from spark_voice.events import turn_latencies

HERE = Path(__file__).resolve().parent
ap = argparse.ArgumentParser(description="spark_voice quickstart")
ap.add_argument("--profile", choices=["prod", "dev", "mock"])
ap.add_argument("--audio", type=Path, default=HERE / "audio" / "question_en.wav", help="a question (audio file)")
ap.add_argument("--language", default="en", help="STT language of the question (ja, en, auto)")
ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()), help="where the spoken answer goes")
args = ap.parse_args([] if "ipykernel" in sys.modules else None)  # defaults inside a notebook

# %% 1. settings: .env.default < profile < .env < environment < keyword overrides
settings = Settings.load(**({"profile": args.profile} if args.profile else {}))
print(f"spark_voice {spark_voice.__version__}, profile {settings.profile}: "
      f"llm={settings.llm_provider} stt={settings.stt_provider} tts={settings.tts_provider}")

# %% 2. the pipeline: backends are built from the settings and load lazily (or now, with load=True)
pipe = VoicePipeline.from_settings(settings)
pipe.language = args.language
for role, backend in pipe.backends().items():
    info = backend.info()
    print(f"  {role:<9} {info.provider:<12} {info.endpoint}{'  (mock)' if info.is_mock else ''}")

# %% 3. one blocking turn: audio in -> transcript, answer, spoken answer, latencies
turn = pipe.run(args.audio)
print("request id:", turn.request_id)
print("transcript:", turn.transcript)
print("answer:    ", turn.answer)
print("latency ms:", turn.latencies)
if turn.audio is not None:
    path, rate = write_audio(args.out / "quickstart_answer.ogg", turn.audio)  # OGG/Opus, atomic write
    print(f"spoken answer: {path} ({turn.audio.duration:.1f} s, {rate} Hz)")

# %% 4. text in, text out (no STT, no TTS)
print("text turn:", pipe.run(text="Say hello in one short sentence.", speak=False).answer)


# %% 5. streaming: the events of a turn as they happen (partials, tokens, audio chunks)
async def stream_one() -> list:
    events = []
    async for ev in pipe.stream(args.audio, streaming_stt=True):
        events.append(ev)
        if ev.stage in ("stt.partial", "stt.final", "llm.sentence", "turn.done"):
            print(f"  {ev.stage:<12} {ev.text[:60]!r}")
        elif ev.stage == "tts.chunk":
            print(f"  {ev.stage:<12} {ev.audio.duration:.2f} s of audio at {ev.audio.sample_rate} Hz")
    return events

events = asyncio.run(stream_one())  # in a notebook cell: `events = await stream_one()`

# %% 6. latencies are computed from the events (the same function the pipeline uses)
print("streamed turn latency ms:", turn_latencies(events))

# %% 7. rolling summary over the recent turns (what /metrics and `spark-voice bench` report)
for metric, st in pipe.latency.summary()["metrics"].items():
    print(f"  {metric:<12} n={st['n']}  p50 {st['p50_ms']:.1f} ms  p95 {st['p95_ms']:.1f} ms")
pipe.close()
