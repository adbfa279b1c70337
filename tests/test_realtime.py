"""WS /v1/realtime driven by the official `openai` SDK client (client.realtime.connect), and the
browser security of the websockets (Origin allow-list, key as a subprotocol).

Mock engines exercise the protocol; one test runs the real engines of the dev profile (whisper,
SmolLM2, Piper) on the bundled English question.
"""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import openai
import pytest
import websockets
from test_serve import KEY, Server, settings_for

from conftest import ROOT, dev_server_settings
from spark_voice.audio.io import load_audio
from spark_voice.backends.mock import MockLLM, MockSTT, MockTTS
from spark_voice.pipeline import VoicePipeline
from spark_voice.serve.app import create_app

RATE = 24000
CLIP = ROOT / "examples" / "audio" / "question_en.wav"


@pytest.fixture(scope="module")
def rt_server(tmp_path_factory):
    s = settings_for(tmp_path_factory.mktemp("rt"), SERVE_API_KEY=KEY)
    pipe = VoicePipeline(MockSTT(partial_interval=0.3, silence=0.4, language="en"), MockLLM(token_delay=0.02),
                         MockTTS(), settings=s, language="en")
    with Server(create_app(s, pipe)) as srv:
        srv.wait_ready()
        yield srv


def sdk(srv: Server, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=srv.url + "/v1", websocket_base_url=srv.url.replace("http", "ws") + "/v1",
                              api_key=key, max_retries=0)


def clip_24k(seconds_silence: float = 1.2) -> np.ndarray:
    a = load_audio(CLIP, RATE).samples
    return np.concatenate([np.zeros(int(0.3 * RATE), np.float32), a, np.zeros(int(seconds_silence * RATE), np.float32)])


def b64(samples: np.ndarray) -> str:
    return base64.b64encode((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()).decode()


async def append(conn, samples: np.ndarray, step_s: float = 0.1, pace: float = 0.0) -> None:
    step = int(step_s * RATE)
    for i in range(0, len(samples), step):
        await conn.input_audio_buffer.append(audio=b64(samples[i:i + step]))
        if pace:
            await asyncio.sleep(step_s * pace)


async def collect(conn, until: str = "response.done", timeout: float = 60.0, stop=None) -> list:
    """Server events (SDK models) up to and including the first `until`."""
    out = []

    async def run() -> None:
        while True:
            ev = await conn.recv()
            out.append(ev)
            if stop is not None:
                await stop(ev)
            if ev.type == until:
                return

    await asyncio.wait_for(run(), timeout)
    return out


def user_text(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def types(evs) -> list[str]:
    return [e.type for e in evs]


def audio_seconds(evs) -> float:
    return sum(len(base64.b64decode(e.delta)) // 2 for e in evs if e.type == "response.output_audio.delta") / RATE


SESSION = {"type": "realtime", "instructions": "Answer in one short sentence.", "output_modalities": ["audio"],
           "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE},
                               "transcription": {"model": "whisper-1", "language": "en"},
                               "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}},
                     "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": "alloy"}}}


async def open_session(conn, **over) -> None:
    created = await conn.recv()
    assert created.type == "session.created" and created.session.type == "realtime"
    assert created.session.audio.input.format.rate == RATE
    assert created.session.audio.input.turn_detection.type == "server_vad"
    await conn.session.update(session={**SESSION, **over})
    updated = await collect(conn, "session.updated", 10)
    errors = [e for e in updated if e.type == "error"]
    assert not errors, errors


# ------------------------------------------------------------------------------ protocol (mock engines)
async def test_spoken_question_server_vad(rt_server):
    async with sdk(rt_server).realtime.connect(model="gpt-realtime") as conn:
        await open_session(conn)
        await append(conn, clip_24k())
        evs = await collect(conn)
    t = types(evs)
    for name in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                 "input_audio_buffer.committed", "conversation.item.input_audio_transcription.delta",
                 "conversation.item.input_audio_transcription.completed", "response.created",
                 "response.output_item.added", "response.content_part.added", "response.output_audio.delta",
                 "response.output_audio_transcript.delta", "response.output_audio.done",
                 "response.output_audio_transcript.done", "response.output_item.done", "response.done"):
        assert name in t, (name, t)
    assert t.index("input_audio_buffer.speech_started") < t.index("input_audio_buffer.speech_stopped") \
        < t.index("response.created") < t.index("response.output_audio.delta") < t.index("response.done")
    done_tr = next(e for e in evs if e.type == "conversation.item.input_audio_transcription.completed")
    assert "mock transcript" in done_tr.transcript
    started = next(e for e in evs if e.type == "input_audio_buffer.speech_started")
    assert 300 <= started.audio_start_ms <= 2000  # after the 0.3 s of silence before the clip
    done = evs[-1].response
    assert done.status == "completed" and done.usage.output_tokens > 0 and done.usage.input_tokens > 0
    transcript = "".join(e.delta for e in evs if e.type == "response.output_audio_transcript.delta")
    assert transcript.strip() and done.output[0].content[0].transcript == transcript.strip()
    assert audio_seconds(evs) > 0.3


