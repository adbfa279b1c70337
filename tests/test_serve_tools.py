"""Tool calling through /v1/chat/completions with the official `openai` client: the mock LLM,
the tiny gpt-oss GGUF (harmony, grammar-constrained arguments) and SmolLM2 (prompted format)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from test_serve import Server, _send_audio, _ws_events, _ws_url, settings_for, silence

from conftest import model_file, need_module, tone
from spark_voice.backends.mock import MockEmbedder, MockLLM, MockSTT, MockTTS
from spark_voice.pipeline import VoicePipeline
from spark_voice.serve.app import create_app

TOOLS = [
    {"type": "function", "function": {
        "name": "order_status", "description": "Shipping status of an order.",
        "parameters": {"type": "object", "properties": {"order": {"type": "string", "maxLength": 10}},
                       "required": ["order"]}}},
    {"type": "function", "function": {
        "name": "current_time", "description": "The current time.", "strict": True,
        "parameters": {"type": "object",
                       "properties": {"timezone": {"type": "string", "enum": ["Asia/Tokyo", "UTC"]}},
                       "required": ["timezone"], "additionalProperties": False}}},
]
ASK = [{"role": "user", "content": "What is the order status of order 7?"}]


def _client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=120)


def _streamed(stream) -> tuple[str, list[dict], str, dict | None]:
    """content, tool_calls (merged from deltas by index), finish_reason, usage of a stream."""
    content, calls, finish, usage = [], {}, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for ch in chunk.choices:
            if ch.delta.content:
                content.append(ch.delta.content)
            for tc in ch.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    assert c["id"] is None          # the id comes once, with the first delta
                    c["id"] = tc.id
                if tc.function and tc.function.name:
                    c["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    c["arguments"] += tc.function.arguments
            finish = ch.finish_reason or finish
    return "".join(content), [calls[i] for i in sorted(calls)], finish, usage


def _round_trip_messages(call_id: str, name: str, arguments: str, result: str) -> list[dict]:
    return ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": result}]


# ------------------------------------------------------------------------------ mock LLM
@pytest.fixture(scope="module")
def mock_server(tmp_path_factory):
    s = settings_for(tmp_path_factory.mktemp("tools"))
    pipe = VoicePipeline(None, MockLLM(), MockTTS(), settings=s, language="en")
    with Server(create_app(s, pipe, embedder=MockEmbedder())) as srv:
        srv.wait_ready()
        yield srv


def test_mock_full_round_trip(mock_server):
    c = _client(mock_server)
    r = c.chat.completions.create(model="x", messages=ASK, tools=TOOLS)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content is None
    [tc] = ch.message.tool_calls
    assert tc.type == "function" and tc.id.startswith("call_") and tc.function.name == "order_status"
    assert json.loads(tc.function.arguments) == {"order": ASK[0]["content"]}
    msgs = ASK + [ch.message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": tc.id, "content": "shipped"}]
    r2 = c.chat.completions.create(model="x", messages=msgs, tools=TOOLS)
    assert r2.choices[0].finish_reason == "stop" and "shipped" in r2.choices[0].message.content
    assert not r2.choices[0].message.tool_calls
    # streaming: the same call as argument deltas with an index and one id
    content, calls, finish, usage = _streamed(c.chat.completions.create(
        model="x", messages=ASK, tools=TOOLS, stream=True, stream_options={"include_usage": True}))
    assert content == "" and finish == "tool_calls" and usage["completion_tokens"] > 0
    assert [x["name"] for x in calls] == ["order_status"] and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["arguments"]) == {"order": ASK[0]["content"]}
    r3 = c.chat.completions.create(model="x", messages=ASK, tools=TOOLS, tool_choice="none")
    assert r3.choices[0].finish_reason == "stop" and not r3.choices[0].message.tool_calls
    r4 = c.chat.completions.create(model="x", messages=ASK, tools=TOOLS,
                                   tool_choice={"type": "function", "function": {"name": "current_time"}})
    assert r4.choices[0].message.tool_calls[0].function.name == "current_time"


def test_bad_tool_requests_are_400_with_a_message(mock_server):
    c = _client(mock_server)
    bad = [
        (dict(tools=[{"type": "retrieval"}]), "tools[0]"),
        (dict(tools=[{"type": "function", "function": {"name": "has space"}}]), "name"),
        (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "nope"),
        (dict(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
        (dict(tool_choice="required"), "tools"),
        (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
         "parameters"),
    ]
    for kw, word in bad:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="x", messages=ASK, **kw)
        msg = e.value.body["message"]
        assert word in msg and "Traceback" not in msg, kw
    with pytest.raises(openai.BadRequestError, match="tool_call_id"):
        c.chat.completions.create(model="x", messages=ASK + [{"role": "tool", "tool_call_id": "call_x",
                                                              "content": "hi"}])
    r = httpx.post(mock_server.url + "/v1/chat/completions",
                   json={"messages": ASK, "functions": [{"name": "f"}]})
    assert r.status_code == 400 and "tools" in r.json()["error"]["message"]


def test_models_say_which_model_can_call_tools(mock_server, tmp_path):
    llm = next(m for m in httpx.get(mock_server.url + "/v1/models").json()["data"]
               if m["spark_voice"]["role"] == "llm")
    assert llm["spark_voice"]["tools"] is True and llm["spark_voice"]["tool_format"] == "mock"

    class Plain(MockLLM):  # a plugged-in LLM that takes no tools
        supports_tools = False

    s = settings_for(tmp_path)
    with Server(create_app(s, VoicePipeline(None, Plain(), MockTTS(), settings=s))) as srv:
        srv.wait_ready()
        llm = next(m for m in httpx.get(srv.url + "/v1/models").json()["data"]
                   if m["spark_voice"]["role"] == "llm")
        assert llm["spark_voice"]["tools"] is False
        with pytest.raises(openai.BadRequestError, match="cannot call tools") as e:
            _client(srv).chat.completions.create(model="x", messages=ASK, tools=TOOLS)
        assert e.value.body["code"] == "tools_not_supported"
        r = _client(srv).chat.completions.create(model="x", messages=ASK, tools=TOOLS, tool_choice="none")
        assert r.choices[0].message.content


def test_ws_voice_turn_shows_tool_calls_and_results(tmp_path):
    import asyncio

    import numpy as np
    import websockets

    s = settings_for(tmp_path)
    pipe = VoicePipeline(MockSTT(text="What is the order status?", partial_interval=0.3, silence=0.3,
                                 language="en"), MockLLM(), MockTTS(), settings=s, language="en")

    @pipe.tool
    def order_status(order: str) -> str:
        """Status of an order."""
        return "shipped"

    async def go(srv):
        async with websockets.connect(_ws_url(srv), max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(json.dumps({"type": "start", "language": "en", "format": "pcm"}))
            await _send_audio(ws, np.concatenate([silence(0.2), tone(1.0), silence(0.5)]))
            await ws.send(json.dumps({"type": "stop"}))
            return await _ws_events(ws, lambda e: e["type"] == "turn.done")

    with Server(create_app(s, pipe, embedder=MockEmbedder())) as srv:
        srv.wait_ready()
        events = asyncio.run(go(srv))
    kinds = [e["type"] for e in events]
    assert kinds.index("llm.tool_call") < kinds.index("tool.result") < kinds.index("tts.chunk")
    call = next(e for e in events if e["type"] == "llm.tool_call")
    res = next(e for e in events if e["type"] == "tool.result")
    assert call["name"] == res["name"] == "order_status" and call["call_id"] == res["call_id"]
    assert call["request_id"] == res["request_id"] == events[-1]["request_id"]
    assert res["ok"] and res["result"] == "shipped" and res["ms"] >= 0
    assert json.loads(call["arguments"]) == {"order": "What is the order status?"}


# ------------------------------------------------------------------------------ real engines
def _real_server(tmp_path, llm):
    s = settings_for(tmp_path)
    return Server(create_app(s, VoicePipeline(None, llm, MockTTS(), settings=s), embedder=MockEmbedder()))


def _check_call(name: str, arguments: str) -> None:
    a = json.loads(arguments)
    if name == "order_status":
        assert set(a) == {"order"} and isinstance(a["order"], str) and len(a["order"]) <= 10
    else:
        assert a == {"timezone": a["timezone"]} and a["timezone"] in ("Asia/Tokyo", "UTC")


@pytest.fixture(scope="module")
def tiny_gptoss(tmp_path_factory):
    need_module("gguf", "convert")
    need_module("llama_cpp", "llm")
    from spark_voice.backends.llm_llama_cpp import LlamaCppLLM
    from tiny_gptoss import build_tiny_gptoss

    path = build_tiny_gptoss(tmp_path_factory.mktemp("gptoss") / "tiny-gpt-oss.gguf")
    llm = LlamaCppLLM(path, n_ctx=1024, n_threads=2, backend="cpu", temperature=0.8, seed=3, max_tokens=48)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def smol(dev_settings):
    need_module("llama_cpp", "llm")
    from spark_voice.backends.llm_llama_cpp import LlamaCppLLM

    model_file(dev_settings, "llm")
    llm = LlamaCppLLM.from_settings(dev_settings)
    llm.max_tokens = 64
    yield llm
    llm.close()


@pytest.mark.parametrize("which", ["tiny_gptoss", "smol"])
def test_real_model_tool_round_trip(which, request, tmp_path):
    llm = request.getfixturevalue(which)
    with _real_server(tmp_path, llm) as srv:
        srv.wait_ready(timeout=120)
        c = _client(srv)
        info = next(m for m in httpx.get(srv.url + "/v1/models").json()["data"]
                    if m["spark_voice"]["role"] == "llm")["spark_voice"]
        assert info["tools"] is True
        assert info["tool_format"] == ("harmony" if which == "tiny_gptoss" else llm.tool_format)
        # a named function: the grammar makes even random weights write valid arguments
        named = {"type": "function", "function": {"name": "order_status"}}
        r = c.chat.completions.create(model="x", messages=ASK, tools=TOOLS, tool_choice=named, max_tokens=60)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.content is None
        [tc] = ch.message.tool_calls
        assert tc.function.name == "order_status"
        _check_call(tc.function.name, tc.function.arguments)
        assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 50
        # required, streamed: one of the functions, argument deltas that add up to valid JSON
        content, calls, finish, usage = _streamed(c.chat.completions.create(
            model="x", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60, stream=True,
            stream_options={"include_usage": True}))
        assert finish == "tool_calls" and content == "" and len(calls) == 1
        _check_call(calls[0]["name"], calls[0]["arguments"])
        assert usage["completion_tokens"] == llm.last_stats["completion_tokens"]
        # the result goes back as a tool message; the model answers (random weights: any text)
        msgs = _round_trip_messages(tc.id, tc.function.name, tc.function.arguments, "shipped")
        r2 = c.chat.completions.create(model="x", messages=msgs, tools=TOOLS, tool_choice="none", max_tokens=8)
        assert r2.choices[0].finish_reason in ("stop", "length") and not r2.choices[0].message.tool_calls
        assert r2.usage.prompt_tokens == len(llm.tokenize(llm.render(
            [{"role": m["role"], "content": m["content"] or "", **({"tool_calls": m["tool_calls"]}
                                                                   if "tool_calls" in m else {})}
             for m in msgs], [])))


def test_truncated_answer_finish_reason_and_usage_match_the_engine(tiny_gptoss, tmp_path):
    """Marker tokens make delta counts wrong; the server reports the engine's own counts."""
    with _real_server(tmp_path, tiny_gptoss) as srv:
        srv.wait_ready(timeout=120)
        c = _client(srv)
        r = c.chat.completions.create(model="x", messages=ASK, max_tokens=7)
        prompt = len(tiny_gptoss.tokenize(tiny_gptoss.render(ASK)))
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens == 7 and r.usage.prompt_tokens == prompt
        assert r.usage.total_tokens == prompt + 7
        _, _, finish, usage = _streamed(c.chat.completions.create(
            model="x", messages=ASK, max_tokens=5, stream=True, stream_options={"include_usage": True}))
        assert finish == "length" and usage == {"prompt_tokens": prompt, "completion_tokens": 5,
                                                "total_tokens": prompt + 5,
                                                "completion_tokens_details": None, "prompt_tokens_details": None}
