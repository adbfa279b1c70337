"""Tools: schema from type hints and docstrings, execution (sync/async, timeout, errors, cancel),
tool_choice, built-ins, and the voice pipeline's tool loop on the mock backends."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Literal

import pytest

from spark_voice.backends.mock import MockLLM, MockTTS
from spark_voice.config import Settings
from spark_voice.errors import ConfigError
from spark_voice.pipeline import VoicePipeline
from spark_voice.tools import (
    ToolCall,
    ToolError,
    ToolRegistry,
    builtin_tools,
    current_time_tool,
    normalize_tool_choice,
    parse_tool_json,
    tool,
)


@tool
def get_weather(city: str, unit: Literal["c", "f"] = "c", days: int = 1) -> dict:
    """Current weather of a city.

    Args:
        city: City name, e.g. Tokyo.
        unit: Temperature unit.
        days (int): How many days
            to forecast.

    Returns:
        The weather.
    """
    return {"city": city, "unit": unit, "days": days, "sky": "sunny"}


def test_schema_from_hints_and_google_docstring():
    spec = get_weather.spec()["function"]
    assert spec["name"] == "get_weather" and spec["description"] == "Current weather of a city."
    p = spec["parameters"]
    assert p["type"] == "object" and p["required"] == ["city"]
    assert p["properties"]["city"] == {"type": "string", "description": "City name, e.g. Tokyo."}
    assert p["properties"]["unit"]["enum"] == ["c", "f"] and p["properties"]["unit"]["default"] == "c"
    assert p["properties"]["days"]["description"] == "How many days to forecast."
    assert "title" not in json.dumps(p)
    assert get_weather("Osaka")["city"] == "Osaka"             # still a plain function


def test_schema_from_rest_docstring_and_async_function():
    @tool(name="lookup", timeout=3)
    async def find(order_id: int, verbose: bool = False) -> str:
        """Look up an order.

        :param order_id: The order number.
        :param verbose: More detail.
        """
        return f"order {order_id}"

    assert find.is_async and find.timeout == 3 and find.name == "lookup"
    props = find.parameters["properties"]
    assert props["order_id"] == {"type": "integer", "description": "The order number."}
    assert props["verbose"]["type"] == "boolean"
    assert find.description == "Look up an order."


def test_bad_definitions_are_typed_errors():
    def star(*a):
        return 1

    with pytest.raises(ToolError, match="args"):
        tool(star)
    with pytest.raises(ToolError, match="name"):
        tool(name="has space")(lambda: 1)


def test_execute_validates_runs_and_reports_errors():
    reg = ToolRegistry([get_weather], timeout=5)
    r = reg.execute(ToolCall("get_weather", '{"city": "Tokyo", "days": "2"}'))
    assert r.ok and json.loads(r.content) == {"city": "Tokyo", "unit": "c", "days": 2, "sky": "sunny"}
    bad = [("get_weather", "{not json"), ("get_weather", "[1]"), ("get_weather", '{"unit": "k"}'),
           ("nope", "{}")]
    for name, args in bad:
        r = reg.execute(ToolCall(name, args))
        assert not r.ok and "error" in json.loads(r.content), (name, args)

    @reg
    def broken(x: int) -> int:
        """Always fails."""
        raise RuntimeError("disk on fire")

    r = reg.execute(ToolCall("broken", '{"x": 1}'))
    assert not r.ok and json.loads(r.content) == {"error": "RuntimeError: disk on fire"}


def test_timeout_and_cancel():
    reg = ToolRegistry(timeout=0.2)
    gate = threading.Event()

    @reg
    def slow_sync() -> str:
        """Blocks."""
        gate.wait(5)
        return "late"

    cancelled: list[bool] = []

    @reg
    async def slow_async() -> str:
        """Sleeps."""
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "late"

    for name in ("slow_sync", "slow_async"):
        t0 = time.perf_counter()
        r = reg.execute(ToolCall(name, ""))
        assert r.timed_out and not r.ok and "timed out" in r.content
        assert time.perf_counter() - t0 < 2.0
    gate.set()
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    t0 = time.perf_counter()
    r = ToolRegistry([slow_async], timeout=30).execute(ToolCall("slow_async", "{}"), cancel=cancel)
    assert r.cancelled and time.perf_counter() - t0 < 2.0
    deadline = time.time() + 2
    while not cancelled and time.time() < deadline:
        time.sleep(0.01)
    assert cancelled                                     # the coroutine itself was cancelled


def test_tool_choice_and_tool_json():
    specs = [get_weather.spec()]
    assert normalize_tool_choice(None, specs) == ("auto", "")
    assert normalize_tool_choice(None, []) == ("none", "")
    assert normalize_tool_choice("required", specs) == ("required", "")
    assert normalize_tool_choice({"type": "function", "function": {"name": "get_weather"}}, specs) == \
        ("function", "get_weather")
    for bad in ("sometimes", {"type": "function", "function": {"name": "x"}}, {"type": "function"}, 3):
        with pytest.raises(ToolError):
            normalize_tool_choice(bad, specs)
    with pytest.raises(ToolError):
        normalize_tool_choice("required", [])
    [c] = parse_tool_json('{"name": "get_weather", "arguments": {"city": "Kyoto"}}')
    assert c.name == "get_weather" and json.loads(c.arguments) == {"city": "Kyoto"} and c.id.startswith("call_")
    assert [x.name for x in parse_tool_json('[{"name": "a", "parameters": {}}, {"name": "b"}]')] == ["a", "b"]
    assert parse_tool_json("Paris.") == [] and parse_tool_json('{"city": 1}') == []


def test_builtin_current_time_and_settings():
    r = ToolRegistry([current_time_tool("Asia/Tokyo")]).execute(ToolCall("current_time", "{}"))
    body = json.loads(r.content)
    assert body["timezone"] == "Asia/Tokyo" and body["datetime"].endswith("+09:00")
    r = ToolRegistry([current_time_tool()]).execute(ToolCall("current_time", '{"timezone": "Mars/Base"}'))
    assert not r.ok and "unknown time zone" in r.content
    s = Settings.load(environ={"TOOLS_BUILTIN": "current_time, search_documents"}, use_dotenv=False,
                      profile="mock")
    assert s.tools_builtin == "current_time,search_documents" and s.tools_timezone == "Asia/Tokyo"
    assert [t.name for t in builtin_tools(s, retriever=None)] == ["current_time"]   # no index: no search
    with pytest.raises(ConfigError, match="TOOLS_BUILTIN"):
        Settings.load(environ={"TOOLS_BUILTIN": "rm_rf"}, use_dotenv=False, profile="mock")
    with pytest.raises(ConfigError, match="TOOLS_TIMEZONE"):
        Settings.load(environ={"TOOLS_TIMEZONE": "Nowhere/City"}, use_dotenv=False, profile="mock")


# ---------------------------------------------------------------------------------------------
# the voice pipeline's tool loop (mock profile)
def _pipe(**kw) -> VoicePipeline:
    s = Settings.load(environ={}, use_dotenv=False, profile="mock")
    return VoicePipeline(llm=MockLLM(), tts=MockTTS(), settings=s, language="en", **kw)


def test_voice_turn_calls_a_python_tool_and_speaks_its_result():
    pipe = _pipe()
    seen: list[str] = []

    @pipe.tool
    def order_status(order: str) -> str:
        """Status of an order."""
        seen.append(order)
        return "SHIPPED-42"

    turn = pipe.run(text="What is the order status of my order?")
    assert seen == ["What is the order status of my order?"]
    stages = [e.stage for e in turn.events]
    assert stages.index("llm.tool_call") < stages.index("tool.result") < stages.index("tts.chunk")
    call = next(e for e in turn.events if e.stage == "llm.tool_call")
    res = next(e for e in turn.events if e.stage == "tool.result")
    assert call.request_id == turn.request_id == res.request_id
    assert call.data["call_id"] == res.data["call_id"] and res.data["ok"] and res.data["ms"] >= 0
    assert "SHIPPED-42" in turn.answer                        # the model read the result and said it
    spoken = "".join(e.text for e in turn.events if e.stage in ("llm.token", "llm.sentence", "tts.chunk"))
    assert call.data["arguments"] not in spoken               # arguments never reach TTS
    assert turn.audio is not None and turn.tool_calls[0]["result"] == "SHIPPED-42"
    # the LLM saw the tool's schema, the call and the result
    msgs = pipe.llm.last_messages
    assert msgs[-2]["tool_calls"][0]["function"]["name"] == "order_status"
    assert msgs[-1] == {"role": "tool", "tool_call_id": call.data["call_id"], "content": "SHIPPED-42"}


def test_client_tool_call_ends_the_turn_and_resume_goes_on_from_its_result():
    """A client tool (e.g. a Realtime client's) is offered but not run: the turn ends with the call
    pending (history keeps it); the caller's result + turn(resume=True) -> the spoken answer."""
    pipe = _pipe()
    ran: list[str] = []

    @pipe.tool
    def current_time() -> str:
        """The current time."""
        ran.append("server")
        return "noon"

    pipe.client_tools = [{"type": "function", "function": {
        "name": "order_status", "description": "Status of an order.",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}}}]
    turn = pipe.run(text="What is the order status of my order?")
    [call] = turn.pending_calls
    assert call["name"] == "order_status" and json.loads(call["arguments"])["order"] and not turn.answer
    assert turn.audio is None and not ran and not turn.tool_calls      # not run here, nothing spoken
    ev = next(e for e in turn.events if e.stage == "llm.tool_call")
    assert ev.data["client"] is True and ev.data["call_id"] == call["id"]
    assert [e.stage for e in turn.events][-1] == "turn.done" and turn.usage["completion_tokens"] > 0
    assert [m["role"] for m in pipe.history] == ["user", "assistant"]
    assert pipe.history[-1]["tool_calls"][0]["id"] == call["id"]
    pipe.history.append({"role": "tool", "tool_call_id": call["id"], "content": "SHIPPED-42"})
    events: list = []
    turn2 = pipe.turn(events.append, resume=True)
    assert "SHIPPED-42" in turn2.answer and turn2.audio is not None and not turn2.pending_calls
    assert pipe.llm.last_messages[-1] == {"role": "tool", "tool_call_id": call["id"], "content": "SHIPPED-42"}
    assert [m["role"] for m in pipe.history] == ["user", "assistant", "tool", "assistant"]
    # history is trimmed by whole exchanges: a call and its result are never cut apart
    pipe.history_turns = 1
    pipe.run(text="Hello there.")
    assert [m["role"] for m in pipe.history] == ["user", "assistant"]


