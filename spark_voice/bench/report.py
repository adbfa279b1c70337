"""The bench's numbers and files: statistics, pipeline-vs-floor ratios, the text table, and
``bench.json`` / ``turns.csv`` (``latency.png`` comes from :mod:`.plot`) under
``<out>/<YYYYmmdd-HHMMSS>-<commit>/``.

A *row* is one measured turn: its clip, the pipeline's latencies (ms), and, with floors, the raw
engine floors and the sequential path of the same turn (see :mod:`.floors`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..events import METRICS, LatencyRecorder, percentiles
from ..fsutil import atomic_write_bytes
from .clips import Clip
from .floors import Floors
from .plot import plot_png

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["CSV_COLUMNS", "FLOOR_MEANING", "MEANING", "TURN_METRICS", "build_report", "format_report",
           "git_commit", "overhead", "paired", "results_dir", "stats", "streaming_vs_sequential", "write_files"]

Row = dict[str, Any]
Stats = dict[str, float]  # n, p50_ms, p95_ms, max_ms

# per-turn pipeline metrics (events.METRICS + the derived end-of-speech -> first audio)
TURN_METRICS = (*METRICS, "first_audio")
MEANING = {
    "partial": "first stt.partial after the first audio frame",
    "final": "stt.final after stt.speech_end (the end of turn: Smart Turn at a short pause, else the long silence)",
    "first_token": "first final-channel llm.token after stt.final",
    "tts_start": "first tts.chunk after stt.final",
    "end_to_end": "turn.done after the first audio frame (whole answer spoken)",
    "first_audio": "final + tts_start: end of speech -> first audio (derived)",
}
FLOOR_MEANING = {
    "stt": "raw transcription of the whole clip",
    "llm_first_token": "raw generation: prompt -> first token",
    "llm_first_sentence": "raw generation: prompt -> first complete sentence",
    "tts_first_chunk": "raw TTS of that first sentence: -> first audio chunk",
    "floors_sum": "stt + llm_first_sentence + tts_first_chunk (raw voice to voice)",
    "seq_llm_full": "sequential path: the whole answer (our LLM backend)",
    "seq_tts_full": "sequential path: synthesis of the whole answer (our TTS backend)",
    "seq_first_audio": "sequential path: transcript -> audio ready (llm full + tts full)",
    "seq_first_chunk": "sequential path with a streaming TTS: llm full + first chunk",
}
FLOOR_KEYS = ("floor_stt", "floor_llm_first_token", "floor_llm_first_sentence", "floor_tts_first_chunk",
              "floors_sum", "seq_llm_full", "seq_tts_full", "seq_first_audio", "seq_first_chunk")
# overhead name -> (pipeline metric, the floors it is compared with)
OVERHEAD_PAIRS = {
    "stt": ("final", ("floor_stt",)),
    "first_token": ("first_token", ("floor_llm_first_token",)),
    "answer_to_first_audio": ("tts_start", ("floor_llm_first_sentence", "floor_tts_first_chunk")),
    "first_audio": ("first_audio", ("floors_sum",)),
}
CSV_COLUMNS = ("index", "request_id", "clip", "language", "audio_s", *TURN_METRICS, "partials", "tts_chunks",
               "answer_audio_s", "floor_stt", "floor_llm_first_token", "floor_llm_first_sentence",
               "floor_tts_first_chunk", "floors_sum", "seq_llm_full", "seq_tts_full", "seq_first_audio",
               "seq_first_chunk", "llm_tokens", "llm_decode_tok_s", "transcript", "answer", "floor_first_sentence",
               "error", "floor_error")
ROOT = Path(__file__).resolve().parents[2]  # the checkout holding spark_voice


# ------------------------------------------------------------------------- statistics
def stats(values: Iterable[float | None]) -> Stats | None:
    """n, p50, p95 and max of the known values (None: not measured); None when there is none."""
    st = percentiles(v for v in values if v is not None)
    return st if st["n"] else None


def paired(rows: list[Row], pipe_key: str, floor_keys: tuple[str, ...]) -> dict[str, Any] | None:
    """Pipeline vs floor on the same turns (same clip, same prompt): p50s, and the medians of the
    per-turn differences and ratios (robust to a mix of short English and long Japanese turns)."""
    pairs = [(r[pipe_key], sum(r[k] for k in floor_keys)) for r in rows
             if r.get(pipe_key) is not None and all(r.get(k) is not None for k in floor_keys)]
    pairs = [(a, f) for a, f in pairs if f > 0]
    if not pairs:
        return None
    by_lang: dict[str, list[float]] = {}
    for r in rows:
        if r.get(pipe_key) is not None and all(r.get(k) is not None for k in floor_keys):
            f = sum(r[k] for k in floor_keys)
            if f > 0:
                by_lang.setdefault(r["language"], []).append(r[pipe_key] / f)
    pipe_st, floor_st = stats(a for a, _ in pairs), stats(f for _, f in pairs)
    assert pipe_st is not None and floor_st is not None
    return {"n": len(pairs),
            "pipeline_p50_ms": pipe_st["p50_ms"],
            "floor_p50_ms": floor_st["p50_ms"],
            "median_diff_ms": round(float(np.median([a - f for a, f in pairs])), 3),
            "median_ratio": round(float(np.median([a / f for a, f in pairs])), 4),
            "median_ratio_by_language": {k: round(float(np.median(v)), 4) for k, v in sorted(by_lang.items())}}


def overhead(rows: list[Row]) -> dict[str, Any]:
    """Per stage: median over turns of pipeline / floor - 1 (goal <= 3 %)."""
    out: dict[str, Any] = {"goal": 0.03}
    for name, (pk, fks) in OVERHEAD_PAIRS.items():
        p = paired(rows, pk, fks)
        if p:
            p["overhead_ratio"] = round(p["median_ratio"] - 1.0, 4)
            out[name] = p
    return out


def streaming_vs_sequential(rows: list[Row]) -> dict[str, Any]:
    """Median over turns of streaming tts_start / sequential first audio (goal <= 0.5)."""
    out: dict[str, Any] = {"goal": 0.5}
    for key in ("seq_first_audio", "seq_first_chunk"):
        p = paired(rows, "tts_start", (key,))
        if p:
            p["ratio"] = p["median_ratio"]
            out[key] = p
    return out


# ------------------------------------------------------------------------- the report
def loadavg() -> float | None:
    """1-minute load average at the end of the run (other processes skew every number)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def build_report(settings: Settings, rows: list[Row], recorder: LatencyRecorder, clips: list[Clip],
                 providers: Mapping[str, Mapping[str, object]], fl: Floors | None, *, realtime: bool, load_s: float,
                 warmup: int, interrupted: bool) -> dict[str, Any]:
    summary = recorder.summary()["metrics"]
    metrics = {m: {k: v for k, v in summary[m].items() if k != "request_ids"} for m in METRICS if m in summary}
    fa = stats(r.get("first_audio") for r in rows)
    if fa:
        metrics["first_audio"] = fa
    floor_stats = {k.removeprefix("floor_"): st for k in FLOOR_KEYS if (st := stats(r.get(k) for r in rows))}
    report: dict[str, Any] = {
        "run": {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "profile": settings.profile,
                "realtime": realtime, "streaming_stt": True, "warmup_turns": warmup, "load_s": load_s,
                "interrupted": interrupted, "python": platform.python_version(), "machine": platform.machine(),
                "cpu_count": os.cpu_count(), "loadavg_1m_end": loadavg(), "providers": dict(providers),
                "threads": {"llm": settings.llm_threads, "stt": settings.stt_threads, "tts": settings.tts_threads},
                "llm": {"model": str(settings.llm_model), "temperature": settings.llm_temperature,
                        "seed": settings.llm_seed, "max_tokens": settings.llm_max_tokens},
                "stt_model": str(settings.stt_model),
                "clips": [{"file": str(c.path), "language": c.language, "seconds": round(c.audio.duration, 3)}
                          for c in clips]},
        "n": len(rows), "errors": sum(1 for r in rows if r.get("error")),
        "metrics": metrics, "meaning": {**MEANING, **FLOOR_MEANING},
        "floors": floor_stats, "floor_engines": dict(fl.labels) if fl else {},
        "turns": rows,
    }
    if fl is not None and fl.tts_labels:
        report["floor_engines"]["tts_engines"] = dict(fl.tts_labels)
    tok = stats(r.get("llm_decode_tok_s") for r in rows)
    if tok:
        report["llm_decode_tok_s"] = {"n": tok["n"], "p50": tok["p50_ms"], "min": round(min(
            r["llm_decode_tok_s"] for r in rows if r.get("llm_decode_tok_s") is not None), 2)}
    report["by_language"] = {
        lang: {m: st for m in TURN_METRICS if (st := stats(r.get(m) for r in rows if r["language"] == lang))}
        for lang in sorted({r["language"] for r in rows})}
    report["overhead"] = overhead(rows)
    report["streaming_vs_sequential"] = streaming_vs_sequential(rows)
    return report
