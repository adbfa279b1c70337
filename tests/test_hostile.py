"""Hostile input, one section per item of issue 16, against the mock profile on loopback (the
decompression cases also on the dev profile). After each attack the server must still answer
/health (a generous hang guard, not a timing assert: speed is benchmarks/bench_server_load.py).

Memory is measured as the peak resident size of this process (the server runs in a thread here)
above its size before the attack: /proc/self/clear_refs resets the peak, else a sampler thread
watches VmRSS.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import test_serve as serve_harness
import websockets

from conftest import ROOT, model_file, need_module, tone
from spark_voice.backends.mock import MockEmbedder, MockLLM, MockSTT, MockTTS
from spark_voice.config import Settings
from spark_voice.errors import ConfigError
from spark_voice.pipeline import VoicePipeline
from spark_voice.serve import auth
from spark_voice.serve.app import create_app
from spark_voice.serve.limits import WS_MAX_MESSAGE_BYTES, WS_MAX_QUEUE, check_bind, json_depth
from spark_voice.serve.voice_ws import SEND_QUEUE_BYTES

KEY = "sk-hostile-key"
HANG_GUARD_S = 20.0  # "does not hang", never "is fast"


# ------------------------------------------------------------------------------ helpers
class Server(serve_harness.Server):
    """test_serve's server (the CLI's transport limits), models loaded, and a liveness probe."""

    @property
    def state(self):
        return self.app.state.sv

    def __enter__(self) -> "Server":
        super().__enter__()
        self.state.wait_loaded(HANG_GUARD_S)
        return self

    def alive(self) -> dict:
        """/health answers (within the hang guard) with the full body for the key holder."""
        r = httpx.get(self.url + "/health", headers=auth_h(), timeout=HANG_GUARD_S)
        assert r.status_code == 200, r.text
        return r.json()


def auth_h(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def settings_for(tmp_path, **over) -> Settings:
    return Settings.load(tmp_path, environ={}, use_dotenv=False, profile="mock", SERVE_API_KEY=KEY, **over)


def mock_app(settings: Settings, *, stt=None, llm=None, tts=None):
    pipe = VoicePipeline(stt or MockSTT(partial_interval=0.3, silence=0.3, language="en"),
                         llm or MockLLM.from_settings(settings), tts or MockTTS(), settings=settings, language="en")
    return create_app(settings, pipe, embedder=MockEmbedder())


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    s = settings_for(tmp_path_factory.mktemp("hostile"), SERVE_MAX_SESSIONS="4", SERVE_MAX_AUDIO_S="900",
                     SERVE_MAX_CHAT_CHARS="50000", SERVE_MAX_EMBEDDING_CHARS="1000", SERVE_MAX_EMBEDDING_INPUTS="16",
                     LLM_MAX_TOKENS="5")
    with Server(mock_app(s)) as server:
        yield server


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_growth_mb(fn) -> tuple[float, object]:
    """(peak RSS during fn above RSS before it, in MiB; fn's result)."""
    gc.collect()
    base = _kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        exact = _kb("VmHWM") <= base + 1024
    except OSError:
        exact = False
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.002):
            peak[0] = max(peak[0], _kb("VmRSS"))

    sampler = None if exact else threading.Thread(target=sample, daemon=True)
    if sampler:
        sampler.start()
    try:
        result = fn()
    finally:
        stop.set()
        if sampler:
            sampler.join()
    top = _kb("VmHWM") if exact else max(peak[0], _kb("VmRSS"))
    return (top - base) / 1024.0, result


def flac_of_silence(seconds: float, sr: int = 48000) -> bytes:
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sr, 1, format="FLAC", subtype="PCM_16") as f:
        block = np.zeros(sr * 60, dtype=np.float32)
        left = int(seconds * sr)
        while left > 0:
            f.write(block[:min(left, len(block))])
            left -= len(block)
    return buf.getvalue()


