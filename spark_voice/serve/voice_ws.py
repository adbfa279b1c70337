"""WS /v1/voice: a live voice conversation (protocol in serve/README.md).

Client -> server: binary frames of mono PCM16 little-endian audio (16 kHz unless `start` says
otherwise) and JSON control messages {"type": "start" | "stop" | "text" | "cancel" | "reset" |
"ping"}. Server -> client: JSON events (`type` = pipeline stage) with the turn's request_id;
every `tts.chunk` event is followed by exactly one binary frame holding that chunk's audio.

Threads: the receive loop never blocks; audio goes to a per-session feeder thread that runs the
streaming recogniser (VoiceSession.feed); each turn runs in the pipeline's worker threads; their
events come back through call_soon_threadsafe into one sender task, so a JSON event and its
binary frame are never interleaved with other messages.

Budgets (settings in .env.default, close codes in serve/README.md): at most SERVE_MAX_SESSIONS
sessions (1013 beyond); SERVE_WS_MAX_PENDING_S seconds of audio waiting for the recogniser,
counted in bytes (frames beyond are dropped with an `overloaded` error; one frame larger than the
whole budget closes with 1009); SERVE_WS_SEND_QUEUE events / SEND_QUEUE_BYTES waiting for a client
that does not read (then 1008 "slow reader"); SERVE_WS_IDLE_TIMEOUT_S without a message and
SERVE_WS_MAX_SESSION_S in all (then 1000 with the reason). Control messages are JSON objects of at
most MAX_CONTROL_BYTES, nested at most SERVE_MAX_JSON_DEPTH. Closing cancels the queued audio and
the running turn; no turn starts after the close.

Length: the protocol, its budgets and the three threads of a session (receive loop, feeder,
sender) are one state machine; splitting it would spread the close/cancel ordering over files.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from ..events import Event
from ..session import VoiceSession
from ..types import SAMPLE_RATE_STT, Audio, Stage
from .limits import WS_MAX_MESSAGE_BYTES
from .openai_compat import ApiError
from .schemas import parse_json

log = logging.getLogger("spark_voice.serve.ws")

WS_FORMATS = ("pcm", "opus", "wav", "flac")
MAX_TEXT_CHARS = 4096  # a typed turn, like /v1/audio/speech input
MAX_PENDING_FRAMES = 1500  # frames (any size) waiting for the recogniser; bytes are bounded separately
MAX_CONTROL_BYTES = 64 * 1024  # a JSON control message
SEND_QUEUE_BYTES = 32 * 1024 * 1024  # encoded audio waiting for the client
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_TRY_LATER = 1000, 1008, 1009, 1013


async def voice_endpoint(websocket, state) -> None:
    if await accept_session(websocket, state):
        await run_session(state, WsVoiceSession(websocket, state, session_id(websocket)))


def session_id(websocket) -> str:
    return str(websocket.scope.get("state", {}).get("request_id", ""))


async def accept_session(websocket, state) -> bool:
    """Accept a websocket session (/v1/voice, /v1/realtime) with the subprotocol the ApiKeyAuth
    middleware chose, or close it 1013 when SERVE_MAX_SESSIONS are open."""
    await websocket.accept(subprotocol=websocket.scope.get("state", {}).get("ws_subprotocol"))
    limit = int(state.settings.serve_max_sessions)
    if len(state.sessions) >= limit:  # no await between this check and run_session's add: no race
        log.warning("session refused: too many sessions", extra={"open": len(state.sessions)})
        await _close(websocket, CLOSE_TRY_LATER, f"server busy: {limit} sessions open (SERVE_MAX_SESSIONS)")
        return False
    return True


async def run_session(state, session) -> None:
    """Run a session registered in the server state (counted by /health and the metrics)."""
    state.sessions.add(session)
    if state.metrics is not None:
        state.metrics.ws_sessions.inc()
    try:
        await session.run()
    finally:
        state.sessions.discard(session)


async def _close(ws, code: int, reason: str) -> None:
    try:  # a client that does not read may never take the close frame: do not wait for it forever
        await asyncio.wait_for(ws.close(code=code, reason=reason[:120]), 2.0)
    except Exception:
        pass


class WsVoiceSession:
    def __init__(self, websocket, state, session_id: str) -> None:
        self.ws, self.state = websocket, state
        s = state.settings
        self.session_id = session_id
        self.loop: asyncio.AbstractEventLoop | None = None
        self.out: asyncio.Queue = asyncio.Queue()  # bounded by _offer (count and bytes)
        self.out_bytes = 0
        self.max_out = int(s.serve_ws_send_queue)
        self.frames: queue.Queue = queue.Queue(maxsize=MAX_PENDING_FRAMES + 8)  # + room for control items
        self.pending_bytes = 0  # PCM16 bytes queued for the feeder
        self._pending_lock = threading.Lock()
        self.max_pending_s = float(s.serve_ws_max_pending_s)
        self.idle_s = float(s.serve_ws_idle_timeout_s)
        self.max_session_s = float(s.serve_ws_max_session_s)
        self.max_depth = int(s.serve_max_json_depth)
        self.t0 = time.perf_counter()
        self.in_rate = SAMPLE_RATE_STT
        self.fmt = "pcm"
        self.out_rate: int | None = None
        self.language: str | None = None
        self.voice: str | None = None
        self.session: VoiceSession | None = None  # made by the feeder thread on the first start/audio
        self._session_lock = threading.Lock()
        self.started = False
        self._seq = itertools.count()
        self._turns = itertools.count(1)
        self._closed = False
        self._stop: asyncio.Event | None = None
        self.close_code, self.close_reason = CLOSE_NORMAL, ""

    @property
    def pending_budget(self) -> int:
        """Bytes of PCM16 audio that may wait for the recogniser (SERVE_WS_MAX_PENDING_S)."""
        return int(self.max_pending_s * self.in_rate * 2)

    # ------------------------------------------------------------------ outbound
    def _put(self, item: Any) -> None:
        if self._closed or self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(self._offer, item)
        except RuntimeError:
            pass

    def _offer(self, item: Any) -> None:
        """On the loop: queue an outbound message, or end a session whose client does not read."""
        if self._closed:
            return
        size = len(item[1]) if item is not None and item[1] is not None else 0
        if self.out.qsize() >= self.max_out or self.out_bytes + size > SEND_QUEUE_BYTES:
            self.shutdown(CLOSE_POLICY, f"slow reader: {self.out.qsize()} messages not taken "
                                        "(SERVE_WS_SEND_QUEUE)")
            return
        self.out_bytes += size
        self.out.put_nowait(item)

    def shutdown(self, code: int, reason: str) -> None:
        """On the loop: end the session with this close code (the receive loop sees it at once)."""
        if self._stop is not None and not self._stop.is_set():
            self.close_code, self.close_reason = code, reason
            log.info("voice session closing", extra={"request_id": self.session_id, "code": code,
                                                     "reason": reason})
            self._stop.set()

    def send_event(self, d: dict, audio: bytes | None = None) -> None:
        d.setdefault("session_id", self.session_id)
        self._put((d, audio))

    def error(self, message: str, code: str = "error", request_id: str = "") -> None:
        self.send_event({"type": "error", "request_id": request_id or self.session_id, "code": code,
                         "message": message, "t_ms": self._ms()})

    def _ms(self) -> float:
        return round((time.perf_counter() - self.t0) * 1000.0, 2)

    def emit(self, ev: Event) -> None:
        """Pipeline / VoiceSession events (worker threads) -> the websocket."""
        d = ev.to_dict(self.t0)
        d.pop("t", None)
        d["type"] = d.pop("stage")
        audio = None
        if ev.stage == Stage.TTS_CHUNK and ev.audio is not None:
            try:
                audio, rate = self._encode(ev.audio)
            except Exception as exc:  # never kill the turn for one chunk
                self.error(f"audio encoding failed: {exc}", "encode_error", ev.request_id)
                return
            d.update(format=self.fmt, sample_rate=rate, bytes=len(audio), seq=next(self._seq))
        self.send_event(d, audio)

    def _encode(self, a: Audio) -> tuple[bytes, int]:
        from ..audio.io import encode

        return encode(a, self.fmt, self.out_rate or a.sample_rate)

    async def _sender(self) -> None:
        while True:
            item = await self.out.get()
            if item is None:
                return
            d, audio = item
            self.out_bytes -= len(audio) if audio is not None else 0
            try:
                await self.ws.send_text(json.dumps(d, ensure_ascii=False, default=str))
                if audio is not None:
                    await self.ws.send_bytes(audio)
            except Exception:  # client gone
                self._closed = True
                return

    # ------------------------------------------------------------------ the recogniser thread
    def _make_session(self) -> VoiceSession | None:
        with self._session_lock:  # against close(): a session is made before it, or never
            if self._closed:
                return None
            if self.session is None:
                pipe = self.state.session_pipeline()
                if self.language:
                    pipe.language = self.language
                if self.voice is not None:
                    pipe.voice = self.voice or None
                self.session = VoiceSession(pipe, self.emit,
                                            request_id_factory=lambda: f"{self.session_id}-{next(self._turns)}")
            return self.session

    def _feeder(self) -> None:
        while True:
            item = self.frames.get()
            kind = item[0]
            if kind == "end" or self._closed:
                return
            try:
                if kind == "audio":
                    with self._pending_lock:
                        self.pending_bytes -= len(item[1])
                session = self._make_session()
                if session is None:
                    return
                if kind == "audio":  # PCM16 -> float32 here, not on the event loop
                    samples = np.frombuffer(item[1], dtype="<i2").astype(np.float32) / 32768.0
                    session.feed(Audio(samples, item[2]))
                elif kind == "flush":
                    session.flush()
                elif kind == "text":  # a typed turn: answered like a spoken one (cancels a running answer)
                    session.respond(text=item[1])
                elif kind == "reset":  # a new conversation: audio heard so far and the history dropped
                    session.reset_input()
                    session.pipeline.reset()
                    self.send_event({"type": "session.reset", "request_id": self.session_id, "t_ms": self._ms()})
            except Exception as exc:
                log.warning("voice session error", extra={"request_id": self.session_id, "error": str(exc)})
                self.error(f"{type(exc).__name__}: {exc}", "session_error")

    # ------------------------------------------------------------------ inbound
    async def _control(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "start":
            if self.session is not None or self.started:
                self.error("'start' must be the first message of a session", "invalid_control")
                return
            fmt = str(msg.get("format") or "pcm").lower()
            if fmt not in WS_FORMATS:
                self.error(f"unknown audio format {fmt!r}; accepted values: {', '.join(WS_FORMATS)}",
                           "invalid_format")
                return
            try:
                in_rate = int(msg.get("input_sample_rate") or SAMPLE_RATE_STT)
                out_rate = int(msg["sample_rate"]) if msg.get("sample_rate") else None
                if not 8000 <= in_rate <= 192000 or (out_rate is not None and not 8000 <= out_rate <= 192000):
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                self.error("sample_rate / input_sample_rate must be integers between 8000 and 192000",
                           "invalid_sample_rate")
                return
            voice = msg.get("voice")
            if voice is not None and not isinstance(voice, str):
                self.error("`voice` must be a string", "unknown_voice")
                return
            language = msg.get("language")
            if language is not None and not isinstance(language, str):
                self.error("`language` must be a string such as ja, en or auto", "invalid_control")
                return
            if voice:
                names = [v.name for v in await self.state.runner.call(self.state.voices)]  # may load: off the loop
                if names and voice not in names:
                    self.error(f"unknown voice {voice!r}; available voices: {', '.join(names)}", "unknown_voice")
                    return
            self.fmt, self.in_rate, self.out_rate = fmt, in_rate, out_rate
            self.language = language or None
            self.voice = voice or None
            self.started = True
            self.send_event({"type": "session.updated", "request_id": self.session_id, "format": self.fmt,
                             "input_sample_rate": self.in_rate, "sample_rate": self.out_rate,
                             "language": self.language, "voice": self.voice, "t_ms": self._ms()})
        elif kind == "stop":
            self.started = True
            self._enqueue(("flush",))
        elif kind == "text":
            text = msg.get("text")
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
                self.error(f"'text' needs a non-empty string of at most {MAX_TEXT_CHARS} characters",
                           "invalid_control")
                return
            self.started = True
            self._enqueue(("text", text.strip()))
        elif kind in ("cancel", "reset"):
            if self.session is not None and self.session._active_rid:
                self.session.pipeline.cancel(self.session._active_rid)
            if kind == "reset":
                self.started = True
                self._enqueue(("reset",))
        elif kind == "ping":
            self.send_event({"type": "pong", "request_id": self.session_id, "t_ms": self._ms()})
        else:
            self.error(f"unknown control message type {str(kind)[:40]!r}; accepted: start, stop, text, cancel, "
                       "reset, ping", "invalid_control")

    def _enqueue(self, item: tuple) -> bool:
        try:
            self.frames.put_nowait(item)
            return True
        except queue.Full:
            self.error("audio is arriving faster than it can be recognised; frame dropped", "overloaded")
            return False

    def _audio(self, data: bytes) -> None:
        if len(data) % 2:
            self.error(f"binary frames must be PCM16 little-endian (an even number of bytes), got {len(data)}",
                       "invalid_audio")
            return
        budget = self.pending_budget
        if len(data) > budget:
            self.shutdown(CLOSE_TOO_BIG, f"audio frame of {len(data)} bytes exceeds the {budget}-byte budget "
                                         "(SERVE_WS_MAX_PENDING_S); send frames of 20-100 ms")
            return
        self.started = True
        with self._pending_lock:
            if self.pending_bytes + len(data) > budget:
                full = True
            else:
                full = False
                self.pending_bytes += len(data)
        if full:
            self.error(f"more than {self.max_pending_s:g} s of audio waiting for the recogniser "
                       "(SERVE_WS_MAX_PENDING_S); frame dropped", "overloaded")
            return
        if not self._enqueue(("audio", data, self.in_rate)):
            with self._pending_lock:
                self.pending_bytes -= len(data)

    async def _text(self, text: str) -> None:
        if len(text) > MAX_CONTROL_BYTES:
            self.error(f"control messages are at most {MAX_CONTROL_BYTES} bytes", "invalid_control")
            return
        try:
            ctl = parse_json(text, self.max_depth)
        except ApiError as exc:
            self.error(f"control messages must be JSON objects: {exc.message}", "invalid_json")
            return
        if not isinstance(ctl, dict):
            self.error("control messages must be JSON objects", "invalid_control")
            return
        await self._control(ctl)

    async def _next_message(self, receive: "asyncio.Task[Any]") -> str | dict:
        """The next client message, or why the session ends: 'stop', 'idle' or 'expired'."""
        assert self._stop is not None
        left = self.t0 + self.max_session_s - time.perf_counter()
        if left <= 0:
            return "expired"
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait({receive, stop}, timeout=min(self.idle_s, left),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if receive in done:
            return receive.result()
        if self._stop.is_set():
            return "stop"
        return "expired" if self.t0 + self.max_session_s - time.perf_counter() <= 0 else "idle"

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        sender = asyncio.create_task(self._sender())
        feeder = threading.Thread(target=self._feeder, name=f"ws-feed-{self.session_id}", daemon=True)
        feeder.start()
        tts = self.state.backends.get("tts")
        voices = [{"name": v.name, "language": v.language}
                  for v in await self.state.runner.call(self.state.voices)]  # may load a model: off the loop
        self.send_event({"type": "session.created", "request_id": self.session_id, "t_ms": 0.0,
                         "input_format": "pcm_s16le", "input_sample_rate": SAMPLE_RATE_STT,
                         "formats": list(WS_FORMATS), "tts_provider": getattr(tts, "provider", None),
                         "language": self.state.pipeline.language, "voices": voices,
                         "limits": {"max_pending_s": self.max_pending_s, "idle_timeout_s": self.idle_s,
                                    "max_session_s": self.max_session_s,
                                    "max_message_bytes": WS_MAX_MESSAGE_BYTES}})
        receive: asyncio.Task[Any] | None = None
        client_left = False
        try:
            while True:
                if receive is None:
                    receive = asyncio.ensure_future(self.ws.receive())
                msg = await self._next_message(receive)
                if isinstance(msg, str):
                    if msg == "idle":
                        self.shutdown(CLOSE_NORMAL, f"idle for {self.idle_s:g} s (SERVE_WS_IDLE_TIMEOUT_S)")
                    elif msg == "expired":
                        self.shutdown(CLOSE_NORMAL, f"session longer than {self.max_session_s:g} s "
                                                    "(SERVE_WS_MAX_SESSION_S)")
                    break
                receive = None
                if msg["type"] == "websocket.disconnect":
                    client_left = True
                    break
                if msg.get("bytes") is not None:
                    self._audio(msg["bytes"])
                elif msg.get("text") is not None:
                    await self._text(msg["text"])
        except Exception as exc:  # a broken connection ends the session, not the server
            client_left = True
            log.info("voice session ended", extra={"request_id": self.session_id, "reason": str(exc)})
        finally:
            if receive is not None and not receive.done():
                receive.cancel()
            with self._session_lock:
                self._closed = True
                session = self.session
            self.cancel_all()
            if session is not None:
                session.stop_turns()  # no turn starts from now on, the running one is cancelled
            try:
                self.frames.put_nowait(("end",))
            except queue.Full:
                pass
            await asyncio.get_running_loop().run_in_executor(None, feeder.join, 5.0)
            if session is not None:
                await asyncio.get_running_loop().run_in_executor(None, session.close)
            if not client_left and self.close_code != CLOSE_POLICY:  # events already queued still go out
                self.out.put_nowait(None)
                try:
                    await asyncio.wait_for(sender, 2.0)
                except Exception:
                    pass
            sender.cancel()
            if not client_left:
                await _close(self.ws, self.close_code, self.close_reason)

    def cancel_all(self) -> None:
        if self.session is not None:
            self.session.pipeline.cancel()
        # drop queued audio so the feeder reaches "end" quickly
        try:
            while True:
                self.frames.get_nowait()
        except queue.Full:
            pass
        except queue.Empty:
            pass
        with self._pending_lock:
            self.pending_bytes = 0