def test_tool_errors_and_timeouts_go_back_to_the_model():
    def order_status(order: str) -> str:
        """Status of an order."""
        raise KeyError("no such order")

    turn = _pipe(tools=[order_status]).run(text="order status please", speak=False)
    res = next(e for e in turn.events if e.stage == "tool.result")
    assert not res.data["ok"] and "KeyError" in res.data["error"]
    assert "no such order" in turn.answer and not turn.error    # the model explains; the turn goes on

    async def order_status_slow(order: str) -> str:
        await asyncio.sleep(10)
        return "never"

    order_status_slow.__name__ = "order_status"
    t0 = time.perf_counter()
    turn = _pipe(tools=[order_status_slow], tool_timeout=0.2).run(text="order status please", speak=False)
    res = next(e for e in turn.events if e.stage == "tool.result")
    assert res.data["timed_out"] and "timed out" in turn.answer
    assert time.perf_counter() - t0 < 5


def test_max_tool_calls_per_turn():
    calls: list[int] = []

    def order_status(order: str) -> str:
        """Status of an order."""
        calls.append(1)
        return "pending"

    class Greedy(MockLLM):  # calls the tool on every round it is allowed to
        def _tool_call(self, messages, tools, tool_choice):
            return None if tool_choice == "none" else ("order_status", '{"order": "1"}')

    s = Settings.load(environ={}, use_dotenv=False, profile="mock")
    pipe = VoicePipeline(llm=Greedy(), tts=None, settings=s, tools=[order_status], max_tool_calls=2)
    turn = pipe.run(text="status", speak=False)
    assert len(calls) == 2 and [e.stage for e in turn.events].count("llm.tool_call") == 2
    assert turn.answer and not turn.error