def wav_with_rate(rate: int, frames: int = 800) -> bytes:
    """A valid PCM16 WAV whose header claims `rate` (libsndfile refuses to write absurd rates)."""
    data = np.zeros(frames, dtype="<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def transcribe(server: Server, data: bytes, name: str = "a.flac", key: str = KEY) -> httpx.Response:
    return httpx.post(server.url + "/v1/audio/transcriptions", headers=auth_h(key), timeout=HANG_GUARD_S * 3,
                      files={"file": (name, data, "application/octet-stream")}, data={"model": "x"})


def assert_openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    for leak in ("Traceback", "RecursionError", "AttributeError", "TypeError", "File \""):
        assert leak not in err["message"], err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


# ------------------------------------------------------------------------------ 1. audio bombs
def test_one_hour_flac_is_refused_from_its_header(srv):
    data = flac_of_silence(3600)
    assert len(data) < 5 * 1024 * 1024  # ~0.7 GB of samples in a few hundred KB
    t0 = time.perf_counter()
    growth, r = peak_growth_mb(lambda: transcribe(srv, data))
    took = time.perf_counter() - t0
    err = assert_openai_error(r, 413, "audio_too_long")
    assert "3600 s" in err["message"] and "SERVE_MAX_AUDIO_S" in err["message"]
    print(f"1-hour FLAC ({len(data) / 1e6:.2f} MB): 413 in {took * 1000:.0f} ms, peak RSS +{growth:.1f} MiB")
    assert growth < 50, f"the server grew by {growth:.0f} MiB"
    assert took < HANG_GUARD_S
    srv.alive()


@pytest.mark.parametrize("rate", [8, 1000, 1_000_000])
def test_absurd_sample_rates_are_refused(srv, rate):
    err = assert_openai_error(transcribe(srv, wav_with_rate(rate), "x.wav"), 400, "invalid_audio")
    assert f"{rate} Hz" in err["message"] and "4000-384000" in err["message"]
    srv.alive()


def test_audio_just_over_the_limit_is_refused_while_decoding(tmp_path):
    """A stream whose header does not give the length is cut while decoding (block by block)."""
    from spark_voice.audio.limits import decode_bounded
    from spark_voice.errors import AudioTooLong

    buf = io.BytesIO()
    sf.write(buf, tone(3.0, 16000), 16000, format="OGG", subtype="VORBIS")
    with pytest.raises(AudioTooLong, match="SERVE_MAX_AUDIO_S"):
        decode_bounded(buf.getvalue(), max_seconds=2.0, sample_rate=16000, name="x.ogg")
    a = decode_bounded(buf.getvalue(), max_seconds=5.0, sample_rate=16000, name="x.ogg")
    assert a.sample_rate == 16000 and 2.9 < a.duration < 3.1


def test_engine_queue_admits_before_decoding(tmp_path):
    """With the STT queue full, even a decompression bomb is a 429 at once: nothing is decoded."""
    s = settings_for(tmp_path, SERVE_QUEUE_SIZE="1")
    gate = threading.Event()

    class SlowSTT(MockSTT):
        def transcribe(self, audio, language=None):
            gate.wait(HANG_GUARD_S)
            return super().transcribe(audio, language)

    with Server(mock_app(s, stt=SlowSTT(language="en"))) as server:
        small = io.BytesIO()
        sf.write(small, tone(0.5, 16000), 16000, format="WAV", subtype="PCM_16")
        busy = [threading.Thread(target=transcribe, args=(server, small.getvalue(), "a.wav")) for _ in range(2)]
        for t in busy:
            t.start()
        deadline = time.monotonic() + HANG_GUARD_S
        while sum(server.state.gates["stt"].snapshot()[k] for k in ("active", "waiting")) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        growth, r = peak_growth_mb(lambda: transcribe(server, flac_of_silence(3600)))
        assert_openai_error(r, 429, "engine_overloaded")
        assert growth < 50
        gate.set()
        for t in busy:
            t.join(HANG_GUARD_S)
        server.alive()


def test_dev_profile_refuses_the_bomb_before_whisper(tmp_path, dev_settings):
    """The same on the dev profile: the real whisper.cpp model is configured but never runs."""
    need_module("pywhispercpp", "stt")
    model_file(dev_settings, "stt")
    s = dev_settings.model_copy(update={"serve_api_key": KEY})
    with Server(create_app(s, load=False)) as server:
        growth, r = peak_growth_mb(lambda: transcribe(server, flac_of_silence(3600)))
        assert_openai_error(r, 413, "audio_too_long")
        assert_openai_error(transcribe(server, wav_with_rate(8), "x.wav"), 400, "invalid_audio")
        h = server.alive()
        assert h["providers"]["stt"]["provider"] != "mock" and h["providers"]["stt"]["loaded"] is False
        assert growth < 50


# ------------------------------------------------------------------------------ 2. JSON
def chat(server: Server, body: bytes | dict, key: str = KEY) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + "/v1/chat/completions", content=content, timeout=HANG_GUARD_S,
                      headers={**auth_h(key), "Content-Type": "application/json"})