async def test_typed_item_text_and_audio_then_text_only(rt_server):
    async with sdk(rt_server).realtime.connect(model="spark-voice") as conn:
        await open_session(conn)
        await conn.conversation.item.create(item=user_text("What is the capital of France?"))
        await conn.response.create()
        evs = await collect(conn)
        assert "conversation.item.added" in types(evs) and "conversation.item.done" in types(evs)
        assert evs[-1].response.status == "completed"
        assert "".join(e.delta for e in evs if e.type == "response.output_audio_transcript.delta").strip()
        assert audio_seconds(evs) > 0.3
        # a text-only response: output_text deltas, no audio
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "And of Japan?"}]})
        await conn.response.create(response={"output_modalities": ["text"]})
        evs = await collect(conn)
        t = types(evs)
        assert "response.output_text.delta" in t and "response.output_text.done" in t
        assert "response.output_audio.delta" not in t
        assert evs[-1].response.output_modalities == ["text"]


async def test_manual_commit_then_response(rt_server):
    async with sdk(rt_server).realtime.connect(model="spark-voice") as conn:
        await open_session(conn, audio={"input": {"turn_detection": None,
                                                  "transcription": {"model": "whisper-1", "language": "en"}}})
        await append(conn, clip_24k(0.2))
        await conn.input_audio_buffer.commit()
        evs = await collect(conn, "conversation.item.input_audio_transcription.completed")
        assert "input_audio_buffer.speech_started" not in types(evs)
        assert "input_audio_buffer.committed" in types(evs) and evs[-1].transcript
        await conn.response.create()
        evs = await collect(conn)
        assert evs[-1].response.status == "completed" and audio_seconds(evs) > 0.3
        # an empty buffer cannot be committed; the session goes on
        await conn.input_audio_buffer.commit()
        err = (await collect(conn, "error"))[-1]
        assert err.error.code == "input_audio_buffer_commit_empty"
        await conn.input_audio_buffer.append(audio=b64(np.zeros(2400, np.float32)))
        await conn.input_audio_buffer.clear()
        assert (await collect(conn, "input_audio_buffer.cleared"))[-1].type == "input_audio_buffer.cleared"
        # an audio item: transcribed, then answered
        await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [
            {"type": "input_audio", "audio": b64(clip_24k(0.2))}]})
        evs = await collect(conn, "conversation.item.input_audio_transcription.completed")
        item = next(e for e in evs if e.type == "conversation.item.done").item
        assert item.role == "user" and item.content[0].type == "input_audio" and item.content[0].transcript
        await conn.response.create()
        assert (await collect(conn))[-1].response.status == "completed"