def format_report(report: dict[str, Any]) -> list[str]:
    """The text table printed at the end of a run: latencies, floors, overhead and streaming ratios."""
    lines = ["", f"{'stage':<14}{'n':>4}{'p50 ms':>11}{'p95 ms':>11}{'max ms':>11}   meaning"]
    for m in TURN_METRICS:
        st = report["metrics"].get(m)
        if st:
            lines.append(f"{m:<14}{st['n']:>4}{st['p50_ms']:>11.1f}{st['p95_ms']:>11.1f}{st['max_ms']:>11.1f}"
                         f"   {MEANING[m]}")
    by = report.get("by_language", {})
    if len(by) > 1:
        lines.append("per language (p50 ms): " + "; ".join(
            f"{lang}: " + ", ".join(f"{m} {st['p50_ms']:.0f}" for m, st in ms.items()
                                    if m in ("final", "tts_start", "first_audio", "end_to_end"))
            + f" (n={max((st['n'] for st in ms.values()), default=0)})" for lang, ms in by.items()))
    if report["errors"]:
        lines.append(f"errors: {report['errors']} of {report['n']} turns failed (see bench.json)")
    fl = report.get("floors") or {}
    if fl:
        lines += ["", f"{'floor / path':<20}{'n':>4}{'p50 ms':>11}{'p95 ms':>11}{'max ms':>11}   meaning"]
        for k, st in fl.items():
            lines.append(f"{k:<20}{st['n']:>4}{st['p50_ms']:>11.1f}{st['p95_ms']:>11.1f}{st['max_ms']:>11.1f}"
                         f"   {report['meaning'].get(k, report['meaning'].get('floor_' + k, ''))}")
        eng = report.get("floor_engines", {})
        for k in ("stt", "llm"):
            if eng.get(k):
                lines.append(f"  {k} floor calls: {eng[k]}")
        for prov, label in (eng.get("tts_engines") or {}).items():
            lines.append(f"  tts floor calls ({prov}): {label}")
    if report.get("llm_decode_tok_s"):
        v = report["llm_decode_tok_s"]
        lines.append(f"  llm decode speed (sequential path, after the first token): p50 {v['p50']:.1f} tok/s, "
                     f"min {v['min']:.1f} tok/s over {v['n']} answers (Spark target, gpt-oss-20b: >= 80 tok/s)")
    ov = report.get("overhead", {})
    if len(ov) > 1:
        lines += ["", "pipeline overhead over the floors (median over turns of pipeline / floor - 1; goal <= 3 %):"]
        what = {"stt": "STT: stt.final after end of speech vs raw transcription of the clip",
                "first_token": "LLM: first token after stt.final vs raw prompt -> first token",
                "answer_to_first_audio": "LLM+TTS: tts_start vs raw first sentence + raw first chunk",
                "first_audio": "voice to voice: end of speech -> first audio vs the sum of the three floors"}
        for k, v in ov.items():
            if k == "goal":
                continue
            verdict = "meets" if v["overhead_ratio"] <= ov["goal"] else "misses"
            langs = ", ".join(f"{lang} {(r - 1) * 100:+.1f} %" for lang, r in v["median_ratio_by_language"].items())
            lines.append(f"  {what[k]}: p50 {v['pipeline_p50_ms']:.1f} vs {v['floor_p50_ms']:.1f} ms; "
                         f"{v['overhead_ratio'] * 100:+.1f} % ({v['median_diff_ms']:+.1f} ms; {verdict} the goal)"
                         + (f" [{langs}]" if len(v["median_ratio_by_language"]) > 1 else ""))
        lines.append("  note: the STT floor transcribes the whole clip at once, while the streaming recogniser "
                     "finalises the VAD-cut utterance after end of speech; in the pipeline the LLM keeps writing "
                     "while the TTS speaks, so on a box with few cores they compete for CPU, which the floors "
                     "(one engine at a time) do not. Other processes on the box add noise to both sides.")
    sv = report.get("streaming_vs_sequential", {})
    if len(sv) > 1:
        lines += ["", "streaming first audio vs the sequential path (median over turns of the ratio; goal <= 0.5x):"]
        for key, label in (("seq_first_audio", "whole answer, then synthesise all of it"),
                           ("seq_first_chunk", "whole answer, then a streaming TTS's first chunk")):
            if key in sv:
                v = sv[key]
                langs = ", ".join(f"{lang} {r:.2f}x" for lang, r in v["median_ratio_by_language"].items())
                lines.append(f"  streaming tts_start p50 {v['pipeline_p50_ms']:.1f} ms vs sequential ({label}) "
                             f"p50 {v['floor_p50_ms']:.1f} ms -> {v['ratio']:.2f}x"
                             + (f" ({'meets' if v['ratio'] <= sv['goal'] else 'misses'} the goal)"
                                if key == "seq_first_audio" else "")
                             + (f" [{langs}]" if len(v["median_ratio_by_language"]) > 1 else ""))
        lines.append("  note: streaming wins only when the answer has more than one sentence; a one-sentence "
                     "answer is spoken after the same wait either way.")
    if report["run"]["providers"] and all(p["is_mock"] for p in report["run"]["providers"].values()):
        lines.append("  (mock engines cost ~nothing: these ratios only show the pipeline's fixed cost in ms; "
                     "run with --profile dev or prod for meaningful numbers)")
    files = report.get("files", {})
    if files:
        lines += ["", "wrote " + ", ".join(str(v) for v in files.values())]
    return lines


