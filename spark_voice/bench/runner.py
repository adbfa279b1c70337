"""One bench run: load the pipeline, replay the clips as streaming turns, measure the floors of
each turn, then build, print and write the report."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..events import LatencyRecorder
from ..pipeline import Turn, VoicePipeline
from ..types import Stage
from .clips import Clip, PacedSTT, find_clips
from .floors import llm_cache_reset, make_floors, measure_floors
from .report import TURN_METRICS, build_report, format_report, git_commit, results_dir, write_files
from .speculative_compare import format_speculative, run_speculative
from .turn_compare import format_compare, run_compare

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["run_bench"]


def run_bench(settings: Settings, *, n: int = 15, samples: Path | None = None, realtime: bool = False,
              out: Path = Path("results"), floors: bool = True, language: str | None = None, warmup: int = 2,
              plot: bool = True, printer: Callable[[str], None] = print, compare: bool = False,
              compare_rounds: int = 3, compare_old_stt_model: str | None = None) -> dict[str, Any]:
    """Run the benchmark and write its files; returns the report (also written as bench.json)."""
    clips = find_clips(samples, language, settings.stt_language)
    pipe = VoicePipeline.from_settings(settings)
    pipe.history_turns = 0  # every turn answers the same prompt as its floor
    t_load = time.perf_counter()
    pipe.load()
    load_s = round(time.perf_counter() - t_load, 3)
    providers: dict[str, dict[str, object]] = {
        k: {"provider": b.info().provider, "endpoint": b.info().endpoint, "is_mock": b.info().is_mock}
        for k, b in pipe.backends().items()}
    fl = make_floors(pipe) if floors else None
    reset_llm = llm_cache_reset(pipe.llm)
    printer(f"spark-voice bench: profile {settings.profile}, {n} turns over {len(clips)} clip(s) "
            f"({', '.join(f'{c.name} [{c.language}, {c.audio.duration:.1f} s]' for c in clips)}), "
            f"{'real-time pace' if realtime else 'as fast as possible'}, streaming STT")
    printer("providers: " + ", ".join(f"{k}={v['provider']}{' (mock)' if v['is_mock'] else ''}"
                                      for k, v in providers.items()) + f"; load {load_s} s")

    def turn(clip: Clip, rid: str) -> Turn:
        pipe.language = clip.language
        reset_llm()  # cold prompt every turn: a repeated clip must not hit the KV cache of the last one
        return pipe.run(clip.audio, streaming_stt=True, request_id=rid)

    for i in range(warmup):  # load lazy parts (onnx sessions, caches); not recorded, not paced
        try:
            turn(clips[i % len(clips)], f"warmup-{i + 1}")
        except Exception as exc:
            printer(f"warm-up turn {i + 1} failed: {type(exc).__name__}: {exc}")
    if realtime and pipe.stt is not None:
        pipe.stt = PacedSTT(pipe.stt)

    recorder = LatencyRecorder(window=n)
    rows: list[dict[str, Any]] = []
    run_tag = uuid.uuid4().hex[:6]
    interrupted = False
    comparisons: dict[str, Any] = {}
    try:
        for i in range(n):
            clip = clips[i % len(clips)]
            rid = f"bench-{run_tag}-{i + 1:03d}"
            row: dict[str, Any] = {"index": i + 1, "request_id": rid, "clip": clip.name, "language": clip.language,
                                   "audio_s": round(clip.audio.duration, 3)}
            try:
                t = turn(clip, rid)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                printer(f"[{i + 1}/{n}] {rid} {clip.name}: error {row['error']}")
                continue
            lat = dict(t.latencies)
            if "final" in lat and "tts_start" in lat:
                lat["first_audio"] = round(lat["final"] + lat["tts_start"], 3)
            recorder.record(rid, lat)
            row.update({m: lat.get(m) for m in TURN_METRICS})
            row.update(transcript=t.transcript, answer=t.answer,
                       partials=sum(1 for e in t.events if e.stage == Stage.STT_PARTIAL),
                       tts_chunks=sum(1 for e in t.events if e.stage == Stage.TTS_CHUNK),
                       answer_audio_s=round(t.audio.duration, 3) if t.audio is not None else 0.0)
            if fl is not None:
                row.update(measure_floors(pipe, fl, clip, t))
            rows.append(row)
            printer(f"[{i + 1}/{n}] {rid} {clip.name}: " + ", ".join(
                f"{m} {lat[m]:.0f}" for m in TURN_METRICS if m in lat) + " ms")
        if compare:
            comparisons = run_compare(pipe, settings, rounds=compare_rounds, paced=PacedSTT, printer=printer,
                                      old_stt_model=compare_old_stt_model)
            comparisons["speculative"] = run_speculative(pipe, settings, rounds=compare_rounds, paced=PacedSTT,
                                                         printer=printer)
    except KeyboardInterrupt:
        interrupted = True
        printer("interrupted: writing what was measured so far")
    finally:
        pipe.close()

    report = build_report(settings, rows, recorder, clips, providers, fl, realtime=realtime, load_s=load_s,
                          warmup=warmup, interrupted=interrupted)
    if comparisons:
        report["comparisons"] = comparisons
    commit, dirty = git_commit()
    report["run"].update(commit=commit, dirty=dirty)
    dest = results_dir(out, commit)
    write_files(dest, report, rows, plot)
    for line in format_report(report):
        printer(line)
    for line in format_compare(comparisons) if comparisons else ():
        printer(line)
    for line in format_speculative(comparisons["speculative"]) if "speculative" in comparisons else ():
        printer(line)
    return report
