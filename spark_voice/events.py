"""Pipeline events and the latency recorder computed from them (the only latency bookkeeping).

Every stage emits an :class:`Event` carrying the turn's request_id, a stage name and a monotonic
timestamp (time.perf_counter()). Latencies are differences between event times of one turn:

- ``partial``   first stt.partial   - turn start (first audio fed)
- ``final``     stt.final           - end of speech (speech_end, or last audio for file input)
- ``first_token`` first spoken llm token (gpt-oss: the first final-channel token, or of a preamble) - stt.final
- ``tts_start`` first tts.chunk     - stt.final
- ``end_to_end`` turn.done          - turn start
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .types import Stage

METRICS = ("partial", "final", "first_token", "tts_start", "end_to_end")


def percentiles(values: Iterable[float]) -> dict[str, float]:
    """n, p50, p95 and max (milliseconds in, milliseconds out) of a list of latencies."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {"n": 0}
    return {"n": int(arr.size), "p50_ms": round(float(np.percentile(arr, 50)), 3),
            "p95_ms": round(float(np.percentile(arr, 95)), 3), "max_ms": round(float(arr.max()), 3)}


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Event:
    stage: str
    request_id: str
    t: float = field(default_factory=time.perf_counter)
    text: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    audio: Any = None  # Audio for tts.chunk

    def to_dict(self, t0: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"stage": self.stage, "request_id": self.request_id, "t": round(self.t, 6)}
        if t0 is not None:
            d["t_ms"] = round((self.t - t0) * 1000.0, 2)
        if self.text:
            d["text"] = self.text
        if self.data:
            d.update({k: v for k, v in self.data.items() if k not in d})
        if self.audio is not None:
            d["sample_rate"] = self.audio.sample_rate
            d["duration_s"] = round(self.audio.duration, 4)
        return d


def turn_latencies(events: Iterable[Event], start: float | None = None) -> dict[str, float]:
    """Latencies (milliseconds) of one turn from its events; missing stages are left out."""
    first: dict[str, float] = {}
    end_of_speech = None
    for e in events:
        if e.stage == Stage.LLM_TOKEN and e.data.get("channel", "final") not in ("final", "commentary"):
            continue
        first.setdefault(e.stage, e.t)
        if e.stage == Stage.STT_SPEECH_END:
            end_of_speech = e.t
        if e.stage == Stage.TURN_START:
            start = e.t
    out: dict[str, float] = {}
    if start is None:
        start = min(first.values()) if first else None
    if start is None:
        return out
    ms = lambda a, b: round((a - b) * 1000.0, 3)  # noqa: E731
    if Stage.STT_PARTIAL in first:
        out["partial"] = ms(first[Stage.STT_PARTIAL], start)
    if Stage.STT_FINAL in first:
        out["final"] = ms(first[Stage.STT_FINAL], end_of_speech if end_of_speech is not None else start)
    ref = first.get(Stage.STT_FINAL, start)
    if Stage.LLM_TOKEN in first:
        out["first_token"] = ms(first[Stage.LLM_TOKEN], ref)
    if Stage.TTS_CHUNK in first:
        out["tts_start"] = ms(first[Stage.TTS_CHUNK], ref)
    if Stage.TURN_DONE in first:
        out["end_to_end"] = ms(first[Stage.TURN_DONE], start)
    return out


class LatencyRecorder:
    """Keeps the latencies of the last `window` turns per request id; p50/p95 per metric."""

    def __init__(self, window: int = 20):
        self.window = window
        self._turns: deque[tuple[str, dict[str, float]]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, request_id: str, latencies: dict[str, float]) -> None:
        with self._lock:
            self._turns.append((request_id, dict(latencies)))

    def record_events(self, request_id: str, events: Iterable[Event], start: float | None = None) -> dict[str, float]:
        lat = turn_latencies(events, start)
        self.record(request_id, lat)
        return lat

    def samples(self) -> list[tuple[str, dict[str, float]]]:
        with self._lock:
            return list(self._turns)

    def summary(self) -> dict[str, Any]:
        turns = self.samples()
        out: dict[str, Any] = {"window": self.window, "turns": len(turns), "metrics": {}}
        for m in METRICS:
            vals = [(rid, lat[m]) for rid, lat in turns if m in lat]
            if not vals:
                continue
            out["metrics"][m] = {**percentiles(v for _, v in vals), "request_ids": [rid for rid, _ in vals]}
        return out
