"""Bounded queues in front of the engines, and helpers that run blocking engine calls in threads.

Each engine (stt, llm, tts, embedding) gets one :class:`EngineGate`: `concurrency` calls run at
once (1: the native engines are serialized), at most `queue_size` more wait; anything beyond is
refused at once with :class:`~spark_voice.errors.Overloaded` (HTTP 429 + Retry-After) instead
of hanging. A waiting call gives up after `wait_timeout` seconds (also Overloaded).

HTTP routes `admit()` on the event loop (so a 429 is decided before a response starts) and
`acquire()` in the worker thread; websocket sessions go through :class:`Gated` proxies that do
both inside the pipeline's worker threads, so HTTP requests and live sessions share one queue.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncGenerator, Callable, Iterator, Sequence, TypeVar

import numpy as np

from ..backends.base import SttStream, supports_tools
from ..errors import Cancelled, Overloaded
from ..turn.speculative import TurnEndHook
from ..types import Audio, BackendInfo, LlmDelta, SttEvent, Transcript, Voice

T = TypeVar("T")


class EngineGate:
    def __init__(self, name: str, queue_size: int, concurrency: int = 1, wait_timeout: float = 120.0) -> None:
        self.name, self.queue_size, self.concurrency = name, int(queue_size), int(concurrency)
        self.wait_timeout = float(wait_timeout)
        self._cond = threading.Condition()
        self.active = 0      # calls running on the engine
        self.waiting = 0     # admitted, waiting for the engine
        self.rejected = 0    # refused with Overloaded (queue full or waited too long)
        self.served = 0
        self._avg_s = 0.5    # moving average of a call's engine time, for Retry-After

    @property
    def capacity(self) -> int:
        return self.concurrency + self.queue_size

    def retry_after(self) -> int:
        est = self._avg_s * (self.active + self.waiting + 1) / max(1, self.concurrency)
        return int(min(60, max(1, math.ceil(est))))

    def admit(self, *, bounded: bool = True) -> "Ticket":
        """Take a place in the queue or raise Overloaded (never blocks). bounded=False: always admit
        (live audio frames of a session must not be dropped for a full HTTP queue)."""
        with self._cond:
            if bounded and self.active + self.waiting >= self.capacity:
                self.rejected += 1
                raise Overloaded(f"{self.name} engine is busy: {self.active} running, {self.waiting} waiting "
                                 f"(SERVE_QUEUE_SIZE={self.queue_size}); retry later",
                                 retry_after=self.retry_after())
            self.waiting += 1
        return Ticket(self)

    def hold(self, *, bounded: bool = True, cancel: threading.Event | None = None) -> "Ticket":
        """admit() + acquire() for use in a `with` block inside a worker thread."""
        t = self.admit(bounded=bounded)
        t.acquire(cancel)
        return t

    def snapshot(self) -> dict[str, int]:
        return {"active": self.active, "waiting": self.waiting, "capacity": self.capacity,
                "rejected": self.rejected, "served": self.served}


class Ticket:
    """A place in an engine queue: waiting -> active -> done. release() is idempotent."""

    def __init__(self, gate: EngineGate) -> None:
        self.gate = gate
        self.state = "waiting"
        self._t0 = 0.0

    def acquire(self, cancel: threading.Event | None = None) -> "Ticket":
        g = self.gate
        deadline = time.monotonic() + g.wait_timeout
        with g._cond:
            if self.state == "active":
                return self
            while True:
                if self.state == "done":  # abandon()ed meanwhile: the place is gone
                    raise Cancelled(f"request abandoned before the {g.name} engine was free")
                if g.active < g.concurrency:
                    break
                if cancel is not None and cancel.is_set():
                    self._drop_locked()
                    raise Cancelled(f"cancelled while waiting for the {g.name} engine")
                left = deadline - time.monotonic()
                if left <= 0:
                    self._drop_locked()
                    g.rejected += 1
                    raise Overloaded(f"{g.name} engine is busy: waited {g.wait_timeout:.0f} s "
                                     "(SERVE_QUEUE_TIMEOUT_S); retry later", retry_after=g.retry_after())
                g._cond.wait(min(left, 0.1) if cancel is not None else left)
            g.waiting -= 1
            g.active += 1
            self.state = "active"
            self._t0 = time.monotonic()
        return self

    def _drop_locked(self) -> None:
        self.gate.waiting -= 1
        self.state = "done"
        self.gate._cond.notify_all()

    def abandon(self) -> None:
        """Give up a place that was never used (the request went away while waiting)."""
        with self.gate._cond:
            if self.state == "waiting":
                self._drop_locked()

    def release(self) -> None:
        g = self.gate
        with g._cond:
            if self.state == "active":
                g.active -= 1
                g.served += 1
                g._avg_s = 0.8 * g._avg_s + 0.2 * (time.monotonic() - self._t0)
                g._cond.notify_all()
            elif self.state == "waiting":
                g.waiting -= 1
                g._cond.notify_all()
            self.state = "done"

    def __enter__(self) -> "Ticket":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


# ------------------------------------------------------------------------------ proxies
class Gated:
    """A backend seen through its engine gate (used by websocket sessions' pipelines).

    ``Gated(backend, gate)`` returns the subclass implementing the Protocol of the gate's role
    (:class:`GatedStt`, :class:`GatedLlm`, :class:`GatedTts`, :class:`GatedEmbedder`); the engine
    calls wait for the gate, the bookkeeping calls (load, info, voices ...) go straight through.
    """

    def __new__(cls, backend: Any, gate: EngineGate) -> "Gated":
        if cls is Gated:
            cls = _GATED[gate.name]
        return super().__new__(cls)

    def __init__(self, backend: Any, gate: EngineGate) -> None:
        self.raw, self.gate = backend, gate

    @property
    def provider(self) -> str:
        return str(self.raw.provider)

    @property
    def is_mock(self) -> bool:
        return bool(self.raw.is_mock)

    def load(self) -> None:
        self.raw.load()

    def probe(self) -> None:
        with self.gate.hold(bounded=False):
            self.raw.probe()

    def info(self) -> BackendInfo:
        return self.raw.info()

    def close(self) -> None:
        """The shared engine outlives a session: nothing to close here."""


class GatedStt(Gated):
    def transcribe(self, audio: Audio, language: str | None = None) -> Transcript:
        with self.gate.hold():
            return self.raw.transcribe(audio, language)

    def stream(self, language: str | None = None, **options: Any) -> "GatedSttStream":
        return GatedSttStream(self.raw.stream(language, **options), self.gate)


class GatedLlm(Gated):
    def stream_chat(self, messages: list[dict[str, Any]], **kw: Any) -> Iterator[LlmDelta]:
        return _gated_iter(self.gate, lambda: self.raw.stream_chat(messages, **kw), kw.get("cancel"))

    def count_prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        return int(self.raw.count_prompt_tokens(messages))

    @property
    def supports_tools(self) -> bool:
        return supports_tools(self.raw)

    @property
    def tool_format(self) -> str:
        return str(getattr(self.raw, "tool_format", "") or "")


class GatedTts(Gated):
    def voices(self) -> list[Voice]:
        return list(self.raw.voices())

    def synthesize(self, text: str, **kw: Any) -> Iterator[Audio]:
        return _gated_iter(self.gate, lambda: self.raw.synthesize(text, **kw), kw.get("cancel"))

    @property
    def sample_rate(self) -> int:
        return int(getattr(self.raw, "sample_rate", 0))


class GatedEmbedder(Gated):
    def embed(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        with self.gate.hold():
            return np.asarray(self.raw.embed(texts, **kw))

    @property
    def model_id(self) -> str:
        return str(self.raw.model_id)

    @property
    def dim(self) -> int:
        return int(self.raw.dim)


_GATED: dict[str, type[Gated]] = {"stt": GatedStt, "llm": GatedLlm, "tts": GatedTts, "embedding": GatedEmbedder}


def _gated_iter(gate: EngineGate, make: Callable[[], Iterator[T]], cancel: threading.Event | None) -> Iterator[T]:
    ticket = gate.admit()
    try:
        ticket.acquire(cancel)
        yield from make()
    finally:
        ticket.release()


class GatedSttStream:
    """Live audio is never refused: feed() waits for the engine (unbounded admission)."""

    def __init__(self, stream: SttStream, gate: EngineGate) -> None:
        self.stream, self.gate = stream, gate

    def feed(self, audio: Audio) -> list[SttEvent]:
        with self.gate.hold(bounded=False):
            return self.stream.feed(audio)

    def flush(self) -> list[SttEvent]:
        with self.gate.hold(bounded=False):
            return self.stream.flush()

    @property
    def voiced_ms(self) -> float | None:
        """Voiced audio of the utterance in progress (the barge-in policy reads it), if the stream says."""
        return getattr(self.stream, "voiced_ms", None)

    @property
    def on_turn_end(self) -> TurnEndHook | None:
        """The stream's speculative-start hook (see spark_voice.turn.speculative)."""
        return getattr(self.stream, "on_turn_end", None)

    @on_turn_end.setter
    def on_turn_end(self, hook: TurnEndHook | None) -> None:
        self.stream.on_turn_end = hook  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ threads
class Runner:
    """Runs blocking calls off the event loop (one executor per app; context vars carried over)."""

    def __init__(self, max_workers: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="spark-voice-worker")

    async def call(self, fn: Callable[..., T], *args: Any, cancel: threading.Event | None = None) -> T:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        fut = loop.run_in_executor(self.executor, lambda: ctx.run(fn, *args))
        try:
            return await fut
        except asyncio.CancelledError:
            if cancel is not None:
                cancel.set()
            raise

    async def gated(self, ticket: Ticket, fn: Callable[..., T], *args: Any,
                    cancel: threading.Event | None = None) -> T:
        """Run fn(*args) holding an admitted ticket (released in every case)."""
        def work() -> T:
            try:
                ticket.acquire(cancel)
                return fn(*args)
            finally:
                ticket.release()
        try:
            return await self.call(work, cancel=cancel)
        except asyncio.CancelledError:
            ticket.abandon()  # the worker may never start: free the queue place now
            raise

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


async def iterate_in_thread(make: Callable[[], Iterator[T]], ticket: Ticket | None,
                            cancel: threading.Event, name: str = "stream") -> AsyncGenerator[T, None]:
    """Drive a blocking iterator in its own thread (holding `ticket`), yield its items here.

    Leaving the async iteration early (client gone, aclose) sets `cancel`, which the engines check
    between tokens / chunks; the ticket is released when the thread ends.
    """
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    ctx = contextvars.copy_context()

    def put(item: tuple[str, object]) -> None:
        try:
            loop.call_soon_threadsafe(q.put_nowait, item)
        except RuntimeError:  # loop closed (server shutting down)
            cancel.set()

    def work() -> None:
        try:
            if ticket is not None:
                ticket.acquire(cancel)
            for item in make():
                if cancel.is_set():
                    break
                put(("item", item))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(("error", exc))
        finally:
            if ticket is not None:
                ticket.release()
            put(("end", None))

    threading.Thread(target=lambda: ctx.run(work), name=name, daemon=True).start()
    try:
        while True:
            kind, value = await q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        cancel.set()
