"""The real LLM backend (llama-cpp-python) on SmolLM2-135M-Instruct (ChatML), 2 threads."""

from __future__ import annotations

import re
import sys
import threading

import pytest

from conftest import model_file, need_module
from spark_voice.backends.chat_format import StopStrings
from spark_voice.backends.llm_llama_cpp import LlamaCppLLM
from spark_voice.errors import ContextOverflow, MissingDependency, ModelNotFound

QUESTION = [{"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


@pytest.fixture(scope="module")
def path(dev_settings):
    need_module("llama_cpp", "llm")
    return model_file(dev_settings, "llm")


@pytest.fixture(scope="module")
def llm(dev_settings, path):
    m = LlamaCppLLM.from_settings(dev_settings)
    m.load()
    yield m
    m.close()


@pytest.fixture(scope="module")
def small_ctx(path):
    m = LlamaCppLLM(path, n_ctx=256, n_threads=2, backend="cpu", max_tokens=32, temperature=0.0)
    yield m
    m.close()


def test_settings_map_to_engine(llm, dev_settings):
    assert llm.n_ctx == dev_settings.llm_ctx_size and llm.llm.n_ctx() == dev_settings.llm_ctx_size
    assert llm.llm.context_params.n_threads == 2 and llm.llm.context_params.n_threads_batch == 2
    assert llm.n_gpu_layers == 0 and llm.flash_attn is False      # dev profile: BACKEND=cpu
    assert not llm.is_harmony
    assert llm.endpoint == f"inproc:llama_cpp:{llm.model_path}@cpu"
    assert "<|im_start|>" in llm.render(QUESTION)
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]}]
    assert "<|im_start|>user\nHello there<|im_end|>" in llm.render(parts)     # OpenAI content parts


def test_answers_a_question(llm):
    deltas = list(llm.stream_chat(QUESTION, max_tokens=48, temperature=0.0))
    text = "".join(d.text for d in deltas).strip()
    assert len(deltas) >= 3                                      # streamed token by token
    assert all(d.channel == "final" for d in deltas)
    assert len(re.findall(r"[A-Za-z]+", text)) >= 3, text       # a real sentence, not an echo
    assert "<|im_" not in text and "<|endoftext|>" not in text   # ChatML delimiters never leak
    assert llm.last_stats["finish_reason"] in ("stop", "length")
    assert llm.last_stats["completion_tokens"] >= len(deltas) - 1


def test_cancel_stops_early(llm):
    cancel = threading.Event()
    got = []
    for d in llm.stream_chat(STORY, max_tokens=200, temperature=0.0, cancel=cancel):
        got.append(d)
        if len(got) == 3:
            cancel.set()
    assert len(got) == 3
    assert llm.last_stats["finish_reason"] == "cancelled"
    assert llm.last_stats["completion_tokens"] == 3
    pre = threading.Event()
    pre.set()
    assert list(llm.stream_chat(STORY, cancel=pre)) == []


def test_max_tokens(llm):
    list(llm.stream_chat(STORY, max_tokens=5, temperature=0.0))
    assert llm.last_stats["completion_tokens"] == 5 and llm.last_stats["finish_reason"] == "length"


def test_probe_and_health(llm):
    llm.probe()
    info = llm.info()
    assert info.loaded and info.ready and not info.is_mock and info.device == "cpu"
    assert info.warnings == []


def test_history_trimmed_oldest_first(small_ctx):
    history = []
    for i in range(12):
        history += [{"role": "user", "content": f"Question number {i}: tell me about topic {i} please."},
                    {"role": "assistant", "content": f"Answer number {i}: topic {i} is interesting indeed."}]
    msgs = [{"role": "system", "content": "SYSTEM-MARK be brief."}, *history,
            {"role": "user", "content": "LAST-MARK what was topic 11?"}]
    tokens, dropped = small_ctx.fit(msgs, 32)
    assert dropped > 0 and dropped % 2 == 0 and len(tokens) + 32 <= 256
    prompt = small_ctx.llm.detokenize(tokens, special=True).decode()
    assert "SYSTEM-MARK" in prompt and "LAST-MARK" in prompt
    assert "Question number 11" in prompt and "Answer number 11" in prompt      # newest turn kept
    assert "Question number 0:" not in prompt                                    # oldest dropped
    kept = [int(n) for n in re.findall(r"Question number (\d+)", prompt)]
    assert kept == list(range(12 - len(kept), 12))                               # a suffix of history
    deltas = list(small_ctx.stream_chat(msgs, max_tokens=32))
    assert small_ctx.last_stats["dropped_messages"] == dropped
    assert small_ctx.last_stats["prompt_tokens"] == len(tokens) and deltas


