"""VoiceSession: a live conversation over a stream of audio frames (microphone, websocket).

The streaming recogniser turns frames into speech_start / partial / final events; each final starts
a turn (:meth:`spark_voice.pipeline.VoicePipeline.turn`) in a worker thread; speech that starts
while the assistant answers cancels that turn (barge-in).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from .errors import SparkVoiceError
from .events import Event, new_request_id
from .pipeline import Emit, Turn, VoicePipeline
from .types import Audio, Stage, Transcript


class VoiceSession:
    """A live conversation over a stream of audio frames (microphone, websocket).

    `feed(frame)` pushes audio through the streaming recogniser; each final transcript starts a
    turn in the background; speech that starts while the assistant is answering cancels that turn
    (barge-in). Events go to `emit` (called from worker threads).
    """

    def __init__(self, pipeline: VoicePipeline, emit: Emit, *, speak: bool = True,
                 request_id_factory: Callable[[], str] = new_request_id) -> None:
        if pipeline.stt is None:
            raise SparkVoiceError("a voice session needs a speech-to-text backend")
        self.pipeline, self.emit, self.speak = pipeline, emit, speak
        pipeline.load()
        lang = pipeline.language
        self._stream = pipeline.stt.stream(None if lang == "auto" else lang)
        self._new_id = request_id_factory
        self._rid = request_id_factory()
        self._turn_start: float | None = None
        self._events: list[Event] = []
        self._worker: threading.Thread | None = None
        self._active_rid: str | None = None
        self._lock = threading.Lock()
        self.turns: list[Turn] = []

    @property
    def speaking(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def feed(self, frame: Audio) -> None:
        t_in = time.perf_counter()
        if self._turn_start is None:
            self._turn_start = t_in
        for ev in self._stream.feed(frame):
            self._on_stt(ev, t_in)

    def flush(self) -> None:
        t_in = time.perf_counter()
        for ev in self._stream.flush():
            self._on_stt(ev, t_in)

    def _on_stt(self, ev, t_in: float | None = None) -> None:
        now = time.perf_counter()
        # speech boundaries: when their audio arrived (see VoicePipeline._stt_event); texts: now
        at = t_in if t_in is not None and ev.kind in ("speech_start", "speech_end") else now
        if ev.kind == "speech_start":
            if self.speaking and self._active_rid:
                self.pipeline.cancel(self._active_rid)  # barge-in
                self.emit(Event(Stage.TURN_BARGE_IN, self._active_rid, now, data={"by": self._rid}))
            self._turn_start = at
        e = Event(f"stt.{ev.kind}", self._rid, at, ev.text,
                  {"language": ev.language, "audio_time": round(ev.audio_time, 3)})
        self._events.append(e)
        self.emit(e)
        if ev.kind == "final":
            self._start_turn(ev)

    def _start_turn(self, ev) -> None:
        rid, start, stt_events = self._rid, self._turn_start, list(self._events)
        self._rid, self._events, self._turn_start = self._new_id(), [], None
        if self._worker is not None and self._worker.is_alive():
            self.pipeline.cancel(self._active_rid)
            self._worker.join()
        transcript = Transcript(ev.text.strip(), ev.segments, ev.language)

        def work() -> None:
            try:
                turn = self.pipeline.turn(self.emit, transcript=transcript, speak=self.speak,
                                           request_id=rid, start=start, prior_events=stt_events)
                self.turns.append(turn)
            except Exception:
                pass  # already reported as an `error` event

        self._active_rid = rid
        self._worker = threading.Thread(target=work, name=f"session-turn-{rid}", daemon=True)
        self._worker.start()

    def wait(self, timeout: float | None = None) -> None:
        if self._worker is not None:
            self._worker.join(timeout)

    def close(self) -> None:
        if self._active_rid:
            self.pipeline.cancel(self._active_rid)
        self.wait(5.0)