async def test_response_cancel_stops_audio(tmp_path):
    s = settings_for(tmp_path)
    pipe = VoicePipeline(MockSTT(language="en"), MockLLM(token_delay=0.15), MockTTS(), settings=s, language="en")
    with Server(create_app(s, pipe)) as srv:
        srv.wait_ready()
        async with sdk(srv, "anything").realtime.connect(model="spark-voice") as conn:
            await open_session(conn, audio={"input": {"turn_detection": None}})
            await conn.conversation.item.create(item=user_text("Tell me a long story."))
            await conn.response.create()
            cancelled = []

            async def on(ev) -> None:
                if ev.type == "response.output_audio.delta" and not cancelled:
                    cancelled.append(ev)
                    await conn.response.cancel()

            evs = await collect(conn, stop=on, timeout=30)
            done = evs[-1].response
            assert cancelled and done.status == "cancelled" and done.status_details.reason == "client_cancelled"
            after = evs[evs.index(cancelled[0]) + 1:]
            # the answer would have taken seconds: at most the chunk being made when cancel came
            assert sum(e.type == "response.output_audio.delta" for e in after) <= 2
            assert done.output[0].status == "incomplete"
            # nothing left to cancel: an error, the session stays usable
            await conn.response.cancel()
            assert (await collect(conn, "error"))[-1].error.code == "response_cancel_not_active"


async def test_barge_in_cancels_the_answer(tmp_path):
    s = settings_for(tmp_path)
    pipe = VoicePipeline(MockSTT(partial_interval=0.3, silence=0.4, language="en"), MockLLM(token_delay=0.15),
                         MockTTS(), settings=s, language="en")
    with Server(create_app(s, pipe)) as srv:
        srv.wait_ready()
        async with sdk(srv, "x").realtime.connect(model="spark-voice") as conn:
            await open_session(conn)
            await append(conn, clip_24k(0.8))
            first = await collect(conn, "response.output_audio.delta")
            rid = next(e for e in first if e.type == "response.created").response.id
            await append(conn, clip_24k(0.8)[: int(1.5 * RATE)])  # the user talks over the answer
            evs = await collect(conn, "response.done")
            assert evs[-1].response.id == rid and evs[-1].response.status == "cancelled"
            assert evs[-1].response.status_details.reason == "turn_detected"


async def test_bad_events_answer_errors_and_session_stays_usable(rt_server):
    async with sdk(rt_server).realtime.connect(model="spark-voice") as conn:
        await conn.recv()
        raw = conn._connection  # the websocket under the SDK: events the SDK would refuse to build
        await raw.send("{not json")
        await raw.send(json.dumps({"type": "no.such.event"}))
        await raw.send(json.dumps({"type": "input_audio_buffer.append", "audio": "%%%"}))
        await conn.session.update(session={"type": "realtime", "tools": [{"type": "mcp", "server_label": "f"}],
                                           "audio": {"input": {"format": {"type": "audio/pcmu"}}}})
        await conn.send({"type": "conversation.item.truncate", "item_id": "x", "content_index": 0,
                         "audio_end_ms": 0})
        await conn.response.create()  # nothing to respond to yet
        evs = await collect(conn, "session.updated", 10)
        evs += await collect(conn, "error", 10)  # truncate
        evs += await collect(conn, "error", 10)  # response.create
        errors = [e.error for e in evs if e.type == "error"]
        codes = [e.code for e in errors]
        assert codes[:3] == ["invalid_json", "invalid_event_type", "invalid_value"], codes
        msgs = " | ".join(e.message for e in errors)
        assert "tools" in msgs and "audio/pcmu" in msgs and "truncat" in msgs
        assert codes[-1] == "conversation_empty"
        assert not any("Traceback" in e.message for e in errors)
        # still usable
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Hello?"}]})
        await conn.response.create()
        assert (await collect(conn))[-1].response.status == "completed"