def test_deeply_nested_json_is_a_400(srv):
    assert_openai_error(chat(srv, b"[" * 200_000), 400, "invalid_json")
    deep = b'{"model": "x", "messages": [{"role": "user", "content": "hi", "x": ' + b"[" * 40 + b"]" * 40 + b"}]}"
    err = assert_openai_error(chat(srv, deep), 400, "invalid_json")
    assert "SERVE_MAX_JSON_DEPTH" in err["message"]
    assert_openai_error(chat(srv, b'{"messages": [1, 2'), 400, "invalid_json")
    assert_openai_error(chat(srv, b'"just a string"'), 400, "invalid_json")
    srv.alive()


@pytest.mark.parametrize("patch", [
    {"stream_options": [1]}, {"stream_options": {"include_usage": "yes"}}, {"messages": "hi"},
    {"messages": [{"role": "user", "content": 5}]}, {"messages": [{"role": "robot", "content": "hi"}]},
    {"max_tokens": "5"}, {"max_tokens": 0}, {"temperature": "hot"}, {"temperature": 9}, {"n": 2},
    {"stream": "yes"}, {"rag": "on"}, {"stop": 5}, {"messages": [{"role": "user", "content": [{"type": "image"}]}]},
])
def test_every_chat_field_is_validated(srv, patch):
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], **patch}
    assert_openai_error(chat(srv, body), 400)


def test_json_depth_scan_ignores_brackets_in_strings():
    assert json_depth(b'{"a": "[[[[[[[[", "b": "\\"[[["}') == 1
    assert json_depth(b"[" * 100, stop_above=32) > 32
    assert json_depth(b'[[["\\\\"]]]') == 3


# ------------------------------------------------------------------------------ 3. websocket budgets
def ws_url(server: Server, path: str = "/v1/voice") -> str:
    return server.url.replace("http://", "ws://") + path


