"""VoicePipeline: audio in -> STT -> (RAG) -> LLM -> sentence chunker -> TTS -> audio out.

One engine of the turn runs per worker thread (engines are blocking native calls): the LLM thread
streams tokens into the chunker, a TTS thread speaks each sentence as soon as it is released, so
the first audio comes while the LLM is still writing. Every stage reports through one `emit`
callback as :class:`~spark_voice.events.Event`; the sync :meth:`VoicePipeline.run` collects them
into a :class:`Turn`, the async :meth:`VoicePipeline.stream` yields them as they happen, and
:class:`spark_voice.session.VoiceSession` drives a live audio stream with barge-in.

Speculative start (TURN_SPECULATIVE, :mod:`spark_voice.turn.speculative`): a stream's end of turn
may start the LLM on the last stable partial (:meth:`VoicePipeline.speculate`) while the final is
decoded; :meth:`VoicePipeline.turn` keeps that generation when the final says the same words
(``llm.speculative`` ``hit``), else cancels it and starts on the final. Its output is buffered
until then: no event of the answer comes before ``stt.final``.

Length: the turn's stages share its cancel event, its emit and its two threads; one class holds
them so that the order of events (the contract of every front end) is visible in one place.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable, Protocol, Sequence

from .audio.io import AudioInput, load_audio
from .backends.base import (
    Backend,
    Embedder,
    LanguageModel,
    SpeechToText,
    TextToSpeech,
    count_prompt_tokens,
    supports_tools,
    takes_kwarg,
)
from .backends.registry import build
from .config import Settings
from .errors import Cancelled, SparkVoiceError, VoiceError
from .events import Event, LatencyRecorder, new_request_id
from .prompt import build_messages
from .text import SentenceChunker, guess_language
from .tools import Tool, ToolCall, ToolChoice, ToolRegistry, builtin_tools
from .turn.speculative import Speculation, ThreadBudget
from .types import SAMPLE_RATE_STT, Audio, Hit, LlmDelta, Role, Stage, SttEvent, Transcript

log = logging.getLogger("spark_voice.pipeline")

Emit = Callable[[Event], None]


class Out(Protocol):
    """How a turn's stages report: stage, text, audio, time (default now), data -> the Event sent."""

    def __call__(self, stage: str, text: str = "", audio: Audio | None = None, t: float | None = None,
                 **data: Any) -> Event: ...


class Retriever(Protocol):
    """What a voice turn retrieves with (spark_voice.rag.retrieve.IndexRetriever or your own)."""

    def search(self, query: str, top_k: int | None = None) -> list[Hit]: ...

    def __len__(self) -> int:
        """Chunks in the index (shown by /health)."""
        ...