def test_barge_in_during_a_tool_call_cancels_it():
    started = threading.Event()
    cancelled: list[bool] = []

    async def order_status(order: str) -> str:
        """Status of an order."""
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "never"

    pipe = _pipe(tools=[order_status], tool_timeout=60)
    result: list = []
    t = threading.Thread(target=lambda: result.append(pipe.run(text="order status", request_id="r1")))
    t.start()
    assert started.wait(10)
    t0 = time.perf_counter()
    pipe.cancel("r1")                                    # what VoiceSession does on barge-in
    t.join(10)
    assert not t.is_alive() and time.perf_counter() - t0 < 2.0
    turn = result[0]
    assert turn.cancelled and not turn.answer
    assert next(e for e in turn.events if e.stage == "tool.result").data["cancelled"]
    assert "tts.chunk" not in [e.stage for e in turn.events]
    assert pipe.history == []                            # a cancelled turn is not remembered


def test_no_tools_means_no_tool_arguments_passed():
    class Plain:  # a plugged-in LLM that knows nothing of tools
        provider, is_mock = "plain", False

        def stream_chat(self, messages, *, max_tokens=None, temperature=None, cancel=None):
            from spark_voice.backends.base import LlmDelta
            yield LlmDelta("Hello.")

    def order_status(order: str) -> str:
        """Status."""
        return "x"

    turn = _pipe(tools=[order_status]).__class__(llm=Plain(), settings=Settings.load(
        environ={}, use_dotenv=False, profile="mock"), tools=[order_status]).run(text="order status", speak=False)
    assert turn.answer == "Hello." and not turn.tool_calls


def test_readme_tools_example_runs_on_the_mock_profile(monkeypatch, tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Tools"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 20
    monkeypatch.setenv("SPARK_VOICE_PROFILE", "mock")
    monkeypatch.setenv("RAG_INDEX_PATH", str(tmp_path / "none.bin"))
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code.replace("今何時？", "What is the current time? "), "README-tools", "exec"), ns)
    turn, pipe = ns["turn"], ns["pipe"]
    assert sorted(pipe.tools.tools) == ["current_time", "order_status"]   # no index: no search_documents
    assert turn.tool_calls and turn.tool_calls[0]["name"] == "current_time" and turn.answer