async def test_beta_event_names(rt_server):
    url = rt_server.url.replace("http", "ws") + "/v1/realtime?model=gpt-4o-realtime-preview"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {KEY}",
                                                           "OpenAI-Beta": "realtime=v1"}) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created" and created["session"]["input_audio_format"] == "pcm16"
        await ws.send(json.dumps({"type": "session.update", "session": {
            "modalities": ["text", "audio"], "input_audio_format": "pcm16", "output_audio_format": "pcm16",
            "turn_detection": None, "voice": "alloy"}}))
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        seen = []
        while not seen or seen[-1] != "response.done":
            seen.append(json.loads(await asyncio.wait_for(ws.recv(), 30))["type"])
    assert "error" not in seen, seen
    assert {"conversation.item.created", "response.audio.delta", "response.audio_transcript.delta",
            "response.audio.done"} <= set(seen)


# ------------------------------------------------------------------------------ function calling (mock engines)
ORDER_TOOL = {"type": "function", "name": "order_status", "description": "Shipping status of an order.",
              "parameters": {"type": "object", "properties": {"order": {"type": "string", "maxLength": 10}},
                             "required": ["order"]}}


def function_calls(evs) -> list:
    return [e.item for e in evs if e.type == "response.output_item.done" and e.item.type == "function_call"]


def check_function_call_events(evs):
    """The function_call item's events in the Realtime order; returns the done item."""
    t = types(evs)
    added = next(e for e in evs if e.type == "response.output_item.added" and e.item.type == "function_call")
    assert added.item.call_id and added.item.name and added.item.status == "in_progress"
    deltas = [e for e in evs if e.type == "response.function_call_arguments.delta"]
    done = next(e for e in evs if e.type == "response.function_call_arguments.done")
    assert deltas and all(d.call_id == added.item.call_id and d.item_id == added.item.id for d in deltas)
    assert "".join(d.delta for d in deltas) == done.arguments and done.name == added.item.name
    [item] = function_calls(evs)
    assert item.call_id == added.item.call_id and item.arguments == done.arguments and item.status == "completed"
    assert t.index("response.output_item.added") < t.index("response.function_call_arguments.delta") \
        < t.index("response.function_call_arguments.done") < t.index("response.done")
    resp = evs[-1].response
    assert resp.status == "completed" and resp.output[-1].type == "function_call"
    assert resp.output[-1].call_id == item.call_id
    # the arguments are never spoken nor shown as answer text
    assert "response.output_audio.delta" not in t and "response.output_audio_transcript.delta" not in t
    assert resp.usage.output_tokens > 0 and resp.usage.output_token_details.audio_tokens == 0
    return item


async def test_function_call_round_trip(rt_server):
    async with sdk(rt_server).realtime.connect(model="spark-voice") as conn:
        await open_session(conn, tools=[ORDER_TOOL], tool_choice="auto")
        await conn.conversation.item.create(item=user_text("What is the order status of order 7?"))
        await conn.response.create()
        evs = await collect(conn)
        item = check_function_call_events(evs)
        assert item.name == "order_status" and isinstance(json.loads(item.arguments)["order"], str)
        added = [e.item for e in evs if e.type == "conversation.item.added"]
        assert any(i.type == "function_call" and i.call_id == item.call_id for i in added)
        # the client runs the function and answers; the model goes on from the result, in audio
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": item.call_id,
                                                  "output": json.dumps({"status": "shipped"})})
        out = await collect(conn, "conversation.item.done", 10)
        assert out[-1].item.type == "function_call_output" and out[-1].item.call_id == item.call_id
        await conn.response.create()
        evs = await collect(conn)
        done = evs[-1].response
        assert done.status == "completed" and not function_calls(evs) and audio_seconds(evs) > 0.3
        transcript = "".join(e.delta for e in evs if e.type == "response.output_audio_transcript.delta")
        assert "shipped" in transcript  # the mock reads the tool's result back
        u = done.usage
        assert u.input_tokens > 0 and u.output_tokens > 0 and u.total_tokens == u.input_tokens + u.output_tokens
        assert u.output_token_details.audio_tokens > 0  # the spoken answer
        assert u.output_token_details.audio_tokens + u.output_token_details.text_tokens == u.output_tokens
        assert u.input_token_details.audio_tokens == 0  # typed input only
        # the same call id cannot be answered twice
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": item.call_id,
                                                  "output": "again"})
        err = (await collect(conn, "error", 10))[-1].error
        assert err.code == "invalid_call_id" and err.param == "item.call_id"