def test_oversized_prompt_is_a_clear_error(small_ctx):
    msgs = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(ContextOverflow, match=r"needs \d+ tokens.*32 more.*holds 256"):
        list(small_ctx.stream_chat(msgs, max_tokens=32))
    with pytest.raises(ContextOverflow):             # max_tokens alone exceeds the context
        list(small_ctx.stream_chat([{"role": "user", "content": "hi"}], max_tokens=300))
    assert list(small_ctx.stream_chat([{"role": "user", "content": "Hi"}], max_tokens=3))  # still usable


def test_one_generation_at_a_time_and_health_never_blocks(llm):
    first = llm.stream_chat(STORY, max_tokens=100, temperature=0.0)
    next(first)                                      # generation 1 holds the engine
    done = threading.Event()
    result: list = []

    def second():
        result.extend(llm.stream_chat(QUESTION, max_tokens=8, temperature=0.0))
        done.set()

    t = threading.Thread(target=second, daemon=True)
    t.start()
    infos: list = []
    checker = threading.Thread(target=lambda: (infos.append(llm.info()), llm.probe(), infos.append(True)),
                               daemon=True)      # health check + readiness probe while generating:
    checker.start()                                  # generation 1 never ends unless closed, so a
    checker.join(60)                                 # call that queued behind it would hang here
    assert not checker.is_alive() and len(infos) == 2 and infos[0].loaded
    assert not done.wait(0.3)                        # the second generation waits ...
    first.close()                                    # ... until the first one ends
    assert done.wait(60) and result


def test_stop_strings_split_anywhere():
    for text in ["Paris.<|im_end|>junk", "Paris.<|im_start|>user"]:
        for i in range(len(text)):
            s = StopStrings(["<|im_end|>", "<|im_start|>"])
            out = s.push(text[:i]) + s.push(text[i:])
            assert out == "Paris." and s.hit
    s = StopStrings(["<|im_end|>"])
    assert s.push("a <|im") == "a " and s.flush() == "<|im"


def test_missing_model_and_missing_binding(tmp_path, monkeypatch, path):
    with pytest.raises(ModelNotFound, match="models prepare --small"):
        LlamaCppLLM(tmp_path / "nope.gguf", backend="cpu").load()
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(MissingDependency, match=r"spark-voice\[llm\]"):
        LlamaCppLLM(path, backend="cpu").load()


def test_cuda_without_gpu_build_warns(path):
    import llama_cpp

    m = LlamaCppLLM(path, backend="cuda", n_gpu_layers=-1)
    if llama_cpp.llama_supports_gpu_offload():
        assert m.device == "cuda" and m.warnings() == []
    else:
        assert m.device == "cpu" and "without GPU offload" in m.warnings()[0]
        assert m.endpoint.endswith("@cpu")


def test_pipeline_answers_text_with_real_llm(llm, dev_settings):
    from spark_voice.backends.mock import MockSTT, MockTTS
    from spark_voice.pipeline import VoicePipeline

    llm.max_tokens = 40
    pipe = VoicePipeline(stt=MockSTT(), llm=llm, tts=MockTTS(), settings=dev_settings, language="en")
    turn = pipe.run(text="What is the capital of France?")
    assert not turn.error and len(turn.answer.split()) >= 2
    assert not turn.answer.startswith("You said")                               # not the mock echo
    stages = [e.stage for e in turn.events]
    assert stages.count("llm.token") >= 3 and "tts.chunk" in stages and stages[-1] == "turn.done"
    assert turn.audio is not None and turn.audio.duration > 0
    assert turn.latencies["first_token"] > 0
    assert pipe.history[-1] == {"role": "assistant", "content": turn.answer}   # multi-turn memory
    turn2 = pipe.run(text="And of Germany?", speak=False)
    assert turn2.answer and not turn2.error


# ---------------------------------------------------------------------------------------------
# tools on SmolLM2: its template has no tool format, so the functions are described in the
# system message and calls are <tool_call> JSON; required / named choices use a grammar
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                                        "days": {"type": "integer", "minimum": 1}},
                       "required": ["city", "days"]}}},
    {"type": "function", "function": {
        "name": "current_time", "description": "The current time.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "enum": ["Asia/Tokyo", "UTC"]}},
                       "required": ["timezone"]}}},
]
WEATHER = [{"role": "user", "content": "What is the weather in Paris for the next 2 days?"}]


def _calls(deltas):
    calls = {}
    for d in deltas:
        if d.kind == "tool_call":
            calls.setdefault((d.index, d.tool_name), []).append(d.text)
    return {name: "".join(v) for (_, name), v in calls.items()}


def test_prompted_tool_format_renders_calls_and_results(llm):
    import json

    assert llm.tool_format == "prompted"
    msgs = WEATHER + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "rain"}]
    prompt = llm.render(msgs, TOOLS)
    assert '"name": "get_weather"' in prompt and "<tool_call>" in prompt         # the functions, described
    assert ('<|im_start|>assistant\n<tool_call>' + json.dumps({"name": "get_weather", "arguments":
                                                               {"city": "Paris", "days": 2}})) in prompt
    assert "<|im_start|>tool\n<tool_response>rain</tool_response><|im_end|>" in prompt