class RawWs:
    """A bare websocket client on a socket with a tiny receive buffer: it sends, and reads nothing
    until asked (a client that never reads)."""

    def __init__(self, server: Server, headers: dict[str, str], rcvbuf: int = 4096) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(HANG_GUARD_S)
        self.sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.sock.sendall((f"GET /v1/voice HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"{extra}\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "connection closed during the handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, payload: bytes, opcode: int = 2) -> None:
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(head + b"\0\0\0\0")  # a zero mask leaves the payload as is
        self.sock.sendall(payload)

    def close_code(self) -> int | None:
        """Read everything the server sent until it closed; the code of its close frame."""
        data = b""
        self.sock.settimeout(HANG_GUARD_S)
        try:
            while True:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        pos = 0
        while pos + 2 <= len(data):
            op, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
            pos += 2
            if n == 126:
                (n,) = struct.unpack_from("!H", data, pos)
                pos += 2
            elif n == 127:
                (n,) = struct.unpack_from("!Q", data, pos)
                pos += 8
            if op == 8 and n >= 2:
                return int(struct.unpack_from("!H", data, pos)[0])
            pos += n
        return None

    def close(self) -> None:
        self.sock.close()


def wait_no_sessions(server: Server) -> None:
    deadline = time.monotonic() + HANG_GUARD_S
    while server.state.sessions:
        assert time.monotonic() < deadline, "the session did not end"
        time.sleep(0.05)


def test_huge_frames_from_a_client_that_never_reads(srv):
    """200 x 16 MiB frames: the first is over the pending-audio budget (close 1009); the server
    never holds more than a few frames, whatever the client keeps sending."""
    frame = bytes(WS_MAX_MESSAGE_BYTES)
    budget_mb = (WS_MAX_MESSAGE_BYTES * (WS_MAX_QUEUE + 2) + SEND_QUEUE_BYTES) / 2**20
    ws = RawWs(srv, auth_h())

    def flood() -> int:
        sent = 0
        for _ in range(200):
            try:
                ws.send(frame)
            except OSError:  # the server closed the connection
                break
            sent += 1
        return sent

    try:
        growth, sent = peak_growth_mb(flood)
        code = ws.close_code()
    finally:
        ws.close()
    print(f"200 x 16 MiB frames: {sent} sent before the server closed; close code {code}; "
          f"peak RSS +{growth:.0f} MiB (budget {budget_mb:.0f} MiB)")
    assert code == 1009
    assert growth < budget_mb, f"grew {growth:.0f} MiB, budget {budget_mb:.0f} MiB"
    wait_no_sessions(srv)
    srv.alive()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_slow_reader_is_closed_and_its_queue_bounded(tmp_path):
    logger = logging.getLogger("spark_voice.serve.ws")  # its own handler: other tests may stop propagation
    seen, level = _Records(), logger.level
    logger.addHandler(seen)
    logger.setLevel(logging.INFO)
    try:
        _slow_reader(tmp_path, seen)
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)


def _slow_reader(tmp_path, seen: _Records) -> None:
    s = settings_for(tmp_path, SERVE_WS_SEND_QUEUE="8")
    with Server(mock_app(s)) as server:
        ws = RawWs(server, auth_h(), rcvbuf=1024)
        ping = json.dumps({"type": "ping", "pad": "x" * 1000}).encode()
        deadline = time.monotonic() + HANG_GUARD_S
        while not server.state.sessions:  # accepted; registered right after
            assert time.monotonic() < deadline
            time.sleep(0.01)
        try:
            for _ in range(20_000):
                if not server.state.sessions:
                    break
                try:
                    ws.send(ping, opcode=1)
                except OSError:
                    break
            wait_no_sessions(server)  # the client never read: its close frame may sit unread
        finally:
            ws.close()
        closing = [r for r in seen.records if r.getMessage() == "voice session closing"]
        assert closing and closing[0].code == 1008 and "slow reader" in closing[0].reason
        server.alive()


def test_pending_audio_is_bounded_in_bytes(srv):
    async def go():
        async with websockets.connect(ws_url(srv), additional_headers=auth_h(), max_size=None) as ws:
            await ws.recv()  # session.created
            chunk = bytes(int(0.5 * 16000) * 2)  # 0.5 s of PCM16: 60 of them are 30 s
            for _ in range(200):
                await ws.send(chunk)
            await ws.send(json.dumps({"type": "ping"}))
            codes = set()
            while True:
                ev = json.loads(await asyncio.wait_for(ws.recv(), HANG_GUARD_S))
                if ev.get("type") == "error":
                    codes.add(ev["code"])
                if ev.get("type") == "pong":
                    return codes

    # the recogniser may keep up with some of it; either way the session lives on
    codes = asyncio.run(go())
    assert codes <= {"overloaded"}
    srv.alive()


def test_session_cap_closes_with_1013(tmp_path):
    s = settings_for(tmp_path, SERVE_MAX_SESSIONS="2")
    with Server(mock_app(s)) as server:
        async def go():
            a = await websockets.connect(ws_url(server), additional_headers=auth_h())
            b = await websockets.connect(ws_url(server), additional_headers=auth_h())
            await a.recv()
            await b.recv()
            async with websockets.connect(ws_url(server), additional_headers=auth_h()) as c:
                with pytest.raises(websockets.ConnectionClosed) as ei:
                    await asyncio.wait_for(c.recv(), HANG_GUARD_S)
            await a.close()
            await b.close()
            return ei.value

        closed = asyncio.run(go())
        assert closed.rcvd.code == 1013 and "SERVE_MAX_SESSIONS" in closed.rcvd.reason
        server.alive()


def test_idle_and_length_limits_close_the_session(tmp_path):
    s = settings_for(tmp_path, SERVE_WS_IDLE_TIMEOUT_S="0.5", SERVE_WS_MAX_SESSION_S="1.5")
    with Server(mock_app(s)) as server:
        async def idle():
            async with websockets.connect(ws_url(server), additional_headers=auth_h()) as ws:
                await ws.recv()
                with pytest.raises(websockets.ConnectionClosed) as ei:
                    while True:
                        await asyncio.wait_for(ws.recv(), HANG_GUARD_S)
                return ei.value.rcvd

        async def busy():
            async with websockets.connect(ws_url(server), additional_headers=auth_h()) as ws:
                deadline = time.monotonic() + HANG_GUARD_S
                with pytest.raises(websockets.ConnectionClosed) as ei:
                    while time.monotonic() < deadline:  # never idle: a ping every 0.2 s
                        await ws.send(json.dumps({"type": "ping"}))
                        await asyncio.sleep(0.2)
                        while True:
                            try:
                                await asyncio.wait_for(ws.recv(), 0.01)
                            except asyncio.TimeoutError:
                                break
                return ei.value.rcvd

        a = asyncio.run(idle())
        assert a.code == 1000 and "SERVE_WS_IDLE_TIMEOUT_S" in a.reason
        b = asyncio.run(busy())
        assert b.code == 1000 and "SERVE_WS_MAX_SESSION_S" in b.reason
        server.alive()


def test_nested_control_message_is_an_error_event_not_the_end(srv):
    async def go():
        async with websockets.connect(ws_url(srv), additional_headers=auth_h()) as ws:
            await ws.recv()
            await ws.send("[" * 50_000)
            await ws.send('{"type": "start", "voice": {"x": 1}}')
            await ws.send('{"type": "start", "input_sample_rate": 1e999}')
            await ws.send("x" * 100_000)
            await ws.send(json.dumps({"type": "ping"}))
            return [json.loads(await asyncio.wait_for(ws.recv(), HANG_GUARD_S)) for _ in range(5)]

    evs = asyncio.run(go())
    assert [e["type"] for e in evs] == ["error", "error", "error", "error", "pong"]
    assert evs[0]["code"] == "invalid_json" and "Recursion" not in evs[0]["message"]
    srv.alive()


def test_no_turn_starts_after_the_socket_closed(tmp_path):
    s = settings_for(tmp_path)
    in_flush = threading.Event()

    class SlowFlushSTT(MockSTT):
        def stream(self, language=None):
            inner = super().stream(language)
            real_flush = inner.flush

            def flush():
                in_flush.set()
                time.sleep(1.0)  # the recogniser is busy when the client leaves
                return real_flush()

            inner.flush = flush
            return inner

    llm = MockLLM()
    with Server(mock_app(s, stt=SlowFlushSTT(silence=5.0, language="en"), llm=llm)) as server:
        async def go():
            async with websockets.connect(ws_url(server), additional_headers=auth_h()) as ws:
                await ws.recv()
                await ws.send((np.clip(tone(1.0, 16000), -1, 1) * 32767).astype("<i2").tobytes())
                await ws.send(json.dumps({"type": "stop"}))
                for _ in range(int(HANG_GUARD_S / 0.02)):
                    if in_flush.is_set():
                        break
                    await asyncio.sleep(0.02)

        asyncio.run(go())  # closes while flush() (which yields a final) runs
        assert in_flush.is_set()
        wait_no_sessions(server)
        time.sleep(1.5)  # flush() has returned its final by now
        assert llm.calls == 0, "a turn started after the session closed"
        server.alive()


def test_turn_history_is_bounded(mock_settings):
    from spark_voice.session import MAX_TURNS_KEPT, VoiceSession

    pipe = VoicePipeline(MockSTT(), MockLLM(), MockTTS(), settings=mock_settings)
    vs = VoiceSession(pipe, lambda ev: None)
    assert vs.turns.maxlen == MAX_TURNS_KEPT
    vs.close()


# ------------------------------------------------------------------------------ 4. event loop
def test_heavy_work_runs_in_worker_threads(srv, monkeypatch):
    """Speech encoding, the voices() look-up and the embeddings JSON never run on the loop thread."""
    from spark_voice.audio import io as audio_io
    from spark_voice.serve.routes import embeddings as emb_route

    loop_thread = srv.thread.ident
    seen: dict[str, set[int | None]] = {"encode": set(), "render": set()}
    real_add, real_render = audio_io.StreamEncoder.add, emb_route._render

    def add(self, audio):
        seen["encode"].add(threading.get_ident())
        return real_add(self, audio)

    def render(*a):
        seen["render"].add(threading.get_ident())
        return real_render(*a)

    monkeypatch.setattr(audio_io.StreamEncoder, "add", add)
    monkeypatch.setattr(emb_route, "_render", render)
    r = httpx.post(srv.url + "/v1/audio/speech", headers=auth_h(), timeout=HANG_GUARD_S,
                   json={"input": "Hello there. How are you?", "voice": "mock-en", "response_format": "opus"})
    assert r.status_code == 200 and r.content
    r = httpx.post(srv.url + "/v1/embeddings", headers=auth_h(), timeout=HANG_GUARD_S, json={"input": ["a", "b"]})
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    assert seen["encode"] and loop_thread not in seen["encode"]
    assert seen["render"] and loop_thread not in seen["render"]


def test_health_answers_during_long_speech_encodes(srv):
    text = "This sentence is spoken again and again. " * 90  # ~3700 chars of audio, flac
    results: list[int] = []

    def speak() -> None:
        with httpx.stream("POST", srv.url + "/v1/audio/speech", headers=auth_h(), timeout=HANG_GUARD_S * 6,
                          json={"input": text, "response_format": "flac"}) as r:
            results.append(r.status_code)
            for _ in r.iter_bytes():
                pass

    ts = [threading.Thread(target=speak) for _ in range(4)]
    for t in ts:
        t.start()
    with httpx.Client(base_url=srv.url, timeout=HANG_GUARD_S) as h:
        while any(t.is_alive() for t in ts):
            assert h.get("/health").status_code == 200
            time.sleep(0.05)
    for t in ts:
        t.join()
    assert set(results) <= {200, 429} and 200 in results


# ------------------------------------------------------------------------------ 5. exposure
def test_non_loopback_bind_needs_a_key(tmp_path):
    plain = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="mock")
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, plain)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(ConfigError, match="SERVE_API_KEY"):
            check_bind(host, plain)
        check_bind(host, plain, insecure=True)
        check_bind(host, settings_for(tmp_path))
        check_bind(host, plain.model_copy(update={"serve_insecure": True}))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SPARK_VOICE_PROFILE": "mock", "HOME": str(tmp_path),
           "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "spark_voice.serve", "--host", "0.0.0.0", "--port", "1"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "SERVE_API_KEY" in p.stderr and "--insecure" in p.stderr


