"""`spark-voice bench`: voice-turn latency over N replayed clips, component floors, overhead ratios.

What one run does, with the configured profile (mock, dev or prod):

1. Replays N samples (default 15, cycling through ``examples/audio/question_*.wav`` or the audio
   files of ``--samples DIR``) through :class:`~spark_voice.pipeline.VoicePipeline` in *streaming*
   mode: 20 ms frames go through the streaming recogniser, as fast as possible or, with
   ``--realtime``, paced at real time like a live microphone. Every turn has its own request id.
   The latencies come from the turn's events through :func:`spark_voice.events.turn_latencies`
   (the pipeline's only latency bookkeeping): partial, final, first_token, tts_start, end_to_end,
   plus ``first_audio`` = final + tts_start (end of speech -> first audio out).
2. Unless ``--no-floors``: the component floors on the same clips and prompts -- the raw engines
   called directly (pywhispercpp transcription of the clip, llama.cpp generation up to the first
   sentence, the TTS engine's first chunk; for mock backends, the mocks called directly) -- and
   the *sequential* path (wait for the whole answer, then synthesise it) that streaming replaces.
3. Prints a table (p50 / p95 / max per stage), the overhead of the pipeline over the floors
   (goal <= 3 %) and streaming first audio / sequential first audio (goal <= 0.5), and writes
   ``bench.json``, ``turns.csv`` and ``latency.png`` under ``<out>/<YYYYmmdd-HHMMSS>-<commit>/``.

Sampling is made deterministic for the run (LLM_TEMPERATURE=0, LLM_SEED=0 unless given with
--set) and the conversation history is off, so the pipeline and the raw engine answer the same
prompt with the same words; the LLM context cache is cleared before every measured generation.

Modules (imports go down the list):

- :mod:`.cli`      the ``spark-voice bench`` arguments and command
- :mod:`.runner`   :func:`run_bench`: the pipeline, the turns, the per-turn floors, the files
- :mod:`.report`   statistics, overhead and streaming ratios, the table, bench.json / turns.csv
- :mod:`.plot`     latency.png (matplotlib)
- :mod:`.floors`   the raw engine calls (through each backend's public raw hook) and the
  sequential path
- :mod:`.clips`    clip discovery and the real-time pacing wrapper
"""

from .cli import add_parser, cmd_bench
from .clips import Clip, PacedStream, PacedSTT, clip_language, find_clips
from .floors import Floors, make_floors, sequential_path
from .report import format_report, stats
from .runner import run_bench

__all__ = ["Clip", "Floors", "PacedSTT", "PacedStream", "add_parser", "clip_language", "cmd_bench", "find_clips",
           "format_report", "make_floors", "run_bench", "sequential_path", "stats"]
