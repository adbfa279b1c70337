"""WS /v1/voice: a live voice conversation (protocol in serve/README.md).

Client -> server: binary frames of mono PCM16 little-endian audio (16 kHz unless `start` says
otherwise) and JSON control messages {"type": "start" | "stop" | "text" | "cancel"}. Server -> client: JSON
events (`type` = pipeline stage) with the turn's request_id; every `tts.chunk` event is followed
by exactly one binary frame holding that chunk's audio.

Threads: the receive loop never blocks; audio goes to a per-session feeder thread that runs the
streaming recogniser (VoiceSession.feed); each turn runs in the pipeline's worker threads; their
events come back through call_soon_threadsafe into one sender task, so a JSON event and its
binary frame are never interleaved with other messages.
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
from .middleware import bearer_ok, chosen_protocol, unauthorized_body

log = logging.getLogger("spark_voice.serve.ws")

WS_FORMATS = ("pcm", "opus", "wav", "flac")
MAX_TEXT_CHARS = 4096  # a typed turn, like /v1/audio/speech input
MAX_PENDING_FRAMES = 1500  # 30 s of 20 ms frames waiting for the recogniser, then frames are refused


async def voice_endpoint(websocket, state) -> None:
    from starlette.responses import JSONResponse

    key = state.settings.serve_api_key
    if key and not bearer_ok(websocket.scope, key, websocket.query_params.get("api_key")):
        if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
            await websocket.send_denial_response(JSONResponse(unauthorized_body(), status_code=401))
        else:
            await websocket.close(code=1008, reason="invalid api key")
        return
    await websocket.accept(subprotocol=chosen_protocol(websocket.scope))
    session = WsVoiceSession(websocket, state, websocket.scope.get("state", {}).get("request_id", ""))
    state.sessions.add(session)
    if state.metrics is not None:
        state.metrics.ws_sessions.inc()
    try:
        await session.run()
    finally:
        state.sessions.discard(session)


class WsVoiceSession:
    def __init__(self, websocket, state, session_id: str) -> None:
        self.ws, self.state = websocket, state
        self.session_id = session_id
        self.loop: asyncio.AbstractEventLoop | None = None
        self.out: asyncio.Queue = asyncio.Queue()
        self.frames: queue.Queue = queue.Queue(maxsize=MAX_PENDING_FRAMES)
        self.t0 = time.perf_counter()
        self.in_rate = SAMPLE_RATE_STT
        self.fmt = "pcm"
        self.out_rate: int | None = None
        self.language: str | None = None
        self.voice: str | None = None
        self.session: VoiceSession | None = None  # made by the feeder thread on the first start/audio
        self.started = False
        self._seq = itertools.count()
        self._turns = itertools.count(1)
        self._closed = False

    # ------------------------------------------------------------------ outbound
    def _put(self, item: Any) -> None:
        if self._closed or self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:
            pass

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
            try:
                await self.ws.send_text(json.dumps(d, ensure_ascii=False, default=str))
                if audio is not None:
                    await self.ws.send_bytes(audio)
            except Exception:  # client gone
                self._closed = True
                return

    # ------------------------------------------------------------------ the recogniser thread
    def _make_session(self) -> VoiceSession:
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
            if kind == "end":
                return
            try:
                session = self.session or self._make_session()
                if kind == "audio":
                    session.feed(item[1])
                elif kind == "flush":
                    session.flush()
                elif kind == "text":  # a typed turn: answered like a spoken one (cancels a running answer)
                    session.respond(text=item[1])
            except Exception as exc:
                log.warning("voice session error", extra={"request_id": self.session_id, "error": str(exc)})
                self.error(f"{type(exc).__name__}: {exc}", "session_error")

    # ------------------------------------------------------------------ inbound
    def _control(self, msg: dict) -> None:
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
            except (TypeError, ValueError):
                self.error("sample_rate / input_sample_rate must be integers between 8000 and 192000",
                           "invalid_sample_rate")
                return
            voice = msg.get("voice")
            if voice:
                names = self._voice_names()
                if names and voice not in names:
                    self.error(f"unknown voice {voice!r}; available voices: {', '.join(names)}", "unknown_voice")
                    return
            self.fmt, self.in_rate, self.out_rate = fmt, in_rate, out_rate
            self.language = msg.get("language") or None
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
        elif kind == "cancel":
            if self.session is not None and self.session._active_rid:
                self.session.pipeline.cancel(self.session._active_rid)
        elif kind == "ping":
            self.send_event({"type": "pong", "request_id": self.session_id, "t_ms": self._ms()})
        else:
            self.error(f"unknown control message type {kind!r}; accepted: start, stop, text, cancel, ping",
                       "invalid_control")

    def _voices(self) -> list[dict[str, str]]:
        tts = self.state.backends.get("tts")
        try:
            return [{"name": v.name, "language": v.language} for v in tts.voices()] if tts is not None else []
        except Exception:
            return []

    def _voice_names(self) -> list[str]:
        tts = self.state.backends.get("tts")
        try:
            return [v.name for v in tts.voices()] if tts is not None else []
        except Exception:
            return []

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
        self.started = True
        samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        self._enqueue(("audio", Audio(samples, self.in_rate)))

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        sender = asyncio.create_task(self._sender())
        feeder = threading.Thread(target=self._feeder, name=f"ws-feed-{self.session_id}", daemon=True)
        feeder.start()
        tts = self.state.backends.get("tts")
        self.send_event({"type": "session.created", "request_id": self.session_id, "t_ms": 0.0,
                         "input_format": "pcm_s16le", "input_sample_rate": SAMPLE_RATE_STT,
                         "formats": list(WS_FORMATS), "tts_provider": getattr(tts, "provider", None),
                         "language": self.state.pipeline.language, "voices": self._voices()})
        try:
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if msg.get("bytes") is not None:
                    self._audio(msg["bytes"])
                elif msg.get("text") is not None:
                    try:
                        ctl = json.loads(msg["text"])
                        if not isinstance(ctl, dict):
                            raise ValueError("not an object")
                    except ValueError as exc:
                        self.error(f"control messages must be JSON objects: {exc}", "invalid_control")
                        continue
                    self._control(ctl)
        except Exception as exc:  # a broken connection ends the session, not the server
            log.info("voice session ended", extra={"request_id": self.session_id, "reason": str(exc)})
        finally:
            self._closed = True
            self.cancel_all()
            try:
                self.frames.put_nowait(("end",))
            except queue.Full:
                pass
            await asyncio.get_running_loop().run_in_executor(None, feeder.join, 5.0)
            if self.session is not None:
                await asyncio.get_running_loop().run_in_executor(None, self.session.close)
            self.out.put_nowait(None)
            try:
                await asyncio.wait_for(sender, 2.0)
            except Exception:
                sender.cancel()

    def cancel_all(self) -> None:
        if self.session is not None:
            self.session.pipeline.cancel()
        # drop queued audio so the feeder reaches "end" quickly
        try:
            while True:
                self.frames.get_nowait()
        except queue.Empty:
            pass