@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "get_weather"}}, "required"])
def test_grammar_constrained_call(llm, choice):
    import json

    stats: dict = {}
    deltas = list(llm.stream_chat(WEATHER, tools=TOOLS, tool_choice=choice, max_tokens=60, temperature=0.0,
                                  stats=stats))
    calls = _calls(deltas)
    assert len(calls) == 1 and not any(d.kind == "text" and d.text.strip() for d in deltas)
    (name, args), = calls.items()
    a = json.loads(args)
    if name == "get_weather":
        assert set(a) == {"city", "days"} and len(a["city"]) <= 12 and isinstance(a["days"], int) and a["days"] >= 1
    else:
        assert choice == "required" and a["timezone"] in ("Asia/Tokyo", "UTC")
    assert stats["finish_reason"] == "tool_calls" and stats["completion_tokens"] > 3


def test_tool_call_text_found_at_any_split():
    from spark_voice.backends.chat_format import ToolText

    cases = [("Sure. <tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}</tool_call>", "Sure. ", 1),
             ("  {\"name\": \"f\", \"parameters\": {\"x\": 1}}", "", 1),
             ("Use <tool to call", "Use <tool to call", 0),
             ("{not a call}", "{not a call}", 0)]
    for text, before, n in cases:
        for i in range(len(text) + 1):
            t = ToolText()
            out = t.push(text[:i]) + t.push(text[i:])
            rest, calls = t.finish()
            assert (out + rest).strip() == before.strip() and len(calls) == n, (text, i)
            if n:
                assert calls[0].name == "f" and '"x": 1' in calls[0].arguments


def test_dev_profile_voice_turn_calls_a_tool_and_speaks_the_answer(llm, dev_settings):
    """Dev profile end to end: spoken question (whisper) -> SmolLM2 calls a Python tool (grammar,
    tool_choice="required") -> the result goes back -> the answer is spoken by the real TTS."""
    need_module("pywhispercpp", "stt")
    from conftest import synthesize
    from spark_voice.backends.registry import build
    from spark_voice.pipeline import VoicePipeline

    asked: list[str] = []

    def get_weather(city: str, days: int) -> str:
        """Weather forecast of a city.

        Args:
            city: The city.
            days: Number of days.
        """
        asked.append(city)
        return "Sunny and 25 degrees."

    llm.max_tokens = 40
    s = dev_settings
    stt, tts = build("stt", s), build("tts", s)
    pipe = VoicePipeline(stt, llm, tts, settings=s, language="en", tools=[get_weather], tool_choice="required",
                         max_tool_calls=1)
    try:
        turn = pipe.run(synthesize("What is the weather in Paris tomorrow?", "en"))
    finally:
        stt.close()
        tts.close()
    assert not turn.error and "weather" in turn.transcript.lower()
    assert len(asked) == 1 and turn.tool_calls[0]["name"] == "get_weather"
    call = next(e for e in turn.events if e.stage == "llm.tool_call")
    stages = [e.stage for e in turn.events]
    assert stages.index("llm.tool_call") < stages.index("tool.result") < stages.index("turn.done")
    assert turn.answer and turn.audio is not None and turn.audio.duration > 0.3
    spoken = "".join(e.text for e in turn.events if e.stage in ("llm.sentence", "tts.chunk"))
    assert call.data["arguments"] not in spoken and '"city"' not in spoken
    assert pipe.llm is llm and pipe.history[-1]["content"] == turn.answer


def test_auto_call_json_follows_the_schema_after_tool_call_tag(llm):
    """tool_choice auto: once the model writes <tool_call>, the JSON after it is grammar-constrained."""
    import json

    import numpy as np

    tag = llm.llm.tokenize(b"<tool_call>", add_bos=False, special=True)
    start: list[int] = []

    def proc(input_ids, scores):  # the model "decides" to call: it writes the tag, then is free
        if not start:
            start.append(len(input_ids))
        i = len(input_ids) - start[0]
        if i >= len(tag):
            return scores
        out = np.full_like(scores, -1e9)
        out[tag[i]] = 0.0
        return out

    stats: dict = {}
    deltas = list(llm.stream_chat(WEATHER, tools=TOOLS, max_tokens=60, temperature=0.0, logits_processor=proc,
                                  stats=stats))
    calls = _calls(deltas)
    assert len(calls) == 1 and stats["finish_reason"] == "tool_calls", deltas
    (name, args), = calls.items()
    a = json.loads(args)
    assert name in ("get_weather", "current_time") and isinstance(a, dict)
    assert "<tool_call>" not in "".join(d.text for d in deltas if d.kind == "text")