# ------------------------------------------------------------------------- files
def git_commit(root: Path = ROOT) -> tuple[str, bool]:
    """(short commit, dirty) of the checkout holding spark_voice; ("nogit", False) outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], check=False,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    check=False, capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "nogit", False
    return (commit or "nogit"), dirty if commit else False


def results_dir(out: Path, commit: str) -> Path:
    """A new folder ``<out>/<YYYYmmdd-HHMMSS>-<commit>[-k]``."""
    base = Path(out) / f"{time.strftime('%Y%m%d-%H%M%S')}-{commit}"
    d, k = base, 1
    while d.exists():
        k += 1
        d = base.with_name(f"{base.name}-{k}")
    d.mkdir(parents=True)
    return d


def write_files(dest: Path, report: dict[str, Any], rows: list[Row], plot: bool) -> dict[str, str]:
    """turns.csv, latency.png (unless not `plot`, or without matplotlib) and bench.json under `dest`;
    returns their paths, also recorded in the report's ``files``."""
    files: dict[str, str] = {}
    report["files"] = files
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    files["csv"] = str(atomic_write_bytes(dest / "turns.csv", buf.getvalue().encode("utf-8")))
    if plot:
        try:
            files["png"] = str(atomic_write_bytes(dest / "latency.png", plot_png(report, rows, TURN_METRICS)))
        except ImportError as exc:
            print(f"warning: no plot ({exc}); install it with: pip install 'spark-voice[bench]'", file=sys.stderr)
    files["json"] = str(dest / "bench.json")
    atomic_write_bytes(dest / "bench.json",
                       json.dumps(report, ensure_ascii=False, indent=2, default=str).encode("utf-8"))
    return files