@dataclass
class Turn:
    """The result of one turn (sync API)."""

    request_id: str
    transcript: str = ""
    answer: str = ""
    language: str = ""
    audio: Audio | None = None
    hits: list[Hit] = field(default_factory=list)
    analysis: str = ""
    tool_calls: list[dict] = field(default_factory=list)  # {"id", "name", "arguments", "result", "ok", "ms"}
    # calls of client tools (VoicePipeline.client_tools) the caller has to answer: {"id", "name", "arguments"}
    pending_calls: list[dict] = field(default_factory=list)
    # the engine's own counts over the turn's LLM rounds: prompt_tokens, completion_tokens (summed)
    usage: dict[str, int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    latencies: dict[str, float] = field(default_factory=dict)  # ms, see events.turn_latencies
    cancelled: bool = False
    error: str = ""
    speculative: str = ""  # "hit": the answer began on the last partial, "miss": restarted on the final

    @property
    def timings(self) -> dict[str, float]:
        return self.latencies


class VoicePipeline:
    """Wire STT, LLM, TTS (and optionally a retriever) and run voice turns.

    Build from settings (``VoicePipeline.from_settings(profile="mock")``) or pass backends.
    Any backend may be None: without STT the pipeline takes text only, without TTS it answers in
    text only.
    """

    def __init__(self, stt: SpeechToText | None = None, llm: LanguageModel | None = None,
                 tts: TextToSpeech | None = None, *, retriever: Retriever | None = None,
                 embedder: Embedder | None = None, settings: Settings | None = None, system_prompt: str | None = None,
                 language: str | None = None, voice: str | None = None, history_turns: int | None = None,
                 top_k: int | None = None, latency_window: int | None = None,
                 tools: ToolRegistry | Sequence[Any] | None = None, max_tool_calls: int | None = None,
                 tool_timeout: float | None = None, tool_choice: ToolChoice = "auto") -> None:
        self.settings = settings if settings is not None else Settings.load(use_dotenv=False, profile="mock")
        s = self.settings
        self.stt, self.llm, self.tts = stt, llm, tts
        self.retriever, self.embedder = retriever, embedder
        self.system_prompt = s.llm_system_prompt if system_prompt is None else system_prompt
        self.language = language or s.stt_language
        # None: the TTS backends pick TTS_DEFAULT_VOICE when it speaks the sentence's language,
        # else their first voice for that language. A voice set here is used for every sentence.
        self.voice = voice
        self.history_turns = s.llm_history_turns if history_turns is None else history_turns
        self.top_k = top_k or s.rag_top_k
        self.history: list[dict[str, Any]] = []
        self.latency = LatencyRecorder(latency_window or s.serve_latency_window)
        self._cancels: dict[str, threading.Event] = {}
        self._specs: dict[str, Speculation] = {}  # speculative starts waiting for their final
        self._lock = threading.Lock()
        self.warnings: list[str] = []
        # tools the model may call during a turn (plain functions, Tools, or a ToolRegistry)
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(
            tools or (), timeout=s.tools_timeout_s, max_calls=s.tools_max_calls)
        if max_tool_calls is not None:
            self.tools.max_calls = int(max_tool_calls)
        if tool_timeout is not None:
            self.tools.timeout = float(tool_timeout)
        # the first LLM round of a turn: "auto", "required" or {"type": "function", ...}; later rounds: auto
        self.tool_choice = tool_choice
        # tools the *caller* runs (OpenAI function specs, e.g. a Realtime client's): offered to the
        # model next to `tools`; a call to one ends the turn with it in `Turn.pending_calls` (and an
        # `llm.tool_call` event with client=True). Its result goes into `history` as a tool message,
        # then `turn(resume=True)` lets the model go on from there.
        self.client_tools: list[dict[str, Any]] = []

    def tool(self, fn: Callable[..., Any] | None = None, **kw: Any) -> Tool | Callable[[Callable[..., Any]], Tool]:
        """Decorator: ``@pipeline.tool`` registers a function (sync or async) as a tool."""
        return self.tools(fn, **kw)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, load: bool = False,
                      **overrides: Any) -> "VoicePipeline":
        """Build every configured backend (lazily loaded unless `load=True`)."""
        s = settings if settings is not None else Settings.load(**overrides)
        stt, llm, tts = build("stt", s), build("llm", s), build("tts", s)
        retriever, embedder, warn = None, None, []
        if s.rag_enabled != "off":
            index = s.path(s.rag_index_path)
            if index.exists():
                try:
                    from .rag.retrieve import IndexRetriever

                    embedder = build("embedding", s)
                    retriever = IndexRetriever.open(index, embedder, settings=s)
                except Exception as exc:  # a broken index must not stop the assistant
                    warn.append(f"rag: index {index} not usable, answering without retrieval: {exc}")
            elif s.rag_enabled == "on":
                warn.append(f"rag: index {index} not found; run `spark-voice ingest --source DIR` "
                            "(answering without retrieval)")
        p = cls(stt, llm, tts, retriever=retriever, embedder=embedder, settings=s,
                tools=builtin_tools(s, retriever))
        if "search_documents" in s.tools_builtin and "search_documents" not in p.tools:
            warn.append("tools: search_documents needs a RAG index (RAG_ENABLED and RAG_INDEX_PATH); not offered")
        p.warnings.extend(warn)
        for w in warn:
            log.warning(w)
        if load:
            p.load()
        return p

    def backends(self) -> dict[Role, Backend]:
        out: dict[Role, Backend | None] = {"stt": self.stt, "llm": self.llm, "tts": self.tts,
                                           "embedding": self.embedder}
        return {k: v for k, v in out.items() if v is not None}

    def load(self, probe: bool = False) -> None:
        for b in self.backends().values():
            fn = getattr(b, "probe" if probe else "load", None)
            if fn is not None:
                fn()

    def _preload(self, stt: bool, speak: bool) -> None:
        """Load what a turn will use before its clock starts (no-op once loaded)."""
        for b in (self.stt if stt else None, self.llm, self.tts if speak else None):
            if b is not None and hasattr(b, "load"):  # plugged-in backends may load themselves
                b.load()
        if speak and self.voice and self.tts is not None and hasattr(self.tts, "voices"):
            names = [v.name for v in self.tts.voices()]
            if self.voice not in names:  # fail before the turn, not after the LLM has answered
                raise VoiceError(f"unknown voice {self.voice!r}; available voices: {', '.join(names)}")
        if self.retriever is not None and self.embedder is not None:
            try:
                self.embedder.load()
            except Exception as exc:  # retrieval is optional: answer without it, say so
                msg = f"rag: embedder failed to load, answering without retrieval: {exc}"
                self.warnings.append(msg)
                log.warning(msg)
                self.retriever = None

    def close(self) -> None:
        for b in self.backends().values():
            if hasattr(b, "close"):
                b.close()

    def reset(self) -> None:
        """Forget the conversation history."""
        self.history.clear()

    # ------------------------------------------------------------------ cancellation
    def cancel(self, request_id: str | None = None) -> None:
        """Stop the given turn (or every running turn) promptly: LLM and TTS check between tokens."""
        with self._lock:
            targets = [self._cancels[request_id]] if request_id in self._cancels else (
                list(self._cancels.values()) if request_id is None else [])
            specs = [self._specs.pop(request_id)] if request_id in self._specs else (
                [*self._specs.values()] if request_id is None else [])
            if request_id is None:
                self._specs.clear()
        for ev in targets:
            ev.set()
        for spec in specs:
            spec.cancel()

    # ------------------------------------------------------------------ speculative start
    def speculate(self, request_id: str, partial: str, agreeing: int, language: str = "") -> Speculation | None:
        """Start turn `request_id`'s LLM on a partial transcript while its final is decoded
        (TURN_SPECULATIVE=on and at least TURN_SPECULATIVE_STABLE partial decodes agreed; else
        None). Hand it to :meth:`turn` (``speculation=``) or cancel it with :meth:`cancel`."""
        s, llm = self.settings, self.llm
        if s.turn_speculative != "on" or agreeing < s.turn_speculative_stable or llm is None or not partial.strip():
            return None
        budget = ThreadBudget(int(getattr(llm, "n_threads", s.llm_threads)),
                              int(getattr(self.stt, "n_threads", s.stt_threads)), s.turn_speculative_threads)
        threads, want_stats = takes_kwarg(llm, "n_threads"), takes_kwarg(llm, "stats")

        def prepare(text: str) -> tuple[list[Hit], dict[str, Any], list[dict], dict[str, Any]]:
            hits, rag = self._search(text)
            kw = self._tool_kwargs(llm, True, self.tools.max_calls <= 0)
            if want_stats:
                kw["stats"] = {}  # the engine's counts of this generation, for Turn.usage
            return hits, rag, self.messages_for(text, hits), kw

        def generate(messages: list[dict], cancel: threading.Event, kw: dict[str, Any],
                     n_threads: Callable[[], int]) -> Iterable[LlmDelta]:
            extra: dict[str, Any] = {"n_threads": n_threads} if threads else {}
            return llm.stream_chat(messages, cancel=cancel, **kw, **extra)

        spec = Speculation(request_id, partial.strip(), language, budget, prepare, generate)
        with self._lock:
            old, self._specs[request_id] = self._specs.get(request_id), spec
        if old is not None:
            old.cancel()
        return spec

    def discard(self, spec: Speculation) -> None:
        """Cancel a speculation that no turn will take (noise, a back-channel, a closed session)."""
        with self._lock:
            if self._specs.get(spec.request_id) is spec:
                del self._specs[spec.request_id]
        spec.cancel()

    def _confirm(self, spec: Speculation, turn: Turn, cancel: threading.Event, out: Out) -> Speculation | None:
        """The final is in: keep the speculation when it heard the same words, else cancel it."""
        with self._lock:
            if self._specs.get(spec.request_id) is spec:
                del self._specs[spec.request_id]
        hit = bool(turn.transcript) and spec.matches(turn.transcript) and not spec.failed \
            and not spec.cancel_event.is_set() and not cancel.is_set()
        if not hit:
            spec.cancel()
        turn.speculative = "hit" if hit else "miss"
        out(Stage.LLM_SPECULATIVE, spec.text, hit=hit, tokens=spec.tokens,
            ahead_ms=round((time.perf_counter() - spec.t_start) * 1000.0, 1))
        return spec if hit else None

    # ------------------------------------------------------------------ sync API
    def run(self, audio: AudioInput | None = None, *, text: str | None = None, speak: bool = True,
            request_id: str | None = None, sample_rate: int | None = None, streaming_stt: bool = False,
            on_event: Emit | None = None) -> Turn:
        """Run one turn and return the whole :class:`Turn` (blocking; safe inside notebooks)."""
        self._preload(audio is not None and text is None, speak)
        events: list[Event] = []

        def emit(ev: Event) -> None:
            events.append(ev)
            if on_event is not None:
                on_event(ev)

        turn = self.turn(emit, audio=audio, text=text, speak=speak, request_id=request_id,
                          sample_rate=sample_rate, streaming_stt=streaming_stt)
        turn.events = events
        return turn

    # ------------------------------------------------------------------ async API
    async def stream(self, audio: AudioInput | None = None, *, text: str | None = None, speak: bool = True,
                     request_id: str | None = None, sample_rate: int | None = None,
                     streaming_stt: bool = False) -> AsyncIterator[Event]:
        """Yield the turn's events as they happen. Closing the iterator cancels the turn."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._preload, audio is not None and text is None, speak)
        q: asyncio.Queue[Event | None] = asyncio.Queue()
        rid = request_id or new_request_id()

        def emit(ev: Event) -> None:
            loop.call_soon_threadsafe(q.put_nowait, ev)

        def work() -> None:
            try:
                self.turn(emit, audio=audio, text=text, speak=speak, request_id=rid,
                           sample_rate=sample_rate, streaming_stt=streaming_stt)
            except Exception:
                pass  # reported as an `error` event
            finally:
                loop.call_soon_threadsafe(q.put_nowait, None)

        worker = threading.Thread(target=work, name=f"turn-{rid}", daemon=True)
        worker.start()
        try:
            while True:
                ev = await q.get()
                if ev is None:
                    break
                yield ev
        finally:
            self.cancel(rid)

    # ------------------------------------------------------------------ the turn
    def turn(self, emit: Emit, *, audio: AudioInput | None = None, text: str | None = None, speak: bool = True,
             request_id: str | None = None, sample_rate: int | None = None, streaming_stt: bool = False,
             start: float | None = None, transcript: Transcript | None = None,
             prior_events: Sequence[Event] = (), resume: bool = False,
             speculation: Speculation | None = None) -> Turn:
        """Run one turn in this thread, reporting each event to `emit` as it happens (what `run`,
        `stream` and :class:`~spark_voice.session.VoiceSession` are built on). `transcript`: the
        user's words are already known (a live session's final); `start` and `prior_events`: the
        turn began earlier (its STT events count for the latencies). `resume`: no new user words;
        the model goes on from `history` as it is (after the results of client tool calls).
        `speculation`: the LLM started on the last partial (:meth:`speculate`), kept when the final
        says the same words."""
        rid = request_id or new_request_id()
        cancel = threading.Event()
        with self._lock:
            self._cancels[rid] = cancel
        start = time.perf_counter() if start is None else start
        events: list[Event] = []
        turn = Turn(request_id=rid)

        def out(stage: str, text: str = "", audio: Audio | None = None, t: float | None = None,
                **data: Any) -> Event:
            ev = Event(stage, rid, t if t is not None else time.perf_counter(), text, data, audio)
            events.append(ev)
            emit(ev)
            return ev

        try:
            # 1. speech to text
            if resume:
                turn.language = self.language if self.language != "auto" else ""
            elif transcript is not None:
                turn.transcript, turn.language = transcript.text, transcript.language
            elif text is not None:
                turn.transcript = text.strip()
            else:
                if audio is None:
                    raise SparkVoiceError("run() needs audio or text")
                if self.stt is None:
                    raise SparkVoiceError("this pipeline has no speech-to-text backend; pass text=")
                tr, spec = self._transcribe(self.stt, audio, sample_rate, streaming_stt, out, cancel, rid)
                turn.transcript, turn.language = tr.text, tr.language
                speculation = spec or speculation
            if resume:
                pass
            elif text is not None:  # typed text: its script tells the language, not STT_LANGUAGE
                turn.language = guess_language(turn.transcript)
            elif self.language != "auto":
                turn.language = self.language
            else:
                turn.language = turn.language or guess_language(turn.transcript)
            spec = self._confirm(speculation, turn, cancel, out) if speculation is not None else None
            if not turn.transcript and not resume:
                out(Stage.TURN_DONE, reason="no speech")
                return turn
            # 2. retrieval (a resumed turn has no new words to look up; a kept speculation has
            # retrieved already, on the same words)
            if spec is not None:
                spec.wait_prepared()
                hits = spec.hits
                if self.retriever is not None:
                    out(Stage.RAG_HITS, hits=[h.to_dict() for h in hits], speculative=True, **spec.rag)
            else:
                hits = [] if resume else self._retrieve(turn.transcript, out)
            turn.hits = hits
            # 3. LLM -> chunker -> TTS
            if self.llm is None:
                raise SparkVoiceError("this pipeline has no language model backend")
            exchange = self._answer(self.llm, turn, hits, speak, cancel, out, resume=resume, spec=spec)
            turn.cancelled = cancel.is_set()
            if not turn.cancelled:  # before turn.done: a caller may answer a pending call right away
                self._remember(exchange)
            out(Stage.TURN_DONE, cancelled=turn.cancelled, usage=dict(turn.usage))
        except Cancelled:
            turn.cancelled = True
            out(Stage.TURN_DONE, cancelled=True)
        except Exception as exc:
            turn.error = f"{type(exc).__name__}: {exc}"
            log.error("turn failed", extra={"request_id": rid, "error": turn.error})
            out("error", turn.error, error_type=type(exc).__name__)
            out(Stage.TURN_DONE, error=turn.error)
            raise
        finally:
            if speculation is not None:
                speculation.cancel()  # a no-op once its generation was used up
            with self._lock:
                self._cancels.pop(rid, None)
                if speculation is not None and self._specs.get(rid) is speculation:
                    del self._specs[rid]
            turn.latencies = self.latency.record_events(rid, [*prior_events, *events], start)
            log.info("turn", extra={"request_id": rid, "stage": Stage.TURN_DONE, "latency_ms": turn.latencies,
                                    "transcript": turn.transcript[:200], "answer": turn.answer[:200],
                                    "cancelled": turn.cancelled})
        return turn

    def _transcribe(self, stt: SpeechToText, audio: AudioInput, sample_rate: int | None, streaming: bool,
                    out: Out, cancel: threading.Event, rid: str) -> tuple[Transcript, Speculation | None]:
        a = load_audio(audio, SAMPLE_RATE_STT, source_rate=sample_rate)
        if not streaming:
            tr = stt.transcribe(a, None if self.language == "auto" else self.language)
            out(Stage.STT_FINAL, tr.text, language=tr.language, audio_s=round(a.duration, 3),
                segments=[[round(s.start, 2), round(s.end, 2), s.text] for s in tr.segments])
            return tr, None
        # streaming: feed 20 ms frames through the recogniser, as a live source would
        stream = stt.stream(None if self.language == "auto" else self.language)
        step = SAMPLE_RATE_STT // 50
        finals: list[str] = []
        lang = ""
        spec: list[Speculation | None] = [None]  # the speculation on the last utterance (this clip is one turn)

        def on_turn_end(partial: str, agreeing: int, language: str) -> int:
            if spec[0] is not None:
                self.discard(spec[0])
            joined = ("" if (language or lang) == "ja" else " ").join([*finals, partial]).strip()
            spec[0] = self.speculate(rid, joined, agreeing, language or lang)
            return spec[0].budget.stt_overlap if spec[0] is not None else 0

        if self.settings.turn_speculative == "on" and hasattr(stream, "on_turn_end"):
            stream.on_turn_end = on_turn_end

        def handle(events: list[SttEvent], t_in: float, before: Speculation | None) -> None:
            nonlocal lang
            for ev in events:
                lang = ev.language or lang
                self._stt_event(ev, out, finals, t_in)
                if ev.kind == "speech_start" and spec[0] is not None:  # more speech: not the end of the turn
                    self.discard(spec[0])
                    spec[0] = None
            if spec[0] is not None and spec[0] is not before:
                if any(ev.kind == "final" for ev in events):
                    spec[0].end_overlap()
                else:  # the utterance was noise (no final)
                    self.discard(spec[0])
                    spec[0] = None

        try:
            for i in range(0, max(len(a.samples), 1), step):
                if cancel.is_set():
                    raise Cancelled()
                t_in = time.perf_counter()  # speech_start / speech_end happened when this audio came in
                before = spec[0]
                handle(stream.feed(Audio(a.samples[i:i + step], SAMPLE_RATE_STT)), t_in, before)
            before = spec[0]
            t_in = time.perf_counter()
            handle(stream.flush(), t_in, before)
        except BaseException:
            if spec[0] is not None:
                self.discard(spec[0])
            raise
        text = " ".join(f for f in finals if f).strip() if lang != "ja" else "".join(finals)
        return Transcript(text, [], lang), spec[0]

    @staticmethod
    def _stt_event(ev: SttEvent, out: Out, finals: list[str], t_in: float | None = None) -> None:
        # A recogniser returns speech_end and the final from the same feed() call, after decoding:
        # stamp speech boundaries with the time their audio arrived, texts when they are ready,
        # so that the `final` latency (speech_end -> stt.final) includes the final decode.
        if ev.kind == "final":
            finals.append(ev.text)
            out(Stage.STT_FINAL, ev.text, language=ev.language, audio_time=round(ev.audio_time, 3))
        else:
            t = t_in if ev.kind in ("speech_start", "speech_end") else None
            out(f"stt.{ev.kind}", ev.text, t=t, language=ev.language, audio_time=round(ev.audio_time, 3),
                **endpoint_data(ev))

    def _search(self, query: str) -> tuple[list[Hit], dict[str, Any]]:
        """Retrieval without events: (hits, the data of its rag.hits event)."""
        if self.retriever is None:
            return [], {}
        t0 = time.perf_counter()
        try:
            hits = self.retriever.search(query, self.top_k)
        except Exception as exc:
            log.warning("retrieval failed; answering without it", extra={"error": str(exc)})
            return [], {"error": str(exc)}
        return hits, {"ms": round((time.perf_counter() - t0) * 1000, 3)}

    def _retrieve(self, query: str, out: Out) -> list[Hit]:
        if self.retriever is None:
            return []
        hits, data = self._search(query)
        out(Stage.RAG_HITS, hits=[h.to_dict() for h in hits], **data)
        return hits

    def _tool_kwargs(self, llm: LanguageModel, first: bool, last_round: bool) -> dict[str, Any]:
        """stream_chat's tool arguments for one LLM round (`first`: the first round of a new turn;
        after tool results, in later rounds or a resumed turn: auto, unless none)."""
        if not (bool(self.tools or self.client_tools) and supports_tools(llm)):
            return {}
        return {"tools": [*self.tools.specs(), *self.client_tools],
                "tool_choice": "none" if last_round or self.tool_choice == "none" else (
                    self.tool_choice if first else "auto")}

    def messages_for(self, user_text: str | None, hits: Sequence[Hit] = ()) -> list[dict[str, Any]]:
        """The prompt of a turn (see :func:`spark_voice.prompt.build_messages`); `user_text` None:
        history only (a resumed turn)."""
        return build_messages(self.system_prompt, user_text, hits=hits, history=self.history)

    def _remember(self, exchange: list[dict[str, Any]]) -> None:
        """Add a turn's messages to the history: user + answer, or (a client tool call pending)
        user + the assistant's calls + server tool results, which the caller's results and a
        resumed turn continue. Keeps the last `history_turns` exchanges (each starts at a user
        message), never cutting one in two."""
        if self.history_turns <= 0 and not any(m.get("tool_calls") for m in exchange):
            return
        self.history += exchange
        users = [i for i, m in enumerate(self.history) if m.get("role") == "user"]
        keep = max(self.history_turns, 1)
        if len(users) > keep:
            del self.history[:users[len(users) - keep]]

    def _answer(self, llm: LanguageModel, turn: Turn, hits: list[Hit], speak: bool, cancel: threading.Event,
                out: Out, resume: bool = False, spec: Speculation | None = None) -> list[dict[str, Any]]:
        """Answer; returns the turn's new messages for the history (see `_remember`). `spec`: a
        confirmed speculation, whose generation is the first LLM round."""
        messages = spec.messages if spec is not None else self.messages_for(None if resume else turn.transcript,
                                                                           hits)
        new_from = len(messages) if resume else len(messages) - 1
        user_msg = [] if resume else [{"role": "user", "content": turn.transcript}]
        chunker = SentenceChunker.from_settings(self.settings)
        sentences: queue.Queue[str | None] = queue.Queue()
        answer: list[str] = []
        analysis: list[str] = []
        chunks: list[Audio] = []
        tts_error: list[BaseException] = []
        emit_analysis = bool(self.settings.llm_emit_analysis)
        tts = self.tts if speak else None

        def speaker(tts: TextToSpeech) -> None:
            while True:
                s = sentences.get()
                if s is None or cancel.is_set():
                    return
                try:
                    lang = _voice_language(s, turn.language)
                    for chunk in tts.synthesize(s, voice=self.voice, language=lang, cancel=cancel):
                        if cancel.is_set():
                            return
                        chunks.append(chunk)
                        out(Stage.TTS_CHUNK, s, audio=chunk)
                except Exception as exc:  # reported after the LLM stops
                    tts_error.append(exc)
                    cancel.set()
                    return

        tts_thread = None
        if tts is not None:
            tts_thread = threading.Thread(target=speaker, args=(tts,), name=f"tts-{turn.request_id}", daemon=True)
            tts_thread.start()

        def release(parts: Iterable[str]) -> None:
            for sentence in parts:
                out(Stage.LLM_SENTENCE, sentence)
                if tts_thread is not None:
                    sentences.put(sentence)

        client = {str((t.get("function") or {}).get("name")) for t in self.client_tools}
        want_stats = takes_kwarg(llm, "stats")
        calls_made = 0
        rounds = 0
        try:
            while True:
                last_round = calls_made >= self.tools.max_calls
                kw = self._tool_kwargs(llm, rounds == 0 and not resume, last_round)
                stats: dict[str, Any] = {}
                if want_stats:
                    kw["stats"] = stats
                if spec is not None and rounds == 0:  # the speculation's generation (its own stats)
                    stats = spec.kwargs.get("stats", stats)
                    deltas: Iterable[LlmDelta] = spec.deltas(cancel)
                else:
                    deltas = llm.stream_chat(messages, cancel=cancel, **kw)
                rounds += 1
                pending: dict[int, list] = {}
                t_round = time.perf_counter()
                n_deltas = 0
                for delta in deltas:
                    n_deltas += 1
                    if cancel.is_set():
                        break
                    if getattr(delta, "kind", "text") == "tool_call":  # arguments: never spoken
                        pending.setdefault(delta.index, [delta.tool_name, []])[1].append(delta.text)
                        continue
                    if not _is_spoken(delta):
                        analysis.append(delta.text)
                        if emit_analysis:
                            out(Stage.LLM_ANALYSIS, delta.text, channel=delta.channel)
                        continue
                    if not delta.text:
                        continue
                    answer.append(delta.text)
                    out(Stage.LLM_TOKEN, delta.text, channel=delta.channel)
                    release(chunker.push(delta.text))
                self._count(turn, llm, messages, stats, n_deltas)
                if cancel.is_set() or not pending or last_round:
                    break
                release(chunker.flush())  # a preamble ("Let me check.") is spoken while the tool runs
                if answer and not answer[-1].endswith((" ", "\n")):
                    answer.append(" ")
                llm_ms = round((time.perf_counter() - t_round) * 1000, 3)
                calls = [ToolCall(name, "".join(parts)) for name, parts in pending.values()]
                mine = [c for c in calls if c.name in client]
                messages = self._run_tools([c for c in calls if c.name not in client], messages, turn, cancel,
                                           out, llm_ms, handed_out=mine)
                calls_made += len(calls)
                if mine:  # the caller answers these: the turn ends here, the history keeps the calls
                    for c in mine:
                        turn.pending_calls.append({"id": c.id, "name": c.name, "arguments": c.arguments})
                        out(Stage.LLM_TOOL_CALL, c.name, call_id=c.id, name=c.name, arguments=c.arguments,
                            llm_ms=llm_ms, client=True)
                    break
                if cancel.is_set():
                    break
            if not cancel.is_set():
                release(chunker.flush())
        finally:
            sentences.put(None)
            if tts_thread is not None:
                tts_thread.join()
        turn.answer = "".join(answer).strip()
        turn.analysis = "".join(analysis)
        if tts_error:
            raise tts_error[0]
        if chunks:
            turn.audio = Audio.concat(chunks)
        if turn.pending_calls:
            return user_msg + messages[new_from + len(user_msg):]
        return user_msg + [{"role": "assistant", "content": turn.answer}]

    @staticmethod
    def _count(turn: Turn, llm: LanguageModel, messages: list[dict], stats: dict[str, Any], n_deltas: int) -> None:
        """Add one LLM round to `turn.usage`: the engine's own counts (``stats=``) when it reports
        them, else the prompt counted by its tokenizer and the streamed pieces."""
        u = turn.usage
        p = stats.get("prompt_tokens")
        if p is None:
            try:
                p = count_prompt_tokens(llm, messages)
            except Exception:
                p = 0
        c = stats.get("completion_tokens", n_deltas)
        u["prompt_tokens"] = u.get("prompt_tokens", 0) + int(p)
        u["completion_tokens"] = u.get("completion_tokens", 0) + int(c)


    def _run_tools(self, calls: list[ToolCall], messages: list[dict], turn: Turn, cancel: threading.Event,
                   out: Out, llm_ms: float, handed_out: Sequence[ToolCall] = ()) -> list[dict]:
        """Run the model's tool calls; the messages with the calls (and `handed_out`, the client
        tools' calls, not run here) and their results appended."""
        messages = [*messages, {"role": "assistant", "content": "",
                                "tool_calls": [c.to_openai() for c in [*calls, *handed_out]]}]
        for call in calls:
            out(Stage.LLM_TOOL_CALL, call.name, call_id=call.id, name=call.name, arguments=call.arguments,
                llm_ms=llm_ms)
            res = self.tools.execute(call, cancel=cancel)
            out(Stage.TOOL_RESULT, call.name, call_id=call.id, name=call.name, ok=res.ok, error=res.error,
                ms=res.ms, timed_out=res.timed_out, cancelled=res.cancelled, result=res.content[:1000])
            turn.tool_calls.append({"id": call.id, "name": call.name, "arguments": call.arguments,
                                    "result": res.content, "ok": res.ok, "ms": res.ms})
            if cancel.is_set():
                break
            messages.append({"role": "tool", "tool_call_id": call.id, "content": res.content})
        return messages

def _is_spoken(delta: Any) -> bool:
    """The final answer, or a preamble gpt-oss writes to the user (commentary, no recipient)."""
    if getattr(delta, "recipient", ""):
        return False
    return delta.channel in ("final", "commentary")


def endpoint_data(ev: SttEvent) -> dict[str, Any]:
    """speech_end: how long the endpointing waited after the voice stopped, and why it ended."""
    if ev.kind != "speech_end":
        return {}
    return {"silence_ms": ev.silence_ms, "reason": ev.reason}


def _voice_language(sentence: str, turn_language: str) -> str:
    """Which voice speaks a sentence: in a ja/en turn its script decides (an English sentence in a
    Japanese answer goes to an English voice); a sentence without letters, or a turn in another
    language, keeps the turn's language."""
    if turn_language not in ("ja", "en") or not any(c.isalpha() for c in sentence):
        return turn_language or guess_language(sentence)
    return guess_language(sentence)