def test_with_a_key_only_health_and_ready_are_open_and_redacted(tmp_path):
    s = settings_for(tmp_path)
    failing = MockLLM(fail="secret engine failure at /opt/models/private.gguf")
    with Server(mock_app(s, llm=failing)) as server:
        for path in ("/metrics", "/docs", "/openapi.json", "/redoc", "/v1/models", "/v1/latency"):
            assert httpx.get(server.url + path, timeout=HANG_GUARD_S).status_code == 401, path
            assert httpx.get(server.url + path, headers=auth_h(), timeout=HANG_GUARD_S).status_code == 200, path
        chat(server, {"messages": [{"role": "user", "content": "hi"}]})  # records the engine error
        full = httpx.get(server.url + "/health", headers=auth_h(), timeout=HANG_GUARD_S).text
        assert "secret engine failure" in full
        for path in ("/health", "/ready"):
            r = httpx.get(server.url + path, timeout=HANG_GUARD_S)
            assert r.status_code in (200, 503)
            for leak in ("secret engine failure", "private.gguf", str(tmp_path), "mock provider in use"):
                assert leak not in r.text, (path, leak)
            body = r.json()
            assert not {"warnings", "rag", "profile"} & set(body)
            assert set(body["providers"]) == {"stt", "llm", "tts", "embedding"}
            assert all(set(p) == {"state", "ready"} for p in body["providers"].values())