async def test_spoken_question_named_tool_then_spoken_answer(rt_server):
    """Server VAD: a spoken question with tool_choice naming the function -> the call; the output ->
    a spoken answer. Usage counts the transcript's tokens as input audio tokens."""
    async with sdk(rt_server).realtime.connect(model="spark-voice") as conn:
        await open_session(conn, tools=[ORDER_TOOL], tool_choice={"type": "function", "name": "order_status"})
        await append(conn, clip_24k())
        evs = await collect(conn)
        assert "conversation.item.input_audio_transcription.completed" in types(evs)
        item = check_function_call_events(evs)
        assert evs[-1].response.usage.input_token_details.audio_tokens > 0
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": item.call_id,
                                                  "output": "in transit"})
        await conn.response.create()
        evs = await collect(conn)
        assert evs[-1].response.status == "completed" and audio_seconds(evs) > 0.3
        assert "in transit" in evs[-1].response.output[0].content[0].transcript


async def test_bad_tools_and_unknown_call_id_answer_errors_and_session_stays_usable(rt_server):
    async with sdk(rt_server).realtime.connect(model="spark-voice") as conn:
        await open_session(conn)
        bad = [
            ({"tools": [{"type": "function", "name": "no spaces allowed"}]}, "session.tools[0].name"),
            ({"tools": [ORDER_TOOL, {"type": "function", "name": "x", "parameters": {"type": "array"}}]},
             "session.tools[1].parameters"),
            ({"tools": [ORDER_TOOL, ORDER_TOOL]}, "session.tools[1].name"),
            ({"tools": [ORDER_TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "session.tool_choice"),
            ({"tool_choice": "sometimes"}, "session.tool_choice"),
        ]
        for over, param in bad:
            await conn.session.update(session={"type": "realtime", **over})
            evs = await collect(conn, "session.updated", 10)
            errors = [e.error for e in evs if e.type == "error"]
            assert [e.param for e in errors] == [param], (over, errors)
            assert evs[-1].session.tools == []  # nothing applied
        await conn.conversation.item.create(item={"type": "function_call_output", "call_id": "call_nope",
                                                  "output": "{}"})
        err = (await collect(conn, "error", 10))[-1].error
        assert err.code == "invalid_call_id" and "call_nope" in err.message
        await conn.response.create()  # the output was refused: nothing to answer
        assert (await collect(conn, "error", 10))[-1].error.code == "conversation_empty"
        # a good definition is echoed; the session answers as before
        await conn.session.update(session={"type": "realtime", "tools": [ORDER_TOOL], "tool_choice": "required"})
        upd = (await collect(conn, "session.updated", 10))[-1].session
        assert [t.name for t in upd.tools] == ["order_status"] and upd.tool_choice == "required"
        await conn.session.update(session={"type": "realtime", "tool_choice": "none"})
        await collect(conn, "session.updated", 10)
        await conn.conversation.item.create(item=user_text("What is the order status of order 7?"))
        await conn.response.create()
        evs = await collect(conn)
        assert evs[-1].response.status == "completed" and not function_calls(evs) and audio_seconds(evs) > 0.3


# ------------------------------------------------------------------------------ turn detection settings
PAUSE = ROOT / "examples" / "audio" / "pause_en.wav"  # a 0.6 s pause in the middle of the sentence


def pause_clip_24k() -> np.ndarray:
    a = load_audio(PAUSE, RATE).samples
    return np.concatenate([np.zeros(int(0.3 * RATE), np.float32), a, np.zeros(int(2.5 * RATE), np.float32)])


async def utterances(conn, td: dict) -> list:
    """Speak the pause clip under `td` (create_response off); the speech_stopped events."""
    await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": td}}})
    evs = await collect(conn, "session.updated", 10)
    assert not [e for e in evs if e.type == "error"], evs
    await append(conn, pause_clip_24k())
    await conn.input_audio_buffer.append(audio=b64(np.zeros(int(0.1 * RATE), np.float32)))
    evs = []
    # the clip ends with 2.5 s of silence: every utterance has ended once the last one is transcribed
    # (a bounded wait for events that must not come; no timing is asserted)
    try:
        while True:
            evs += await collect(conn, "conversation.item.input_audio_transcription.completed", 3)
    except asyncio.TimeoutError:
        pass
    return [e for e in evs if e.type == "input_audio_buffer.speech_stopped"], evs


async def test_silence_duration_ms_is_honoured(rt_server):
    """The default silence ends the turn in the clip's mid-sentence pause; 1500 ms keeps it open."""
    async with sdk(rt_server).realtime.connect(model="spark-voice") as conn:
        await open_session(conn)
        short, evs = await utterances(conn, {"type": "server_vad", "silence_duration_ms": 300,
                                             "create_response": False})
        assert len(short) == 2, types(evs)
        assert "response.created" not in types(evs)
        long, evs = await utterances(conn, {"type": "server_vad", "silence_duration_ms": 1500,
                                            "create_response": False})
        assert len(long) == 1, types(evs)
        # speech_stopped after the voice ended + the silence asked for
        started = next(e for e in evs if e.type == "input_audio_buffer.speech_started")
        assert long[0].audio_end_ms - started.audio_start_ms > 3000


async def test_create_response_false_commits_and_transcribes_but_waits(rt_server):
    async with sdk(rt_server).realtime.connect(model="spark-voice") as conn:
        await open_session(conn, audio={"input": {"turn_detection": {"type": "server_vad", "create_response": False},
                                                  "transcription": {"model": "whisper-1", "language": "en"}}})
        await append(conn, clip_24k())
        evs = await collect(conn, "conversation.item.input_audio_transcription.completed")
        assert {"input_audio_buffer.speech_stopped", "input_audio_buffer.committed"} <= set(types(evs))
        heard = evs[-1].transcript
        try:  # no response comes by itself (a bounded wait for an event that must not come)
            more = await collect(conn, "response.created", 1.5)
        except asyncio.TimeoutError:
            more = []
        assert "response.created" not in types(more)
        await conn.response.create()
        evs = await collect(conn)
        assert evs[-1].response.status == "completed" and audio_seconds(evs) > 0.3
        assert heard in evs[-1].response.output[0].content[0].transcript  # the mock repeats the question
        assert evs[-1].response.usage.input_token_details.audio_tokens > 0


async def test_turn_detection_values_checked_and_echoed(rt_server):
    async with sdk(rt_server).realtime.connect(model="spark-voice") as conn:
        await open_session(conn)
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 200, "silence_duration_ms": 1200,
            "interrupt_response": False}}}})
        td = (await collect(conn, "session.updated", 10))[-1].session.audio.input.turn_detection
        assert (td.type, td.threshold, td.prefix_padding_ms, td.silence_duration_ms) == ("server_vad", 0.6, 200, 1200)
        assert td.interrupt_response is False and td.create_response is True
        base = "session.audio.input.turn_detection"
        for bad, field in (({"threshold": 1.5}, "threshold"), ({"silence_duration_ms": 20}, "silence_duration_ms"),
                           ({"prefix_padding_ms": -1}, "prefix_padding_ms"), ({"create_response": "yes"},
                                                                             "create_response"),
                           ({"type": "semantic_vad", "eagerness": "eager"}, "eagerness"),
                           ({"type": "server_vad", "idle_timeout_ms": 5000}, "idle_timeout_ms")):
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
                "type": "server_vad", **bad}}}})
            evs = await collect(conn, "session.updated", 10)
            [err] = [e.error for e in evs if e.type == "error"]
            assert err.param == f"{base}.{field}", err
            td = evs[-1].session.audio.input.turn_detection
            assert td.silence_duration_ms == 1200 and td.threshold == 0.6  # unchanged
        # semantic_vad: our end-of-turn model (the mock one here), echoed with its eagerness
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "semantic_vad", "eagerness": "high"}}}})
        td = (await collect(conn, "session.updated", 10))[-1].session.audio.input.turn_detection
        assert td.type == "semantic_vad" and td.eagerness == "high"
        await append(conn, clip_24k(2.5))
        evs = await collect(conn)
        assert evs[-1].response.status == "completed" and audio_seconds(evs) > 0.3
        stopped = next(e for e in evs if e.type == "input_audio_buffer.speech_stopped")
        assert stopped.audio_end_ms < (0.3 + load_audio(CLIP, RATE).duration + 2.1) * 1000  # high: <= 2 s held
        # null: manual commit only
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        assert (await collect(conn, "session.updated", 10))[-1].session.audio.input.turn_detection is None


