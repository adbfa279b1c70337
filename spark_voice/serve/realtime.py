"""WS /v1/realtime: the OpenAI Realtime API (as the official ``openai`` SDK speaks it) on our pipeline.

    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:8080/v1", api_key="...")
    async with client.realtime.connect(model="spark-voice") as conn: ...

Audio is PCM16 mono at 24 kHz both ways (OpenAI's only PCM rate): input goes to the streaming
recogniser as it is (it resamples), each TTS chunk is resampled with a stateful
:class:`~spark_voice.audio.io.StreamEncoder` and sent as base64 ``response.output_audio.delta``.
With ``turn_detection: server_vad`` (the default) input audio runs through
:class:`~spark_voice.session.VoiceSession` (our VAD and end-of-turn settings; speech during an answer
cancels it); without it, ``input_audio_buffer.commit`` transcribes the buffer. The client's
turn_detection settings (silence, VAD threshold, prefix padding, semantic_vad eagerness) become
this session's recogniser stream options. A response is one pipeline turn; its events map onto the
Realtime events (table in spark_voice/serve/README.md). Function tools from ``session.update`` are
the pipeline's *client tools*: a call ends the turn and goes to the client as a ``function_call``
item; its ``function_call_output`` and ``response.create`` resume the turn (server tools, e.g.
TOOLS_BUILTIN, still run in the pipeline). Unsupported features (MCP, non-PCM formats,
out-of-band responses ...) answer an ``error`` event that names them; the socket stays open.

Threads: the receive loop never blocks; everything that touches the recogniser or starts a turn
runs in order on one worker thread per session; turn events come from the pipeline's threads and
go out through one sender task.

Length: the protocol is one state machine (config, input buffer, conversation items, responses);
splitting it would spread one session's state over modules.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import logging
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..backends.base import count_prompt_tokens, supports_tools
from ..errors import ToolError
from ..events import Event
from ..session import VoiceSession
from ..tools import normalize_tool_choice
from ..types import SAMPLE_RATE_STT, Audio, Stage, Transcript
from .middleware import header, offered_protocols
from .openai_compat import ApiError
from .schemas import parse_json
from .voice_ws import accept_session, run_session, session_id

log = logging.getLogger("spark_voice.serve.realtime")

RATE = 24000  # the Realtime API's PCM rate, both directions
PCM = {"type": "audio/pcm", "rate": RATE}
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
MAX_PENDING = 3000  # queued appends/commands per session (~60 s of 20 ms appends), then refused
MAX_BUFFER_S = 120.0  # input audio held for a manual commit
MAX_TOOLS = 128
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TD_PARAM = "session.audio.input.turn_detection"
# semantic_vad eagerness -> the longest pause Smart Turn may hold a turn open (the API's maxima)
EAGERNESS_MS = {"low": 8000, "medium": 4000, "auto": 4000, "high": 2000}
# beta (OpenAI-Beta: realtime=v1) names of the server events whose name changed at GA
BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}
UNSUPPORTED_EVENTS = {
    "conversation.item.truncate": "truncating items",
    "conversation.item.delete": "deleting items",
    "conversation.item.retrieve": "retrieving items",
    "output_audio_buffer.clear": "output_audio_buffer.clear (WebRTC/SIP only)",
    "transcription_session.update": "transcription sessions",
}


class ClientError(Exception):
    """A client event we refuse: becomes an ``error`` event (the session goes on)."""

    def __init__(self, message: str, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def unsupported(what: str, param: str | None = None) -> ClientError:
    return ClientError(f"{what} is not supported by this server", "unsupported", param)


async def realtime_endpoint(websocket, state) -> None:
    if not await accept_session(websocket, state):
        return
    beta = "realtime=v1" in (header(websocket.scope, b"openai-beta") or "") or \
        "openai-beta.realtime-v1" in offered_protocols(websocket.scope)
    model = websocket.query_params.get("model") or "spark-voice"
    await run_session(state, RealtimeSession(websocket, state, session_id(websocket), model=model, beta=beta))


@dataclass
class Response:
    """One response = one pipeline turn."""

    rid: str
    audio: bool
    id: str = ""
    item_id: str = ""
    text: list[str] = field(default_factory=list)
    encoder: Any = None  # StreamEncoder("pcm", 24000) when audio
    reason: str = ""  # turn_detected / client_cancelled
    error: dict | None = None
    usage: dict[str, int] = field(default_factory=dict)  # the turn's engine counts (turn.done)
    spoken_input: str = ""  # the transcripts of the spoken input this response answers
    opened: bool = False  # the message item was announced (on its first text or audio)
    calls: list[dict[str, str]] = field(default_factory=list)  # client function calls of this turn
    prompt: str | None = None  # the session's instructions, restored when a response set its own

    def __post_init__(self) -> None:
        self.id = self.id or f"resp_{self.rid}"
        self.item_id = self.item_id or f"item_{self.rid}_out"


@dataclass
class Config:
    """The session's settings as session.update changes them."""

    instructions: str
    voice: str = "alloy"
    audio_out: bool = True  # output_modalities ["audio"] (audio + transcript), else ["text"]
    vad: bool = True
    vad_type: str = "server_vad"  # or semantic_vad (Smart Turn)
    threshold: float | None = None  # None: our settings (STT_VAD_THRESHOLD ...)
    silence_ms: int | None = None
    prefix_ms: int | None = None
    eagerness: str = "auto"
    create_response: bool = True
    interrupt_response: bool = True
    tools: list[dict[str, Any]] = field(default_factory=list)  # as the client sent them (function tools)
    tool_choice: Any = "auto"
    transcription: bool = True
    transcription_model: str = "whisper-1"
    language: str | None = None