def test_keys_only_from_headers_and_utf8_keys_match(tmp_path):
    key = "ключ-🔑-key"
    s = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="mock", SERVE_API_KEY=key)
    with Server(mock_app(s)) as server:
        ok = httpx.get(server.url + "/v1/models", timeout=HANG_GUARD_S,
                       headers={"Authorization": b"Bearer " + key.encode("utf-8")})
        assert ok.status_code == 200
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": b"Bearer wrong"},
                         timeout=HANG_GUARD_S).status_code == 401

        async def url_key():
            with pytest.raises(Exception) as ei:
                async with websockets.connect(ws_url(server) + "?api_key=" + key) as ws:
                    await ws.recv()
            return str(ei.value)

        assert "401" in asyncio.run(url_key())


def test_session_tokens_for_browsers(srv):
    assert httpx.post(srv.url + "/v1/session-token", timeout=HANG_GUARD_S).status_code == 401
    r = httpx.post(srv.url + "/v1/session-token", headers=auth_h(), timeout=HANG_GUARD_S)
    assert r.status_code == 200
    body = r.json()
    token = body["token"]
    assert body["expires_in"] == 600 and body["websocket_protocols"] == ["spark-voice", f"spark-voice.token.{token}"]
    # a token is no key: it cannot mint tokens, but it may call the API
    assert httpx.post(srv.url + "/v1/session-token", headers=auth_h(token), timeout=HANG_GUARD_S).status_code == 401
    assert httpx.get(srv.url + "/v1/models", headers=auth_h(token), timeout=HANG_GUARD_S).status_code == 200

    async def connect(url, protocols=None):
        async with websockets.connect(url, subprotocols=protocols) as ws:
            ev = json.loads(await asyncio.wait_for(ws.recv(), HANG_GUARD_S))
            return ws.subprotocol, ev["type"]

    assert asyncio.run(connect(ws_url(srv), body["websocket_protocols"])) == ("spark-voice", "session.created")
    assert asyncio.run(connect(ws_url(srv) + f"?token={token}")) == (None, "session.created")
    expired, _ = auth.issue_token(KEY, -1)
    foreign, _ = auth.issue_token("another-key", 600)
    for bad in (expired, foreign, token[:-2] + "xx", "sv1.9999999999.n.sig"):
        with pytest.raises(Exception) as ei:
            asyncio.run(connect(ws_url(srv), ["spark-voice", f"spark-voice.token.{bad}"]))
        assert "401" in str(ei.value) or "403" in str(ei.value)
    srv.alive()