# ------------------------------------------------------------------------------ auth and origins
async def test_auth_and_cross_origin_websockets_refused(rt_server):
    ws_base = rt_server.url.replace("http", "ws")
    with pytest.raises(websockets.InvalidStatus) as ei:  # wrong key through the SDK
        async with sdk(rt_server, "wrong").realtime.connect(model="x") as conn:
            await conn.recv()
    assert ei.value.response.status_code == 401 and b"invalid_api_key" in ei.value.response.body
    for path in ("/v1/realtime", "/v1/voice"):
        with pytest.raises(websockets.InvalidStatus) as bad:
            async with websockets.connect(ws_base + path, origin="http://evil.example",
                                          additional_headers={"Authorization": f"Bearer {KEY}"}):
                pass
        assert bad.value.response.status_code == 403
        assert b"origin_not_allowed" in bad.value.response.body
    # a browser on the page's own origin (or localhost) carrying the key as a subprotocol
    for origin in (rt_server.url, "http://localhost:5173"):
        async with websockets.connect(ws_base + "/v1/voice", origin=origin,
                                      subprotocols=["spark-voice.v1", f"bearer.{KEY}"]) as ws:
            assert ws.subprotocol == "spark-voice.v1"
            assert json.loads(await ws.recv())["type"] == "session.created"
    async with websockets.connect(ws_base + "/v1/realtime", origin=rt_server.url,
                                  subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
    with pytest.raises(websockets.InvalidStatus) as bad:
        async with websockets.connect(ws_base + "/v1/voice", origin=rt_server.url,
                                      subprotocols=["spark-voice.v1", "bearer.wrong"]):
            pass
    assert bad.value.response.status_code == 401


def test_cross_site_posts_refused(rt_server):
    url, auth = rt_server.url + "/v1/chat/completions", {"Authorization": f"Bearer {KEY}"}
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(url, json=body, headers={**auth, "Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    # a form post from another site without an Origin header (Sec-Fetch-Site tells)
    r = httpx.post(url, content=b"a=b", headers={**auth, "Sec-Fetch-Site": "cross-site",
                                                  "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 403
    for headers in ({"Origin": rt_server.url}, {"Origin": "http://127.0.0.1:3000"}, {}):
        r = httpx.post(url, json=body, headers={**auth, **headers})
        assert r.status_code == 200, (headers, r.text)
    assert httpx.get(rt_server.url + "/health", headers={"Origin": "https://evil.example"}).status_code == 200
    # DNS rebinding: another site's name pointed at 127.0.0.1 (Origin == Host) is not "self" on loopback
    r = httpx.post(url, json=body, headers={**auth, "Origin": "http://rebound.example:8080",
                                            "Host": "rebound.example:8080"})
    assert r.status_code == 403


def test_allowed_origins_setting(tmp_path):
    s = settings_for(tmp_path, SERVE_ALLOWED_ORIGINS="https://app.example.com")
    pipe = VoicePipeline(MockSTT(language="en"), MockLLM(), MockTTS(), settings=s, language="en")
    with Server(create_app(s, pipe)) as srv:
        body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
        ok = httpx.post(srv.url + "/v1/chat/completions", json=body, headers={"Origin": "https://app.example.com"})
        assert ok.status_code == 200
        for origin in ("http://localhost:8080", srv.url):  # not listed: refused
            r = httpx.post(srv.url + "/v1/chat/completions", json=body, headers={"Origin": origin})
            assert r.status_code == 403
    with pytest.raises(Exception, match="SERVE_ALLOWED_ORIGINS"):
        settings_for(tmp_path, SERVE_ALLOWED_ORIGINS="not an origin")


# ------------------------------------------------------------------------------ real engines
@pytest.mark.real
async def test_realtime_real_engines_spoken_question(dev_settings):
    s = dev_server_settings(dev_settings)
    with Server(create_app(s)) as srv:
        srv.wait_ready(timeout=300)
        async with sdk(srv, "x").realtime.connect(model="spark-voice") as conn:
            await open_session(conn)
            await append(conn, clip_24k(1.5), pace=0.5)
            evs = await collect(conn, timeout=300)
    transcript = next(e for e in evs if e.type == "conversation.item.input_audio_transcription.completed").transcript
    assert "capital" in transcript.lower() and "france" in transcript.lower()
    assert evs[-1].response.status == "completed" and audio_seconds(evs) > 0.3


@pytest.mark.real
async def test_realtime_real_engines_function_call(dev_settings):
    """whisper + SmolLM2 + Piper: a spoken question, a client function the model must call (named
    tool_choice: grammar-constrained arguments), its output, then a spoken answer."""
    s = dev_server_settings(dev_settings, LLM_MAX_TOKENS="48")
    tool = {"type": "function", "name": "get_capital", "description": "The capital city of a country.",
            "parameters": {"type": "object", "properties": {"country": {"type": "string", "maxLength": 20}},
                           "required": ["country"]}}
    with Server(create_app(s)) as srv:
        srv.wait_ready(timeout=300)
        async with sdk(srv, "x").realtime.connect(model="spark-voice") as conn:
            await open_session(conn, tools=[tool], tool_choice={"type": "function", "name": "get_capital"},
                               audio={**SESSION["audio"], "input": {
                                   **SESSION["audio"]["input"],
                                   "turn_detection": {"type": "server_vad", "silence_duration_ms": 1200}}})
            await append(conn, clip_24k(2.0), pace=0.5)
            evs = await collect(conn, timeout=300)
            heard = next(e for e in evs if e.type == "conversation.item.input_audio_transcription.completed")
            assert "capital" in heard.transcript.lower()
            item = check_function_call_events(evs)
            args = json.loads(item.arguments)
            assert item.name == "get_capital" and set(args) == {"country"} and len(args["country"]) <= 20
            usage = evs[-1].response.usage
            assert usage.input_tokens > 50 and 0 < usage.input_token_details.audio_tokens < usage.input_tokens
            # the client answers; with tool_choice none the model must speak from the result
            await conn.session.update(session={"type": "realtime", "tool_choice": "none"})
            await conn.conversation.item.create(item={"type": "function_call_output", "call_id": item.call_id,
                                                      "output": json.dumps({"capital": "Paris"})})
            await conn.response.create()
            evs = await collect(conn, timeout=300)
    assert not [e for e in evs if e.type == "error"], evs
    done = evs[-1].response
    assert done.status == "completed" and not function_calls(evs) and audio_seconds(evs) > 0.3
    assert done.usage.output_tokens > 0 and done.usage.output_token_details.audio_tokens > 0