class RealtimeSession:
    def __init__(self, websocket, state, session_id: str, *, model: str = "spark-voice", beta: bool = False) -> None:
        self.ws, self.state, self.session_id, self.model, self.beta = websocket, state, session_id, model, beta
        self.pipe = state.session_pipeline()
        s = state.settings
        self.cfg = Config(instructions=self.pipe.system_prompt, language=None if s.stt_language == "auto"
                          else s.stt_language)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.out: asyncio.Queue = asyncio.Queue()
        self.work: queue.Queue = queue.Queue(maxsize=MAX_PENDING)
        self.t0 = time.perf_counter()
        self.vs: VoiceSession | None = None  # made on the worker thread when first needed
        self.buffer: list[np.ndarray] = []  # manual-commit input (24 kHz float32)
        self.buffered = 0
        self.pending: list[tuple[str, bool]] = []  # user texts not answered yet (text, spoken)
        self.open_calls: dict[str, str] = {}  # call_id -> name: function calls waiting for their output
        self.outputs = 0  # function_call_output items since the last response
        self.responses: dict[str, Response] = {}
        self.active: str | None = None
        self.last_item: str | None = None
        self._partials: dict[str, str] = {}
        self._committed: set[str] = set()
        self._ids = itertools.count(1)
        self._turns = itertools.count(1)
        self._closed = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ outbound
    def send(self, d: dict[str, Any]) -> None:
        """Queue a server event (any thread)."""
        if self._closed or self.loop is None:
            return
        if self.beta:
            d["type"] = BETA_NAMES.get(d["type"], d["type"])
        d = {"type": d.pop("type"), "event_id": f"event_{self.session_id}_{next(self._ids)}", **d}
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, d)
        except RuntimeError:
            pass

    def error(self, message: str, code: str = "invalid_value", param: str | None = None,
              event_id: str | None = None, kind: str = "invalid_request_error") -> None:
        self.send({"type": "error", "error": {"type": kind, "code": code, "message": message, "param": param,
                                              "event_id": event_id}})

    async def _sender(self) -> None:
        while True:
            d = await self.out.get()
            if d is None:
                return
            try:
                await self.ws.send_text(json.dumps(d, ensure_ascii=False, default=str))
            except Exception:  # client gone
                self._closed = True
                return

    # ------------------------------------------------------------------ session object
    def session_object(self) -> dict[str, Any]:
        c, s = self.cfg, self.state.settings
        vad: dict[str, Any] | None = None
        if c.vad and c.vad_type == "semantic_vad":
            vad = {"type": "semantic_vad", "eagerness": c.eagerness, "create_response": c.create_response,
                   "interrupt_response": c.interrupt_response}
        elif c.vad:
            vad = {"type": "server_vad",
                   "threshold": s.stt_vad_threshold if c.threshold is None else c.threshold,
                   "prefix_padding_ms": 300 if c.prefix_ms is None else c.prefix_ms,
                   "silence_duration_ms": s.stt_silence_ms if c.silence_ms is None else c.silence_ms,
                   "create_response": c.create_response, "interrupt_response": c.interrupt_response,
                   "idle_timeout_ms": None}
        tr = {"model": c.transcription_model, "language": c.language} if c.transcription else None
        modalities = ["audio"] if c.audio_out else ["text"]
        obj: dict[str, Any] = {
            "type": "realtime", "object": "realtime.session", "id": f"sess_{self.session_id}", "model": self.model,
            "output_modalities": modalities, "instructions": c.instructions,
            "audio": {"input": {"format": PCM, "transcription": tr, "turn_detection": vad, "noise_reduction": None},
                      "output": {"format": PCM, "voice": c.voice, "speed": 1.0}},
            "tools": [dict(t) for t in c.tools], "tool_choice": c.tool_choice, "max_output_tokens": "inf",
            "tracing": None, "prompt": None,
            "include": None,
        }
        if self.beta:
            obj.update(modalities=["text", "audio"] if c.audio_out else ["text"], voice=c.voice,
                       input_audio_format="pcm16", output_audio_format="pcm16", turn_detection=vad,
                       input_audio_transcription=tr)
        return obj

    # ------------------------------------------------------------------ session.update
    def update(self, sess: object, event_id: str | None) -> None:
        """Apply what we support; every unsupported part answers one error naming it."""
        if not isinstance(sess, dict):
            raise ClientError("session must be an object", "invalid_value", "session")
        problems: list[ClientError] = []
        c = self.cfg
        if sess.get("type") not in (None, "realtime"):
            problems.append(unsupported(f"session type {sess.get('type')!r}", "session.type"))
        if "instructions" in sess:
            c.instructions = str(sess["instructions"] or "")
            self.pipe.system_prompt = c.instructions or self.state.pipeline.system_prompt
        mods = sess.get("output_modalities", sess.get("modalities"))
        if mods is not None:
            mods = list(mods) if isinstance(mods, list) else []
            if not mods or not set(mods) <= {"audio", "text"}:
                problems.append(ClientError("output_modalities must be ['audio'] or ['text']", "invalid_value",
                                            "session.output_modalities"))
            else:
                c.audio_out = "audio" in mods
        audio: dict[str, Any] = _obj(sess.get("audio"))
        a_in: dict[str, Any] = _obj(audio.get("input"))
        a_out: dict[str, Any] = _obj(audio.get("output"))
        for where, fmt in (("session.audio.input.format", a_in.get("format", sess.get("input_audio_format"))),
                           ("session.audio.output.format", a_out.get("format", sess.get("output_audio_format")))):
            err = _check_format(fmt, where)
            if err is not None:
                problems.append(err)
        voice = a_out.get("voice", sess.get("voice"))
        if voice is not None:
            try:
                self._set_voice(voice)
            except ClientError as exc:
                problems.append(exc)
        if a_out.get("speed") not in (None, 1, 1.0):
            problems.append(unsupported("audio.output.speed other than 1.0", "session.audio.output.speed"))
        if "turn_detection" in a_in or "turn_detection" in sess:
            td = a_in["turn_detection"] if "turn_detection" in a_in else sess["turn_detection"]
            try:
                self._turn_detection(td, "turn_detection" in a_in)
            except ClientError as exc:
                problems.append(exc)
            self._do(("mode",))
        if "transcription" in a_in or "input_audio_transcription" in sess:
            tr = a_in["transcription"] if "transcription" in a_in else sess["input_audio_transcription"]
            c.transcription = tr is not None
            if isinstance(tr, dict):
                c.transcription_model = str(tr.get("model") or c.transcription_model)
                lang = tr.get("language")
                if lang:
                    c.language = str(lang)
                    self._do(("language", c.language))
        if a_in.get("noise_reduction") or sess.get("input_audio_noise_reduction"):
            problems.append(unsupported("noise_reduction", "session.audio.input.noise_reduction"))
        if "tools" in sess or "tool_choice" in sess:
            try:
                self._set_tools(sess.get("tools", c.tools), sess.get("tool_choice", c.tool_choice))
            except ClientError as exc:
                problems.append(exc)
        if sess.get("prompt"):
            problems.append(unsupported("prompt templates", "session.prompt"))
        for p in problems:
            self.error(p.message, p.code, p.param, event_id)
        self.send({"type": "session.updated", "session": self.session_object()})

    def _set_voice(self, voice: Any) -> None:
        if isinstance(voice, dict):
            raise unsupported("custom voice ids", "session.audio.output.voice")
        voice = str(voice)
        if voice in OPENAI_VOICES or voice == "":
            self.pipe.voice = self.state.pipeline.voice  # the configured default voice
        else:
            names = [v.name for v in self.state.voices()]
            if names and voice not in names:
                raise ClientError(f"unknown voice {voice!r}; available voices: {', '.join(names)} "
                                  f"(OpenAI's names select the default voice)", "unknown_voice",
                                  "session.audio.output.voice")
            self.pipe.voice = voice
        self.cfg.voice = voice

    def _turn_detection(self, td: Any, ga: bool) -> None:
        """Apply a turn_detection object (all of it or nothing): server_vad / semantic_vad / null.
        A value out of range raises a ClientError naming the field."""
        c, base = self.cfg, TD_PARAM if ga else "session.turn_detection"
        if td is None:
            c.vad = False
            return
        if not isinstance(td, dict):
            raise ClientError("turn_detection must be an object or null", "invalid_value", base)
        kind = td.get("type", "server_vad")
        if kind not in ("server_vad", "semantic_vad"):
            raise unsupported(f"turn_detection {kind!r} (use server_vad, semantic_vad or null)", f"{base}.type")
        known = {"type", "create_response", "interrupt_response"} | (
            {"threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"} if kind == "server_vad"
            else {"eagerness"})
        for k in td:
            if k not in known:
                raise ClientError(f"turn_detection {kind} has no field {k!r}", "unknown_parameter", f"{base}.{k}")
        flags = {}
        for k in ("create_response", "interrupt_response"):
            v = td.get(k)
            if v is not None and not isinstance(v, bool):
                raise ClientError(f"{k} must be true or false", "invalid_value", f"{base}.{k}")
            flags[k] = True if v is None else v
        if td.get("idle_timeout_ms") is not None:
            raise unsupported("turn_detection.idle_timeout_ms", f"{base}.idle_timeout_ms")
        threshold = td.get("threshold")
        if threshold is not None and (not _number(threshold) or not 0.0 < threshold < 1.0):
            raise ClientError(f"threshold must be a number between 0 and 1 (exclusive), got {threshold!r}",
                              "invalid_value", f"{base}.threshold")
        silence, prefix = td.get("silence_duration_ms"), td.get("prefix_padding_ms")
        if silence is not None and (not _integer(silence) or not 100 <= silence <= 10_000):
            raise ClientError(f"silence_duration_ms must be an integer from 100 to 10000, got {silence!r}",
                              "invalid_value", f"{base}.silence_duration_ms")
        if prefix is not None and (not _integer(prefix) or not 0 <= prefix <= 1000):
            raise ClientError(f"prefix_padding_ms must be an integer from 0 to 1000, got {prefix!r}",
                              "invalid_value", f"{base}.prefix_padding_ms")
        eagerness = td.get("eagerness") or "auto"
        if kind == "semantic_vad":
            if eagerness not in EAGERNESS_MS:
                raise ClientError(f"eagerness must be low, medium, high or auto, got {eagerness!r}",
                                  "invalid_value", f"{base}.eagerness")
            self._turn_model()  # raises when the end-of-turn model cannot be found
        c.vad, c.vad_type, c.eagerness = True, kind, eagerness
        c.threshold, c.silence_ms, c.prefix_ms = threshold, silence, prefix
        c.create_response, c.interrupt_response = flags["create_response"], flags["interrupt_response"]

    def _turn_model(self) -> Any:
        """The Smart Turn model semantic_vad uses (the mock profile's recogniser: the mock model)."""
        from ..turn import MockTurnModel, find_turn_model, load_turn_model

        if getattr(self.pipe.stt, "is_mock", False):
            return MockTurnModel()
        s = self.state.settings
        try:
            return load_turn_model(find_turn_model(s), threads=s.stt_turn_threads)
        except Exception as exc:
            raise unsupported(f"semantic_vad here (the Smart Turn end-of-turn model is not available: {exc})",
                              f"{TD_PARAM}.type") from None

    def stream_options(self) -> dict[str, Any]:
        """The recogniser stream options of the session's turn detection ({}: our settings)."""
        c, s = self.cfg, self.state.settings
        if not c.vad:
            return {}
        if c.vad_type == "semantic_vad":
            from ..turn import EndOfTurn

            model, long_ms = self._turn_model(), EAGERNESS_MS[c.eagerness]
            return {"end_of_turn": lambda: EndOfTurn(model, threshold=s.stt_turn_threshold,
                                                     short_ms=s.stt_turn_short_silence_ms, long_ms=long_ms)}
        opts: dict[str, Any] = {}
        if c.silence_ms is not None:
            opts["silence_ms"] = c.silence_ms
        if c.threshold is not None:
            opts["vad_threshold"] = c.threshold
        if c.prefix_ms is not None:
            opts["prefix_padding_ms"] = c.prefix_ms
        return opts

    def _set_tools(self, tools: Any, choice: Any) -> None:
        """session.tools (function tools, the client runs them) and tool_choice, checked together;
        nothing changes when one is wrong."""
        if tools is None:
            tools = []
        if not isinstance(tools, list):
            raise ClientError("tools must be a list", "invalid_value", "session.tools")
        if len(tools) > MAX_TOOLS:
            raise ClientError(f"at most {MAX_TOOLS} tools", "invalid_value", "session.tools")
        server = set(self.pipe.tools.tools)
        specs: list[dict[str, Any]] = []
        for i, t in enumerate(tools):
            where = f"session.tools[{i}]"
            if not isinstance(t, dict):
                raise ClientError("a tool must be an object", "invalid_value", where)
            if t.get("type", "function") != "function":
                raise unsupported(f"tools of type {t.get('type')!r} (MCP); only function tools", f"{where}.type")
            name = t.get("name")
            if not isinstance(name, str) or not TOOL_NAME.match(name):
                raise ClientError(f"tool name must be 1-64 letters, digits, _ or -, got {name!r}", "invalid_value",
                                  f"{where}.name")
            if name in server or any(s["function"]["name"] == name for s in specs):
                raise ClientError(f"tool name {name!r} is used twice (or by a server tool)", "invalid_value",
                                  f"{where}.name")
            desc = t.get("description")
            if desc is not None and not isinstance(desc, str):
                raise ClientError("description must be a string", "invalid_value", f"{where}.description")
            params = t.get("parameters")
            if params is None:
                params = {"type": "object", "properties": {}}
            if not isinstance(params, dict) or params.get("type", "object") != "object":
                raise ClientError("parameters must be a JSON schema of type object", "invalid_value",
                                  f"{where}.parameters")
            specs.append({"type": "function", "function": {"name": name, "description": desc or "",
                                                           "parameters": params}})
        try:
            mode = "auto" if choice == "auto" else normalize_tool_choice(choice, [*self.pipe.tools.specs(), *specs])[0]
        except ToolError as exc:
            raise ClientError(str(exc), "invalid_value", "session.tool_choice") from None
        if specs and mode != "none" and not supports_tools(self.pipe.llm):
            raise ClientError("this server's language model cannot call tools", "tools_not_supported",
                              "session.tools")
        self.cfg.tools = [{"type": "function", "name": s["function"]["name"],
                           "description": s["function"]["description"], "parameters": s["function"]["parameters"]}
                          for s in specs]
        self.cfg.tool_choice = choice
        self.pipe.client_tools = specs
        self.pipe.tool_choice = choice

    # ------------------------------------------------------------------ inbound
    def handle(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        eid = ev.get("event_id")
        try:
            if kind == "session.update":
                self.update(ev.get("session"), eid)
            elif kind == "input_audio_buffer.append":
                self._do(("audio", _decode_audio(ev.get("audio"))))
            elif kind == "input_audio_buffer.commit":
                self._do(("commit", eid))
            elif kind == "input_audio_buffer.clear":
                self._do(("clear",))
            elif kind == "conversation.item.create":
                self._item(ev.get("item"), eid)
            elif kind == "response.create":
                self._create(ev.get("response") or {}, eid)
            elif kind == "response.cancel":
                self._cancel(ev.get("response_id"))
            elif kind in UNSUPPORTED_EVENTS:
                raise unsupported(UNSUPPORTED_EVENTS[kind], "type")
            else:
                raise ClientError(f"unknown event type {kind!r}", "invalid_event_type", "type")
        except ClientError as exc:
            self.error(exc.message, exc.code, exc.param, eid)

    def _do(self, item: tuple) -> None:
        try:
            self.work.put_nowait(item)
        except queue.Full:
            raise ClientError("input is arriving faster than it can be processed; event dropped",
                              "overloaded") from None

    def _item(self, item: Any, eid: str | None) -> None:
        if not isinstance(item, dict):
            raise ClientError("item must be an object", "invalid_value", "item")
        if item.get("type") in ("function_call_output", "function_call"):
            self._call_item(item)
            return
        if item.get("type", "message") != "message":
            raise unsupported(f"conversation items of type {item.get('type')!r}", "item.type")
        role = item.get("role")
        content: list[Any] = item["content"] if isinstance(item.get("content"), list) else []
        item_id = str(item.get("id") or f"item_{self.session_id}_{next(self._ids)}")
        texts: list[str] = []
        audio: list[Audio] = []
        for i, part in enumerate(content):
            ptype = part.get("type") if isinstance(part, dict) else None
            if ptype in ("input_text", "text", "output_text"):
                texts.append(str(part.get("text") or ""))
            elif ptype == "input_audio" and role == "user":
                if part.get("transcript"):
                    texts.append(str(part["transcript"]))
                else:
                    audio.append(_decode_audio(part.get("audio"), f"item.content[{i}].audio"))
            else:
                raise unsupported(f"content parts of type {ptype!r} in a {role} item", f"item.content[{i}]")
        if role not in ("user", "assistant", "system"):
            raise ClientError(f"item role must be user, assistant or system, got {role!r}", "invalid_value",
                              "item.role")
        if not texts and not audio:
            raise ClientError("the item has no text or audio content", "invalid_value", "item.content")
        text = "\n".join(t for t in texts if t)
        if audio:
            self._do(("item_audio", item_id, Audio.concat(audio), text))
            return
        self._add_item(item_id, role, text)

    def _call_item(self, item: dict[str, Any]) -> None:
        """A function call's output (the client ran it), or a function call the client adds."""
        call_id, kind = item.get("call_id"), item["type"]
        item_id = str(item.get("id") or f"item_{self.session_id}_{next(self._ids)}")
        if not isinstance(call_id, str) or not call_id:
            raise ClientError("a function call item needs a call_id", "invalid_value", "item.call_id")
        if kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                raise ClientError("output must be a string (e.g. JSON text)", "invalid_value", "item.output")
            with self._lock:
                if call_id not in self.open_calls:
                    raise ClientError(f"no function call {call_id!r} is waiting for its output", "invalid_call_id",
                                      "item.call_id")
                self.open_calls.pop(call_id)
                self.pipe.history.append({"role": "tool", "tool_call_id": call_id, "content": output})
                self.outputs += 1
            obj = {"id": item_id, "object": "realtime.item", "type": kind, "status": "completed",
                   "call_id": call_id, "output": output}
        else:
            name, args = item.get("name"), item.get("arguments", "")
            if not isinstance(name, str) or not TOOL_NAME.match(name):
                raise ClientError(f"function name must be 1-64 letters, digits, _ or -, got {name!r}",
                                  "invalid_value", "item.name")
            if not isinstance(args, str):
                raise ClientError("arguments must be a JSON string", "invalid_value", "item.arguments")
            with self._lock:
                self.open_calls[call_id] = name
                self.pipe.history.append({"role": "assistant", "content": "", "tool_calls": [
                    {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]})
            obj = {"id": item_id, "object": "realtime.item", "type": kind, "status": "completed",
                   "call_id": call_id, "name": name, "arguments": args}
        prev, self.last_item = self.last_item, item_id
        self.send({"type": "conversation.item.added", "previous_item_id": prev, "item": obj})
        self.send({"type": "conversation.item.done", "previous_item_id": prev, "item": obj})

    def _add_item(self, item_id: str, role: str, text: str, audio: bool = False) -> None:
        ptype = {"user": "input_audio" if audio else "input_text", "assistant": "output_text",
                 "system": "input_text"}[role]
        part: dict[str, Any] = {"type": ptype, ("transcript" if audio else "text"): text}
        obj = {"id": item_id, "object": "realtime.item", "type": "message", "role": role, "status": "completed",
               "content": [part]}
        with self._lock:
            if role == "user":
                self.pending.append((text, audio))
            elif role == "assistant":
                self.pipe.history.append({"role": "assistant", "content": text})
            else:
                self.cfg.instructions = (self.cfg.instructions + "\n" + text).strip()
                self.pipe.system_prompt = self.cfg.instructions
        prev, self.last_item = self.last_item, item_id
        self.send({"type": "conversation.item.added", "previous_item_id": prev, "item": obj})
        self.send({"type": "conversation.item.done", "previous_item_id": prev, "item": obj})

    def _create(self, params: Any, eid: str | None) -> None:
        if not isinstance(params, dict):
            raise ClientError("response must be an object", "invalid_value", "response")
        if self.active is not None:
            raise ClientError(f"conversation already has an active response in progress: {self.active}",
                              "conversation_already_has_active_response")
        if params.get("conversation") not in (None, "auto"):
            raise unsupported("out-of-band responses (conversation: 'none')", "response.conversation")
        if params.get("input"):
            raise unsupported("response.input (custom context)", "response.input")
        if params.get("tools") or params.get("tool_choice") is not None:
            raise unsupported("tools and tool_choice per response (set them with session.update)", "response.tools")
        mods = params.get("output_modalities", params.get("modalities"))
        audio_out = self.cfg.audio_out if not mods else "audio" in mods
        out = _obj(_obj(params.get("audio")).get("output"))
        err = _check_format(out.get("format"), "response.audio.output.format")
        if err is not None:
            raise err
        if out.get("voice") is not None:
            self._set_voice(out["voice"])
        self.active = "pending"  # until the worker names it
        self._do(("respond", audio_out, params.get("instructions")))

    def _cancel(self, response_id: Any) -> None:
        rid = self.active
        if rid is None or rid == "pending":
            raise ClientError("there is no active response to cancel", "response_cancel_not_active")
        resp = self.responses.get(rid)
        if response_id and resp is not None and response_id != resp.id:
            raise ClientError(f"response {response_id!r} is not active", "response_cancel_not_active",
                              "response_id")
        if resp is not None and not resp.reason:
            resp.reason = "client_cancelled"
        self.pipe.cancel(rid)

    # ------------------------------------------------------------------ the worker thread
    def _session(self) -> VoiceSession:
        if self.vs is None:
            if self.cfg.language:
                self.pipe.language = self.cfg.language
            self.vs = VoiceSession(self.pipe, self.emit, respond_to=self._respond_to,
                                   request_id_factory=lambda: f"{self.session_id}-{next(self._turns)}",
                                   interrupt=self.cfg.interrupt_response, stream_options=self.stream_options())
        self.vs.interrupt = self.cfg.interrupt_response
        return self.vs

    def _worker(self) -> None:
        while True:
            item = self.work.get()
            kind = item[0]
            if kind == "end":
                return
            try:
                self._work(kind, item)
            except ClientError as exc:
                self.error(exc.message, exc.code, exc.param)
            except Exception as exc:
                log.warning("realtime session error", extra={"request_id": self.session_id, "error": str(exc)})
                self.error(f"{type(exc).__name__}: {exc}", "session_error", kind="server_error")
                if kind == "respond":
                    self.active = None

    def _work(self, kind: str, item: tuple) -> None:
        vs = self._session()
        if kind == "audio":
            a: Audio = item[1]
            if self.cfg.vad:
                vs.feed(a)
            elif self.buffered + len(a.samples) <= MAX_BUFFER_S * RATE:
                self.buffer.append(a.samples)
                self.buffered += len(a.samples)
            else:
                raise ClientError(f"the input audio buffer holds at most {MAX_BUFFER_S:g} s; commit or clear it",
                                  "input_audio_buffer_full")
        elif kind == "commit":
            self._commit(vs, item[1])
        elif kind == "clear":
            self.buffer, self.buffered = [], 0
            vs.reset_input()
            self.send({"type": "input_audio_buffer.cleared"})
        elif kind == "mode":
            vs.set_stream_options(self.stream_options())  # a new stream when the settings changed
            if self.cfg.vad and self.buffer:  # audio held for a manual commit goes to the recogniser
                vs.feed(Audio(np.concatenate(self.buffer), RATE))
                self.buffer, self.buffered = [], 0
        elif kind == "language":
            self.pipe.language = item[1]
            vs.reset_input()
        elif kind == "item_audio":
            _, item_id, audio, text = item
            tr = self._transcribe(audio)
            self._add_item(item_id, "user", " ".join(x for x in (text, tr.text) if x), audio=True)
            self._transcribed(item_id, tr.text, audio.duration)
        elif kind == "respond":
            self._respond(vs, item[1], item[2])

    def _transcribe(self, audio: Audio) -> Transcript:
        stt = self.pipe.stt
        assert stt is not None
        lang = self.pipe.language
        return stt.transcribe(audio.resampled(SAMPLE_RATE_STT), None if lang == "auto" else lang)

    def _commit(self, vs: VoiceSession, eid: str | None) -> None:
        if self.cfg.vad:  # end the utterance now: its final arrives through the recogniser
            vs.flush()
            return
        if self.buffered < RATE // 10:
            raise ClientError(f"buffer too small: committing needs at least 100 ms of audio, the buffer has "
                              f"{self.buffered * 1000 // RATE} ms", "input_audio_buffer_commit_empty")
        audio = Audio(np.concatenate(self.buffer), RATE)
        self.buffer, self.buffered = [], 0
        item_id = f"item_{self.session_id}_{next(self._ids)}"
        self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": self.last_item})
        tr = self._transcribe(audio)
        self._add_item(item_id, "user", tr.text, audio=True)
        self._transcribed(item_id, tr.text, audio.duration)

    def _transcribed(self, item_id: str, text: str, seconds: float) -> None:
        if self.cfg.transcription:
            self.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": item_id,
                       "content_index": 0, "transcript": text,
                       "usage": {"type": "duration", "seconds": round(seconds, 3)}})

    def _respond_to(self, rid: str, tr: Transcript) -> bool:
        """VoiceSession asks at each final (worker thread): answer it now?"""
        if not tr.text:
            return False
        if not (self.cfg.vad and self.cfg.create_response):
            with self._lock:
                self.pending.append((tr.text, True))
            return False
        with self._lock:
            self.pending.clear()
            self.outputs = 0
        self._begin(Response(rid, self.cfg.audio_out, spoken_input=tr.text), tr.text)
        return True

    def _respond(self, vs: VoiceSession, audio_out: bool, instructions: Any) -> None:
        with self._lock:
            items, self.pending = self.pending, []
            outputs, self.outputs = self.outputs, 0
        text = "\n".join(t for t, _ in items if t).strip()
        if not text and not outputs:
            self.active = None
            raise ClientError("nothing to respond to: add a user item (conversation.item.create), a "
                              "function_call_output or commit input audio first", "conversation_empty")
        resp = Response(f"{self.session_id}-r{next(self._turns)}", audio_out,
                        spoken_input="\n".join(t for t, spoken in items if spoken and t))
        if instructions:
            resp.prompt = self.pipe.system_prompt
            self.pipe.system_prompt = str(instructions)
        self._begin(resp, text)
        if text:
            vs.respond(text=text, request_id=resp.rid, speak=audio_out)
        else:  # only function call outputs: the model goes on from them
            vs.respond(request_id=resp.rid, speak=audio_out, resume=True)

    def _begin(self, resp: Response, user_text: str) -> None:
        from ..audio.io import StreamEncoder

        if resp.audio:
            resp.encoder = StreamEncoder("pcm", RATE)
        self.responses[resp.rid] = resp
        self.active = resp.rid
        self.send({"type": "response.created", "response": self._response_object(resp, "in_progress")})

    def _open(self, resp: Response) -> None:
        """Announce the response's message item (on its first text or audio: a response that only
        calls a function has none)."""
        if resp.opened:
            return
        resp.opened = True
        item = self._out_item(resp, "in_progress")
        self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": 0,
                   "item": {**item, "content": []}})
        prev, self.last_item = self.last_item, resp.item_id
        self.send({"type": "conversation.item.added", "previous_item_id": prev, "item": {**item, "content": []}})
        self.send({"type": "response.content_part.added", **self._where(resp), "part": self._part(resp)})

    # ------------------------------------------------------------------ pipeline events -> Realtime
    def emit(self, ev: Event) -> None:
        """VoiceSession / pipeline events (worker and turn threads) -> Realtime server events."""
        st, rid = ev.stage, ev.request_id
        item_id = f"item_{rid}"
        ms = int(round(float(ev.data.get("audio_time") or 0.0) * 1000))
        if st == Stage.STT_SPEECH_START:
            self._partials.pop(rid, None)
            self.send({"type": "input_audio_buffer.speech_started", "audio_start_ms": ms, "item_id": item_id})
        elif st == Stage.STT_PARTIAL:
            if self.cfg.transcription:
                prev, cur = self._partials.get(rid, ""), ev.text
                if cur.startswith(prev) and len(cur) > len(prev):  # deltas only ever append
                    self._partials[rid] = cur
                    self.send({"type": "conversation.item.input_audio_transcription.delta", "item_id": item_id,
                               "content_index": 0, "delta": cur[len(prev):]})
        elif st == Stage.STT_SPEECH_END:
            self.send({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": ms, "item_id": item_id})
            self._commit_item(rid)
        elif st == Stage.STT_FINAL:
            self._commit_item(rid)
            text = ev.text.strip()
            obj = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                   "status": "completed", "content": [{"type": "input_audio", "transcript": text}]}
            self._partials.pop(rid, None)
            self._transcribed(item_id, text, float(ev.data.get("audio_time") or 0.0))
            self.send({"type": "conversation.item.done", "previous_item_id": None, "item": obj})
        elif st == Stage.TURN_BARGE_IN:
            resp = self.responses.get(rid)
            if resp is not None and not resp.reason:
                resp.reason = "turn_detected"
        else:
            resp = self.responses.get(rid)
            if resp is not None:
                self._response_event(resp, ev)

    def _commit_item(self, rid: str) -> None:
        item_id = f"item_{rid}"
        if item_id in self._committed:
            return
        self._committed.add(item_id)
        prev, self.last_item = self.last_item, item_id
        self.send({"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": prev})
        self.send({"type": "conversation.item.added", "previous_item_id": prev,
                   "item": {"id": item_id, "object": "realtime.item", "type": "message", "role": "user",
                            "status": "in_progress", "content": [{"type": "input_audio", "transcript": None}]}})

    def _where(self, resp: Response) -> dict[str, Any]:
        return {"response_id": resp.id, "item_id": resp.item_id, "output_index": 0, "content_index": 0}

    def _part(self, resp: Response, done: bool = False) -> dict[str, Any]:
        text = "".join(resp.text).strip() if done else ""
        return {"type": "audio", "transcript": text} if resp.audio else {"type": "text", "text": text}

    def _out_item(self, resp: Response, status: str) -> dict[str, Any]:
        text = "".join(resp.text).strip()
        part = {"type": "output_audio", "transcript": text} if resp.audio else {"type": "output_text", "text": text}
        return {"id": resp.item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": status, "content": [part]}

    def _response_object(self, resp: Response, status: str, details: dict | None = None,
                         output: list | None = None) -> dict[str, Any]:
        usage = self._usage(resp) if status != "in_progress" else None
        return {"id": resp.id, "object": "realtime.response", "status": status, "status_details": details,
                "output": output or [], "output_modalities": ["audio"] if resp.audio else ["text"],
                "conversation_id": f"conv_{self.session_id}", "max_output_tokens": "inf", "metadata": None,
                "audio": {"output": {"format": PCM, "voice": self.cfg.voice}}, "usage": usage}

    def _usage(self, resp: Response) -> dict[str, Any]:
        """The Realtime ``usage`` from the engine's own counts over the turn's LLM rounds (stats=).

        Our model reads and writes text only, so "audio tokens" are text tokens too, by the LLM's
        tokenizer: input audio_tokens = the tokens of the transcripts of the spoken input this
        response answers (typed items, instructions, history and tool outputs are text_tokens);
        output audio_tokens = the tokens of the answer text that was spoken (sent to TTS), the rest
        (text-only answers, function call arguments) text_tokens. No cache: cached_tokens 0."""
        inp = int(resp.usage.get("prompt_tokens", 0))
        out = int(resp.usage.get("completion_tokens", 0))
        a_in = min(self._tokens(resp.spoken_input), inp) if resp.spoken_input else 0
        spoken = "".join(resp.text).strip() if resp.audio else ""
        a_out = min(self._tokens(spoken), out) if spoken else 0
        return {"total_tokens": inp + out, "input_tokens": inp, "output_tokens": out,
                "input_token_details": {"text_tokens": inp - a_in, "audio_tokens": a_in, "cached_tokens": 0,
                                        "image_tokens": 0,
                                        "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0,
                                                                  "image_tokens": 0}},
                "output_token_details": {"text_tokens": out - a_out, "audio_tokens": a_out}}

    def _tokens(self, text: str) -> int:
        """Tokens of `text` alone by the LLM's count (its template's framing subtracted)."""
        llm = self.pipe.llm
        if llm is None:
            return 0
        try:
            return max(0, count_prompt_tokens(llm, [{"role": "user", "content": text}])
                       - count_prompt_tokens(llm, [{"role": "user", "content": ""}]))
        except Exception:
            return 0

    def _response_event(self, resp: Response, ev: Event) -> None:
        st = ev.stage
        if st == Stage.LLM_TOKEN and ev.text:
            self._open(resp)
            resp.text.append(ev.text)
            kind = "response.output_audio_transcript.delta" if resp.audio else "response.output_text.delta"
            self.send({"type": kind, **self._where(resp), "delta": ev.text})
        elif st == Stage.TTS_CHUNK and ev.audio is not None and resp.encoder is not None:
            self._open(resp)
            self._audio_delta(resp, resp.encoder.add(ev.audio))
        elif st == Stage.LLM_TOOL_CALL and ev.data.get("client"):  # the client runs it: sent at the end
            resp.calls.append({"call_id": str(ev.data["call_id"]), "name": str(ev.data["name"]),
                               "arguments": str(ev.data.get("arguments") or "")})
        elif st == Stage.ERROR:
            resp.error = {"type": "server_error", "code": str(ev.data.get("error_type") or "engine_error"),
                          "message": ev.text}
            self.error(ev.text, str(ev.data.get("error_type") or "engine_error"), kind="server_error")
        elif st == Stage.TURN_DONE:
            resp.usage = dict(ev.data.get("usage") or {})
            self._finish(resp, bool(ev.data.get("cancelled")))

    def _audio_delta(self, resp: Response, pcm: bytes) -> None:
        if pcm:
            self.send({"type": "response.output_audio.delta", **self._where(resp),
                       "delta": base64.b64encode(pcm).decode("ascii")})

    def _finish(self, resp: Response, cancelled: bool) -> None:
        status, details = "completed", None
        if resp.error is not None:
            status, details = "failed", {"type": "failed", "error": resp.error}
        elif cancelled:
            status, details = "cancelled", {"type": "cancelled", "reason": resp.reason or "client_cancelled"}
        output: list[dict[str, Any]] = []
        if resp.opened or not resp.calls or status != "completed":
            self._open(resp)
            if resp.encoder is not None:
                self._audio_delta(resp, resp.encoder.finish())
            text = "".join(resp.text).strip()
            w = self._where(resp)
            if resp.audio:
                self.send({"type": "response.output_audio.done", **w})
                self.send({"type": "response.output_audio_transcript.done", **w, "transcript": text})
            else:
                self.send({"type": "response.output_text.done", **w, "text": text})
            item = self._out_item(resp, "completed" if status == "completed" else "incomplete")
            self.send({"type": "response.content_part.done", **w, "part": self._part(resp, True)})
            self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": 0, "item": item})
            self.send({"type": "conversation.item.done", "previous_item_id": None, "item": item})
            output.append(item)
        if status == "completed":  # a cancelled turn keeps no call in the history: none goes out
            for call in resp.calls:
                output.append(self._function_call(resp, call, len(output)))
        self.send({"type": "response.done", "response": self._response_object(resp, status, details, output)})
        if resp.prompt is not None:
            self.pipe.system_prompt = resp.prompt
        self.responses.pop(resp.rid, None)
        if self.active == resp.rid:
            self.active = None

    def _function_call(self, resp: Response, call: dict[str, str], index: int) -> dict[str, Any]:
        """A client function call as a ``function_call`` output item: added, its arguments (one
        delta: the engine gives a call's arguments whole once they parse), done."""
        item_id = f"item_{resp.rid}_call{index}"
        cid, name, args = call["call_id"], call["name"], call["arguments"]
        item = {"id": item_id, "object": "realtime.item", "type": "function_call", "status": "in_progress",
                "call_id": cid, "name": name, "arguments": ""}
        where = {"response_id": resp.id, "item_id": item_id, "output_index": index, "call_id": cid}
        with self._lock:
            self.open_calls[cid] = name
        self.send({"type": "response.output_item.added", "response_id": resp.id, "output_index": index, "item": item})
        prev, self.last_item = self.last_item, item_id
        self.send({"type": "conversation.item.added", "previous_item_id": prev, "item": item})
        self.send({"type": "response.function_call_arguments.delta", **where, "delta": args})
        self.send({"type": "response.function_call_arguments.done", **where, "name": name, "arguments": args})
        done = {**item, "status": "completed", "arguments": args}
        self.send({"type": "response.output_item.done", "response_id": resp.id, "output_index": index, "item": done})
        self.send({"type": "conversation.item.done", "previous_item_id": prev, "item": done})
        return done

    # ------------------------------------------------------------------ the connection
    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        sender = asyncio.create_task(self._sender())
        worker = threading.Thread(target=self._worker, name=f"rt-{self.session_id}", daemon=True)
        worker.start()
        self.send({"type": "session.created", "session": self.session_object()})
        try:
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                raw = msg.get("text")
                if raw is None:
                    self.error("binary frames are not part of the Realtime protocol: send "
                               "input_audio_buffer.append with base64 PCM16", "invalid_event")
                    continue
                try:
                    ev = parse_json(raw.encode("utf-8"))  # depth and size limits of the HTTP routes
                except ApiError as exc:
                    self.error(exc.message, "invalid_json")
                    continue
                if not isinstance(ev, dict):
                    self.error("events must be JSON objects", "invalid_json")
                    continue
                if ev.get("type") == "session.update":  # a voice check may load the TTS model
                    await self.state.runner.call(self.handle, ev)
                else:
                    self.handle(ev)
        except Exception as exc:  # a broken connection ends the session, not the server
            log.info("realtime session ended", extra={"request_id": self.session_id, "reason": str(exc)})
        finally:
            self._closed = True
            self.pipe.cancel()
            try:
                while True:
                    self.work.get_nowait()
            except queue.Empty:
                pass
            self.work.put(("end",))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, worker.join, 5.0)
            if self.vs is not None:
                await loop.run_in_executor(None, self.vs.close)
            self.out.put_nowait(None)
            try:
                await asyncio.wait_for(sender, 2.0)
            except Exception:
                sender.cancel()

    def cancel_all(self) -> None:
        self.pipe.cancel()


def _obj(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _decode_audio(data: Any, param: str = "audio") -> Audio:
    """base64 PCM16 little-endian mono at 24 kHz -> Audio."""
    if not isinstance(data, str):
        raise ClientError(f"{param} must be a base64 string of PCM16 audio", "invalid_value", param)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(f"{param} is not valid base64", "invalid_value", param) from None
    if len(raw) % 2:
        raise ClientError(f"{param} must be PCM16 (an even number of bytes), got {len(raw)}", "invalid_value", param)
    return Audio(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0, RATE)


def _check_format(fmt: Any, param: str) -> ClientError | None:
    """PCM16 at 24 kHz in any spelling (GA object, beta 'pcm16'), else an error naming the format."""
    if fmt is None or fmt == "pcm16":
        return None
    if isinstance(fmt, dict) and fmt.get("type", "audio/pcm") == "audio/pcm" and fmt.get("rate", RATE) == RATE:
        return None
    name = fmt.get("type") if isinstance(fmt, dict) else fmt
    if isinstance(fmt, dict) and fmt.get("type", "audio/pcm") == "audio/pcm":
        name = f"audio/pcm at {fmt.get('rate')} Hz"
    return unsupported(f"audio format {name!r} (only audio/pcm at 24000 Hz)", param)