def test_metric_labels_are_bounded(srv):
    for method in ("FOO", "BAR", "X" * 50):
        httpx.request(method, srv.url + "/v1/models", headers=auth_h(), timeout=HANG_GUARD_S)
    httpx.get(srv.url + "/no/such/path/" + "y" * 100, headers=auth_h(), timeout=HANG_GUARD_S)
    text = httpx.get(srv.url + "/metrics", headers=auth_h(), timeout=HANG_GUARD_S).text
    assert 'method="other"' in text and "FOO" not in text and "yyyy" not in text


# ------------------------------------------------------------------------------ 6. limits
def test_chat_and_embedding_sizes_are_capped(srv):
    err = assert_openai_error(chat(srv, {"messages": [{"role": "user", "content": "w" * 60_000}]}),
                              413, "input_too_large")
    assert "SERVE_MAX_CHAT_CHARS" in err["message"]

    def embed(inp):
        return httpx.post(srv.url + "/v1/embeddings", headers=auth_h(), json={"input": inp}, timeout=HANG_GUARD_S)

    assert "SERVE_MAX_EMBEDDING_CHARS" in assert_openai_error(embed("x" * 1001), 413, "input_too_large")["message"]
    assert "SERVE_MAX_EMBEDDING_INPUTS" in assert_openai_error(embed(["x"] * 17), 413, "input_too_large")["message"]
    assert embed(["x"] * 16).status_code == 200
    srv.alive()


def test_max_tokens_is_clamped_to_llm_max_tokens(srv):
    r = chat(srv, {"messages": [{"role": "user", "content": "one two three four five six seven eight"}],
                   "max_tokens": 100_000})
    assert r.status_code == 200
    body = r.json()
    assert body["usage"]["completion_tokens"] <= 5 and body["choices"][0]["finish_reason"] == "length"


def test_mock_llm_honours_the_context_size(srv):
    err = assert_openai_error(chat(srv, {"messages": [{"role": "user", "content": "w " * 9000}]}),
                              400, "context_length_exceeded")
    assert "LLM_CTX_SIZE" in err["message"]
    srv.alive()


