"""VoiceSession: a live conversation over a stream of audio frames (microphone, websocket).

The streaming recogniser turns frames into speech_start / partial / final events; each final starts
a turn (:meth:`spark_voice.pipeline.VoicePipeline.turn`) in a worker thread. Speech that starts
while the assistant answers is a possible interruption (:mod:`spark_voice.turn.interrupt`): the
answer's audio pauses; a real word cancels it (barge-in), a back-channel or a cough resumes it.
With TURN_SPECULATIVE=on the end of a turn may start its LLM on the last stable partial while the
final is decoded (:meth:`VoicePipeline.speculate`); the turn keeps it when the final agrees.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable

from .errors import SparkVoiceError
from .events import Event, new_request_id
from .pipeline import Emit, Turn, VoicePipeline, endpoint_data
from .turn.interrupt import BargeInPolicy, Interruption
from .turn.speculative import Speculation
from .types import Audio, Stage, Transcript

MAX_TURNS_KEPT = 16  # `turns` keeps the latest ones only (a session may last hours)


class VoiceSession:
    """A live conversation over a stream of audio frames (microphone, websocket).

    `feed(frame)` pushes audio through the streaming recogniser; each final transcript starts a
    turn in the background. Speech that starts while the assistant is answering is a *possible*
    interruption (:mod:`spark_voice.turn.interrupt`, BARGE_IN_*): the answer's audio is held
    (``turn.paused``); a real word or enough speech cancels the answer (``turn.barge_in``), a
    back-channel, a cough or silence lets it go on where it stopped (``turn.resumed``) and starts
    no turn. BARGE_IN_POLICY=immediate cancels on any speech onset. Events go to `emit` (called
    from worker threads).
    `turns` holds the latest MAX_TURNS_KEPT turns. After `stop_turns()` or `close()` no new turn
    starts.
    """

    def __init__(self, pipeline: VoicePipeline, emit: Emit, *, speak: bool = True,
                 request_id_factory: Callable[[], str] = new_request_id,
                 barge_in: BargeInPolicy | None = None,
                 respond_to: Callable[[str, Transcript], bool] | None = None, interrupt: bool = True,
                 stream_options: dict[str, Any] | None = None) -> None:
        """respond_to(request_id, transcript): asked at each final transcript whether to answer it
        now (default: always); an utterance left unanswered can be answered later with
        :meth:`respond` and its request id. interrupt=False: speech over an answer neither pauses
        nor cancels it (the Realtime API's ``interrupt_response: false``). stream_options: keyword
        overrides for the recogniser's stream (silence_ms, vad_threshold, prefix_padding_ms,
        end_of_turn; see :meth:`set_stream_options`)."""
        if pipeline.stt is None:
            raise SparkVoiceError("a voice session needs a speech-to-text backend")
        self.pipeline, self.emit, self.speak = pipeline, emit, speak
        self.respond_to, self.interrupt = respond_to, interrupt
        self._pending_utt: tuple[str, float | None, list[Event]] | None = None  # an unanswered utterance
        pipeline.load()
        self.stream_options: dict[str, Any] = dict(stream_options or {})
        self._spec: Speculation | None = None  # the LLM started on the last partial, until the final
        self._stream = self._open_stream()
        self._hook_stream()
        self._new_id = request_id_factory
        self._rid = request_id_factory()
        self._turn_start: float | None = None
        self._events: list[Event] = []
        self._worker: threading.Thread | None = None
        self._active_rid: str | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self.turns: collections.deque[Turn] = collections.deque(maxlen=MAX_TURNS_KEPT)
        self.policy = barge_in if barge_in is not None else BargeInPolicy.from_settings(pipeline.settings)
        self._audio_t = 0.0                 # seconds of audio fed so far
        self._intr: Interruption | None = None  # the possible interruption in progress
        self._utt_over_answer = False       # the current utterance began while the assistant answered
        self._out_lock = threading.Lock()   # orders held / live tts.chunk events
        self._paused_rid: str | None = None
        self._paused_at = 0.0
        self._held: list[Event] = []
        self._play_until = 0.0              # when the audio sent so far ends, played in real time
        self._play_left = 0.0               # audio sent but not played when the output paused
        self.stats = {"paused": 0, "resumed": 0, "barge_in": 0, "backchannels": 0, "noise": 0}

    @property
    def speaking(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    @property
    def answering(self) -> bool:
        """The answer is still being written or its audio is still playing (real-time estimate)."""
        return self.speaking or self._paused_rid is not None or time.perf_counter() < self._play_until

    def feed(self, frame: Audio) -> None:
        t_in = time.perf_counter()
        if self._turn_start is None:
            self._turn_start = t_in
        self._audio_t += frame.duration
        try:
            for ev in self._stream.feed(frame):
                self._on_stt(ev, t_in)
        finally:
            self._drop_speculation()
        self._check_interruption()

    def flush(self) -> None:
        t_in = time.perf_counter()
        try:
            for ev in self._stream.flush():
                self._on_stt(ev, t_in)
        finally:
            self._drop_speculation()
        self._check_interruption(final=True)

    # ------------------------------------------------------------------ speculative start
    def _hook_stream(self) -> None:
        if self.pipeline.settings.turn_speculative == "on" and hasattr(self._stream, "on_turn_end"):
            self._stream.on_turn_end = self._on_turn_end

    def _on_turn_end(self, partial: str, agreeing: int, language: str) -> int:
        """The stream ended the turn and is about to decode the final: maybe start the LLM now.
        Not while an answer runs or plays (the words may be a back-channel or an interruption)."""
        if self._stopped or self.answering or self._intr is not None:
            return 0
        self._spec = self.pipeline.speculate(self._rid, partial, agreeing, language)
        return self._spec.budget.stt_overlap if self._spec is not None else 0

    def _drop_speculation(self) -> None:
        """A speculation the final of the same feed() did not take (noise, a back-channel): cancel it."""
        spec, self._spec = self._spec, None
        if spec is not None:
            self.pipeline.discard(spec)

    # ------------------------------------------------------------------ audio out (held while paused)
    def _emit_turn(self, ev: Event) -> None:
        with self._out_lock:
            if ev.stage == Stage.TTS_CHUNK and self._paused_rid == ev.request_id:
                self._held.append(ev)
                return
            self._send(ev)

    def _send(self, ev: Event) -> None:  # under _out_lock
        if ev.stage == Stage.TTS_CHUNK and ev.audio is not None:
            self._play_until = max(self._play_until, time.perf_counter()) + ev.audio.duration
        self.emit(ev)

    def _pause(self, now: float) -> None:
        rid = self._active_rid
        self._intr = Interruption(self.policy, start=self._audio_t)
        with self._out_lock:
            self._paused_rid, self._paused_at = rid, time.perf_counter()
            # audio already sent but not yet played is paused by the client (talk: the speaker)
            self._play_left = max(self._play_until - time.perf_counter(), 0.0)
            self.stats["paused"] += 1
            self.emit(Event(Stage.TURN_PAUSED, rid or "", now, data={"by": self._rid}))

    def _resume(self, reason: str) -> None:
        with self._out_lock:
            rid, held = self._paused_rid, self._held
            if rid is None:
                return
            self._paused_rid, self._held = None, []
            self._play_until = time.perf_counter() + self._play_left
            self.stats["resumed"] += 1
            self.emit(Event(Stage.TURN_RESUMED, rid, time.perf_counter(),
                            data={"reason": reason, "held_chunks": len(held),
                                  "paused_ms": round((time.perf_counter() - self._paused_at) * 1000.0, 1)}))
            for ev in held:
                self._send(ev)
        self._intr = None

    def _barge_in(self, reason: str) -> None:
        rid = self._active_rid
        with self._out_lock:
            self._paused_rid, self._held, self._play_until = None, [], 0.0
        self._intr = None
        if rid:
            self.pipeline.cancel(rid)
            self.stats["barge_in"] += 1
            self.emit(Event(Stage.TURN_BARGE_IN, rid, time.perf_counter(), data={"by": self._rid, "reason": reason}))

    def _check_interruption(self, final: bool = False) -> None:
        intr = self._intr
        if intr is None:
            return
        voiced = getattr(self._stream, "voiced_ms", None)
        decision = intr.on_time(self._audio_t, voiced)
        if decision is None and (final or not intr.in_speech):
            decision = "resume"  # the utterance ended without a word (a cough, noise)
        self._apply(decision, "speech" if decision == "barge_in" else "no words")

    def _apply(self, decision: str | None, reason: str) -> None:
        if decision == "barge_in":
            self._barge_in(reason)
        elif decision == "resume":
            self._resume(reason)

    # ------------------------------------------------------------------ recogniser events
    def _on_stt(self, ev, t_in: float | None = None) -> None:
        now = time.perf_counter()
        # speech boundaries: when their audio arrived (see VoicePipeline._stt_event); texts: now
        at = t_in if t_in is not None and ev.kind in ("speech_start", "speech_end") else now
        if ev.kind == "speech_start":
            self._utt_over_answer = False
            if self.interrupt and self.answering and self._active_rid:
                self._utt_over_answer = True
                if self.policy.mode == "immediate":
                    self._barge_in("speech onset")
                elif self._intr is None:
                    self._pause(now)
            self._turn_start = at
        elif self._intr is not None and ev.kind == "partial":
            self._apply(self._intr.on_text(ev.text), "words")
        elif self._intr is not None and ev.kind == "speech_end":
            self._intr.on_speech_end()
        e = Event(f"stt.{ev.kind}", self._rid, at, ev.text,
                  {"language": ev.language, "audio_time": round(ev.audio_time, 3), **endpoint_data(ev)})
        self._events.append(e)
        self.emit(e)
        if ev.kind == "final":
            if self._intr is not None:
                self._apply(self._intr.on_text(ev.text, final=True), "words" if self.policy.real_words(ev.text)
                            else "back-channel")
            if self._utt_over_answer and self.policy.mode != "immediate" and not self.policy.real_words(ev.text) \
                    and self.answering:
                # "はい" / "uh-huh" / a cough while the assistant talks: no new turn
                self.stats["backchannels" if ev.text.strip() else "noise"] += 1
                self._rid, self._events, self._turn_start = self._new_id(), [], None
                return
            self._start_turn(ev)

    def _start_turn(self, ev) -> None:
        rid, start, stt_events = self._rid, self._turn_start, list(self._events)
        self._rid, self._events, self._turn_start = self._new_id(), [], None
        spec, self._spec = self._spec, None
        if spec is not None and spec.request_id != rid:
            self.pipeline.discard(spec)
            spec = None
        transcript = Transcript(ev.text.strip(), ev.segments, ev.language)
        if self.respond_to is not None and not self.respond_to(rid, transcript):
            if spec is not None:
                self.pipeline.discard(spec)
            self._pending_utt = (rid, start, stt_events)
            return
        self._run_turn(rid, start, stt_events, transcript=transcript, speculation=spec)

    def _open_stream(self) -> Any:
        lang = self.pipeline.language
        assert self.pipeline.stt is not None
        lang_arg = None if lang == "auto" else lang
        if self.stream_options:  # only then: a third-party recogniser may take no options
            return self.pipeline.stt.stream(lang_arg, **self.stream_options)
        return self.pipeline.stt.stream(lang_arg)

    def reset_input(self) -> None:
        """Drop the audio heard so far (a new recogniser stream); a running answer goes on."""
        self._stream = self._open_stream()
        self._hook_stream()
        self._events, self._turn_start = [], None

    def set_stream_options(self, options: dict[str, Any]) -> bool:
        """End-of-turn settings for this session's recogniser from now on: ``silence_ms`` (a fixed
        silence ends the turn), ``vad_threshold``, ``prefix_padding_ms``, ``end_of_turn`` (a
        factory of :class:`~spark_voice.turn.EndOfTurn`). A change starts a new stream (audio
        not yet ended as an utterance is dropped); returns whether it changed."""
        if options == self.stream_options:
            return False
        self.stream_options = dict(options)
        self.reset_input()
        return True

    def respond(self, transcript: Transcript | None = None, *, text: str | None = None,
                request_id: str | None = None, speak: bool | None = None, resume: bool = False) -> str:
        """Answer now: a transcript (an utterance held back by `respond_to`, named by its
        request_id) or typed `text`; `resume`: no new words, the model goes on from the history
        (after client tool results). A running answer is cancelled first. Returns the turn's id."""
        held = self._pending_utt if self._pending_utt is not None and self._pending_utt[0] == request_id else None
        if held is not None:
            self._pending_utt = None
        rid = request_id or self._new_id()
        start, events = (held[1], held[2]) if held is not None else (None, [])
        self._run_turn(rid, start, events, transcript=transcript, text=text, speak=speak, resume=resume)
        return rid

    def _run_turn(self, rid: str, start: float | None, stt_events: list[Event], *,
                  transcript: Transcript | None = None, text: str | None = None, speak: bool | None = None,
                  resume: bool = False, speculation: Speculation | None = None) -> None:
        with self._lock:
            if self._stopped:  # closed meanwhile (e.g. the websocket went away during recognition)
                if speculation is not None:
                    self.pipeline.discard(speculation)
                return
        if self._worker is not None and self._worker.is_alive():
            self.pipeline.cancel(self._active_rid)
            self._worker.join()
        with self._out_lock:
            self._paused_rid, self._held, self._play_until = None, [], 0.0
        self._intr = None
        say = self.speak if speak is None else speak

        def work() -> None:
            try:
                turn = self.pipeline.turn(self._emit_turn, transcript=transcript, text=text, speak=say,
                                          request_id=rid, start=start, prior_events=stt_events, resume=resume,
                                          speculation=speculation)
                self.turns.append(turn)
            except Exception:
                pass  # already reported as an `error` event

        with self._lock:
            if self._stopped:
                if speculation is not None:
                    self.pipeline.discard(speculation)
                return
            self._active_rid = rid
            self._worker = threading.Thread(target=work, name=f"session-turn-{rid}", daemon=True)
            self._worker.start()

    def wait(self, timeout: float | None = None) -> None:
        if self._worker is not None:
            self._worker.join(timeout)
        if self._paused_rid is not None:  # input ended during a possible interruption: let it finish
            self._resume("input ended")

    def stop_turns(self) -> None:
        """No turn starts from now on; the running one is cancelled (returns at once)."""
        with self._lock:
            self._stopped = True
            rid = self._active_rid
        if rid:
            self.pipeline.cancel(rid)
        spec, self._spec = self._spec, None
        if spec is not None:
            self.pipeline.discard(spec)

    def close(self) -> None:
        self.stop_turns()
        self.wait(5.0)