# ------------------------------------------------------------------------------ 7. files
def test_env_edits_refuse_newlines_and_keep_symlinks(tmp_path):
    from dotenv import dotenv_values

    from spark_voice.models.switch import set_env_value

    real = tmp_path / "conf" / "real.env"
    real.parent.mkdir()
    real.write_text('LLM_SYSTEM_PROMPT="line one\nSERVE_API_KEY=\nline three"\nSERVE_API_KEY=secret\n')
    env = tmp_path / ".env"
    env.symlink_to(real)
    before = real.read_text()
    for bad in ("a\nSERVE_API_KEY=", "a\rb", "a\0b"):
        with pytest.raises(ConfigError, match="newline or NUL"):
            set_env_value(env, "LLM_MODEL", bad)
        assert real.read_text() == before
    set_env_value(env, "LLM_MODEL", "x.gguf")
    set_env_value(env, "LLM_MODEL", "y.gguf")
    assert env.is_symlink() and os.readlink(env) == str(real)
    vals = dotenv_values(env)
    assert vals["SERVE_API_KEY"] == "secret" and vals["LLM_MODEL"] == "y.gguf"
    assert vals["LLM_SYSTEM_PROMPT"] == "line one\nSERVE_API_KEY=\nline three"
    set_env_value(env, "LLM_SYSTEM_PROMPT", "short")  # a multi-line value is replaced as a whole
    vals = dotenv_values(env)
    assert vals["LLM_SYSTEM_PROMPT"] == "short" and vals["SERVE_API_KEY"] == "secret"
    assert "line three" not in real.read_text()


def test_concurrent_env_edits_lose_nothing(tmp_path):
    from dotenv import dotenv_values

    from spark_voice.models.switch import set_env_value

    env = tmp_path / ".env"
    names = [f"VAR_{i}" for i in range(6)]

    def edit(name: str) -> None:
        for j in range(15):
            set_env_value(env, name, f"{name.lower()}-{j}")

    ts = [threading.Thread(target=edit, args=(n,)) for n in names]
    for t in ts:
        t.start()
    for t in ts:
        t.join(HANG_GUARD_S * 3)
    vals = dotenv_values(env)
    assert {n: vals.get(n) for n in names} == {n: f"{n.lower()}-14" for n in names}


def test_ingest_stays_inside_the_source_and_skips_huge_files(tmp_path, mock_settings):
    from spark_voice.rag.ingest import ingest
    from spark_voice.rag.store import IndexStore

    secret = tmp_path / "private" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN PRIVATE KEY----- top secret key material")
    src = tmp_path / "docs"
    src.mkdir()
    (src / "good.txt").write_text("Tokyo station is in Chiyoda. " * 5)
    (src / "notes.txt").symlink_to(secret)
    (src / "inside.md").symlink_to(src / "good.txt")
    (src / "big.txt").write_text("x" * 2_000_000)
    s = mock_settings.model_copy(update={"rag_max_file_mb": 1.0})
    summary = ingest(src, tmp_path / "idx" / "index.bin", MockEmbedder(), s, progress=False)
    text = "\n".join(summary.warnings)
    assert "notes.txt" in text and "outside the source folder" in text and "big.txt" in text
    idx = IndexStore(tmp_path / "idx" / "index.bin").load(index=False)
    assert set(idx.files) == {"good.txt", "inside.md"}
    assert not any("secret" in json.dumps(c) for c in idx.chunks)
    again = ingest(src, tmp_path / "idx2" / "index.bin", MockEmbedder(), s, progress=False, follow_symlinks=True)
    assert again.files == 3


# ------------------------------------------------------------------------------ 8. test honesty
def test_unexpected_skip_fails_under_ci(tmp_path):
    t = tmp_path / "test_skips.py"
    t.write_text("import pytest\n\n"
                 "def test_plain():\n    pytest.skip('no reason')\n\n"
                 "@pytest.mark.build\ndef test_allowed():\n    pytest.skip('opt-in build')\n")
    env = {**os.environ, "CI": "true", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), str(t)], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert p.returncode == 1, p.stdout[-2000:]
    assert "1 failed" in p.stdout and "1 skipped" in p.stdout and "unexpected skip under CI=true" in p.stdout
    env["CI"] = "false"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), str(t)], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert p.returncode == 0 and "2 skipped" in p.stdout, p.stdout[-2000:]
