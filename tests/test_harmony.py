"""gpt-oss harmony: the incremental channel parser on recorded harmony strings split at every
possible boundary, and the real llama.cpp backend on a tiny random-weight gpt-oss GGUF."""

from __future__ import annotations

import itertools
import json
import re
import threading

import numpy as np
import pytest

from conftest import need_module
from spark_voice.harmony import HarmonyParser, is_harmony_metadata, merge, parse, text_tokens

# ---------------------------------------------------------------------------------------------
# recorded strings: (generated text after the prompt's "<|start|>assistant", expected deltas,
#                    expected stop marker)
ANALYSIS_FINAL = (
    "<|channel|>analysis<|message|>User asks capital of France. Answer briefly.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>The capital of France is Paris.<|return|>",
    [("analysis", "User asks capital of France. Answer briefly."),
     ("final", "The capital of France is Paris.")],
    "<|return|>",
)
TOOL_CALL = (
    "<|channel|>analysis<|message|>Need the weather; call the tool.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    "<|message|>{\"location\":\"Tokyo\"}<|call|>",
    [("analysis", "Need the weather; call the tool."), ("functions.get_weather", "{\"location\":\"Tokyo\"}")],
    "<|call|>",
)
PREAMBLE_JA = (
    "<|channel|>commentary<|message|>確認します。<|end|>"
    "<|start|>assistant<|channel|>analysis<|message|>a < b and x<|y are literal text<|end|>"
    "<|start|>assistant<|channel|>final<|message|>東京は晴れです。<|end|>"
    "<|start|>assistant<|channel|>final<|message|> Bye.<|return|>ignored after return",
    [("commentary", "確認します。"), ("analysis", "a < b and x<|y are literal text"),
     ("final", "東京は晴れです。 Bye.")],
    "<|return|>",
)
UNFINISHED = (  # stopped by max_tokens: no stop marker; held-back text comes out on finish()
    "<|channel|>final<|message|>Counting: 1 < 2 <",
    [("final", "Counting: 1 < 2 <")],
    "",
)
PREAMBLE_TOOL = (  # the chat template's own way of writing a call: recipient first, "json" after the channel
    "<|channel|>analysis<|message|>Need the time.<|end|>"
    "<|start|>assistant<|channel|>commentary<|message|>Let me check.<|end|>"
    "<|start|>assistant to=functions.current_time<|channel|>commentary json<|message|>{\"timezone\": \"Asia/Tokyo\"}"
    "<|call|>",
    [("analysis", "Need the time."), ("commentary", "Let me check."),
     ("functions.current_time", "{\"timezone\": \"Asia/Tokyo\"}")],
    "<|call|>",
)
HEADERLESS = ("Just text, 東京.", [("final", "Just text, 東京.")], "")
RECORDED = [ANALYSIS_FINAL, TOOL_CALL, PREAMBLE_JA, UNFINISHED, PREAMBLE_TOOL, HEADERLESS]


def _tokens(text: str, cuts: tuple[int, ...] = ()) -> list[tuple[int, bytes]]:
    """`text` as a token stream: markers are special ids, ordinary text one token per run, split
    further at the given byte offsets (counted over the ordinary bytes only)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    for tok, piece in text_tokens(text):
        if tok != -1:
            out.append((tok, piece))
            continue
        inner = sorted(c - pos for c in cuts if pos < c < pos + len(piece))
        for s, e in zip([0, *inner], [*inner, len(piece)]):
            out.append((-1, piece[s:e]))
        pos += len(piece)
    return out


def _run(tokens: list[tuple[int, bytes]], in_header: bool = True) -> tuple[list[tuple[str, str]], HarmonyParser]:
    """Runs of (channel, text); a tool call's run is named by its recipient instead."""
    p = HarmonyParser(in_header=in_header)
    deltas = p.feed_many(tokens) + p.finish()
    out: list[tuple[str, str]] = []
    for d in deltas:
        key = d.recipient or d.channel
        if out and out[-1][0] == key:
            out[-1] = (key, out[-1][1] + d.text)
        else:
            out.append((key, d.text))
    finals = "".join(d.text for d in deltas if d.channel == "final")
    assert not any(d.recipient and d.channel == "final" for d in deltas)
    assert all(m.content not in finals for m in p.messages if m.recipient and m.content)  # args never final
    return out, p


def _ordinary_bytes(text: str) -> int:
    return sum(len(piece) for tok, piece in text_tokens(text) if tok == -1)


@pytest.mark.parametrize("text,expected,stop", RECORDED)
def test_whole_string(text, expected, stop):
    got, p = _run(_tokens(text))
    assert got == expected
    assert p.stop_marker == stop and p.done == bool(stop)
    assert "".join(t for _, t in parse(text)) == "".join(t for _, t in expected)   # the text-only helper


@pytest.mark.parametrize("text,expected,stop", RECORDED)
def test_every_two_way_split(text, expected, stop):
    for i in range(1, _ordinary_bytes(text)):   # inside words, inside UTF-8 characters, in headers
        got, p = _run(_tokens(text, (i,)))
        assert got == expected, i
        assert p.stop_marker == stop


@pytest.mark.parametrize("text,expected,stop", [ANALYSIS_FINAL, TOOL_CALL])
def test_every_three_way_split(text, expected, stop):
    n = _ordinary_bytes(text)
    for i, j in itertools.combinations(range(1, n), 2):
        got, _ = _run(_tokens(text, (i, j)))
        assert got == expected, (i, j)


@pytest.mark.parametrize("text,expected,stop", RECORDED)
def test_byte_by_byte(text, expected, stop):
    got, p = _run(_tokens(text, tuple(range(1, _ordinary_bytes(text)))))
    assert got == expected
    assert p.stop_marker == stop


def test_deltas_carry_the_message_header_and_stream_before_it_ends():
    p = HarmonyParser()
    ids = {v: k for k, v in p.specials.items()}
    assert p.feed_many(_tokens("<|channel|>final<|message|>")) == []
    [d] = p.feed(-1, b"Hel")
    assert (d.text, d.channel, d.recipient, d.index) == ("Hel", "final", "", 0)
    assert p.feed(-1, b"\xe6\x9d") == []                  # half a UTF-8 character is held back
    assert p.feed(-1, b"\xb1")[0].text == "東"
    assert p.feed(ids["<|end|>"]) == [] and not p.done     # <|end|> ends the message, not the turn
    p.feed_many(_tokens("<|start|>assistant to=functions.lookup<|channel|>commentary json<|message|>"))
    [d] = p.feed(-1, b'{"q":')
    assert (d.channel, d.recipient, d.content_type, d.index) == ("commentary", "functions.lookup", "json", 1)
    p.feed(ids["<|call|>"])
    assert p.done and p.stop == "call" and p.stop_marker == "<|call|>"
    [call] = p.tool_calls
    assert call.content == '{"q":' and call.end == "<|call|>" and not call.is_final


def test_a_recipient_makes_a_message_non_final_whatever_its_channel():
    for text in ["<|start|>assistant to=functions.x<|constrain|>json<|message|>{\"a\":1}<|call|>",
                 " to=functions.x<|constrain|>json<|message|>{\"a\":1}<|call|>",
                 "<|channel|>final to=functions.x<|message|>{\"a\":1}<|call|>",
                 " to=functions.x<|message|>{\"a\":1}<|call|>"]:
        p = HarmonyParser()
        deltas = p.feed_many(_tokens(text)) + p.finish()
        assert deltas and all(d.recipient == "functions.x" for d in deltas), text
        assert not any(m.is_final for m in p.messages)
        assert p.tool_calls[0].content == '{"a":1}'


def test_a_user_turn_after_the_answer_is_never_spoken():
    text = ("<|channel|>final<|message|>Paris.<|end|><|start|>user<|message|>Now say something rude<|end|>"
            "<|start|>assistant<|channel|>final<|message|>rude<|return|>")
    for i in range(1, _ordinary_bytes(text)):
        got, p = _run(_tokens(text, (i,)))
        assert got == [("final", "Paris.")], i
        assert p.done and p.stop == "role"
    got, p = _run(_tokens("<|channel|>final<|message|>Hi<|end|><|start|>functions.x to=assistant<|channel|>"
                          "commentary<|message|>{}<|end|>"))
    assert got == [("final", "Hi")] and p.stop == "role"


def test_output_without_a_header_is_final_with_a_warning():
    for text in ["Hello there, no header.", "to"]:
        got, p = _run(_tokens(text))
        assert got == [("final", text)] and p.warnings
    got, p = _run(_tokens(" to=functions.x something"))     # an unfinished tool header: nothing spoken
    assert got == []
    got, p = _run(_tokens("<|message|>no channel<|return|>"))
    assert got == [("final", "no channel")] and p.warnings


def test_markers_written_as_text_are_text():
    # the model wrote "<|end|>" with ordinary tokens: it neither ends the message nor vanishes
    tokens = _tokens("<|channel|>final<|message|>")
    tokens += [(-1, b"Type <|"), (-1, b"end|> to stop, or <|foo|>.")]
    tokens += _tokens("<|return|>")
    got, p = _run(tokens)
    assert got == [("final", "Type <|end|> to stop, or <|foo|>.")]
    # an unknown special token id is dropped
    p = HarmonyParser({**HarmonyParser().specials})
    got = merge(p.feed_many(_tokens("<|channel|>final<|message|>a")) + p.feed(999_999_999, b"")
                + p.feed(-1, b"b"))
    assert got == [("final", "ab")]


def test_header_text_never_emitted_and_unknown_channel_is_not_final():
    got, _ = _run(_tokens("<|channel|>secret<|message|>hidden<|end|><|start|>assistant<|channel|>final"
                          "<|message|>shown<|return|>"))
    assert got == [("analysis", "hidden"), ("final", "shown")]


def test_detection_from_metadata():
    assert is_harmony_metadata({"general.architecture": "gpt-oss"})
    assert is_harmony_metadata({"general.architecture": "llama",
                                "tokenizer.chat_template": "{{'<|start|>assistant<|channel|>final'}}"})
    assert not is_harmony_metadata({"general.architecture": "llama",
                                    "tokenizer.chat_template": "<|im_start|>assistant\n"})


# ---------------------------------------------------------------------------------------------
# the real backend on a tiny random gpt-oss GGUF
MESSAGES = [{"role": "system", "content": "You are a terse voice assistant."},
            {"role": "user", "content": "Hello, what is the weather today?"}]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    need_module("gguf", "convert")
    need_module("llama_cpp", "llm")
    from spark_voice.backends.llm_llama_cpp import LlamaCppLLM
    from tiny_gptoss import build_tiny_gptoss

    path = build_tiny_gptoss(tmp_path_factory.mktemp("gptoss") / "tiny-gpt-oss.gguf")
    llm = LlamaCppLLM(path, n_ctx=2048, n_threads=2, backend="cpu", reasoning_effort="high",
                      temperature=0.8, seed=7, max_tokens=32)
    llm.load()
    yield llm
    llm.close()


def _ids(llm, text: str) -> list[int]:
    return llm.llm.tokenize(text.encode(), add_bos=False, special=True)


def forcing(seq: list[int], then: int | None = None):
    """A logits processor that forces `seq` (then `then`, or free sampling) after the prompt."""
    start: list[int] = []

    def proc(input_ids, scores):
        if not start:
            start.append(len(input_ids))
        i = len(input_ids) - start[0]
        target = seq[i] if i < len(seq) else then
        if target is None:
            return scores
        out = np.full_like(scores, -1e9)
        out[target] = 0.0
        return out
    return proc


def test_tiny_gptoss_detected_and_template_gets_reasoning_effort(tiny):
    assert tiny.is_harmony
    assert tiny.metadata["general.architecture"] == "gpt-oss"
    prompt = tiny.render(MESSAGES)
    assert "Reasoning: high" in prompt
    assert "# Instructions\n\nYou are a terse voice assistant." in prompt
    assert prompt.endswith("<|start|>user<|message|>Hello, what is the weather today?<|end|><|start|>assistant")
    assert tiny.tokenize(prompt).count(_ids(tiny, "<|start|>")[0]) == 4


def test_end_is_not_a_stop_token_but_return_and_call_are(tiny):
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(tiny.llm.model)
    eog = {t: llama_cpp.llama_vocab_is_eog(vocab, _ids(tiny, t)[0]) for t in ("<|end|>", "<|return|>", "<|call|>")}
    assert eog == {"<|end|>": False, "<|return|>": True, "<|call|>": True}


def test_streams_max_tokens_without_channels(tiny):
    # random weights never write harmony markers: header-less text is the answer, with a warning
    deltas = list(tiny.stream_chat(MESSAGES, max_tokens=12))
    assert tiny.last_stats["completion_tokens"] == 12
    assert tiny.last_stats["finish_reason"] == "length"
    assert deltas and all(d.channel == "final" and d.kind == "text" for d in deltas)
    assert "without a message header" in tiny.last_stats["harmony_warnings"][0]


def test_channels_streamed_and_end_does_not_stop(tiny):
    seq = _ids(tiny, "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>")
    deltas = list(tiny.stream_chat(MESSAGES, max_tokens=len(seq) + 10, logits_processor=forcing(seq)))
    analysis = "".join(d.text for d in deltas if d.channel == "analysis")
    final = [d.text for d in deltas if d.channel == "final"]
    assert analysis == "think"
    assert len(final) >= 5 and "".join(final)          # went on after <|end|>, in the final channel
    assert tiny.last_stats["completion_tokens"] == len(seq) + 10
    assert tiny.last_stats["finish_reason"] == "length"


def test_forced_return_stops(tiny):
    seq = _ids(tiny, "<|channel|>final<|message|>Hello you")
    ret = _ids(tiny, "<|return|>")[0]
    deltas = list(tiny.stream_chat(MESSAGES, max_tokens=30, logits_processor=forcing(seq, then=ret)))
    assert "".join(d.text for d in deltas if d.channel == "final") == "Hello you"
    assert tiny.last_stats["finish_reason"] == "stop"
    assert tiny.last_stats["completion_tokens"] == len(seq)


def test_cancel_mid_stream(tiny):
    seq = _ids(tiny, "<|channel|>final<|message|>")
    cancel = threading.Event()
    got = []
    for d in tiny.stream_chat(MESSAGES, max_tokens=200, cancel=cancel, logits_processor=forcing(seq)):
        got.append(d)
        if len(got) == 3:
            cancel.set()
    assert len(got) == 3
    assert tiny.last_stats["finish_reason"] == "cancelled"
    assert tiny.last_stats["completion_tokens"] < 20


def test_pipeline_speaks_only_the_final_channel(tiny):
    from spark_voice.backends.mock import MockTTS
    from spark_voice.config import Settings
    from spark_voice.pipeline import VoicePipeline

    seq = _ids(tiny, "<|channel|>analysis<|message|>secret plan<|end|><|start|>assistant<|channel|>final"
                     "<|message|>Hello you.")
    ret = _ids(tiny, "<|return|>")[0]

    class Steered:  # the real backend, steered into harmony output
        provider, is_mock = "llama_cpp", False

        def stream_chat(self, messages, **kw):
            return tiny.stream_chat(messages, logits_processor=forcing(seq, then=ret), **kw)

    s = Settings.load(environ={}, use_dotenv=False, profile="mock", LLM_EMIT_ANALYSIS="true")
    turn = VoicePipeline(llm=Steered(), tts=MockTTS(), settings=s).run(text="Hi there")
    assert turn.answer == "Hello you."
    assert turn.analysis == "secret plan"
    tokens = [e for e in turn.events if e.stage == "llm.token"]
    assert tokens and all(e.data.get("channel") == "final" for e in tokens)
    assert "secret" not in "".join(e.text for e in turn.events if e.stage in ("llm.token", "llm.sentence",
                                                                               "tts.chunk"))
    assert any(e.stage == "llm.analysis" for e in turn.events)
    # time to first token counts the first *final* token, after the analysis deltas
    first_final = next(e.t for e in turn.events if e.stage == "llm.token")
    first_any = next(e.t for e in turn.events if e.stage == "llm.analysis")
    assert first_any <= first_final and turn.latencies["first_token"] > 0


# ---------------------------------------------------------------------------------------------
# tools on the tiny gpt-oss: the real chat template, token ids from the GGUF vocabulary, grammars
TOOLS = [
    {"type": "function", "function": {
        "name": "current_time", "description": "The current time.",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "enum": ["Asia/Tokyo", "UTC"]}},
                       "required": ["timezone"]}}},
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city.",
        "parameters": {"type": "object",
                       "properties": {"city": {"type": "string", "maxLength": 8},
                                      "days": {"type": "integer", "minimum": 1, "maximum": 7},
                                      "metric": {"type": "boolean"}},
                       "required": ["city", "days", "metric"], "additionalProperties": False}}},
]
CALL_SEQ = ("<|channel|>analysis<|message|>Need the time.<|end|>"
            "<|start|>assistant<|channel|>commentary<|message|>確認します。Let me check.<|end|>"
            "<|start|>assistant to=functions.current_time<|channel|>commentary <|constrain|>json"
            "<|message|>{\"timezone\":\"Asia/Tokyo\"}")
CALL_ARGS = '{"timezone":"Asia/Tokyo"}'


def _byte_ids(llm, text: str) -> list[int]:
    """`text` forced one byte per token (ordinary text; UTF-8 characters cut into their bytes),
    markers as their special tokens."""
    import ctypes

    buf = [ctypes.create_string_buffer(64)]
    by_byte: dict[int, int] = {}
    for i in range(llm.llm.n_vocab()):
        piece = llm._piece(i, False, buf)
        if len(piece) == 1:
            by_byte.setdefault(piece[0], i)
    out: list[int] = []
    for part in re.split(r"(<\|[a-z]+\|>)", text):
        if re.fullmatch(r"<\|[a-z]+\|>", part):
            out += _ids(llm, part)
        else:
            out += [by_byte[b] for b in part.encode()]
    return out


def _collect(deltas):
    spoken = "".join(d.text for d in deltas if d.spoken)
    args = {}
    for d in deltas:
        if d.kind == "tool_call":
            args.setdefault((d.index, d.tool_name), []).append(d.text)
    return spoken, {k[1]: "".join(v) for k, v in args.items()}


def test_template_renders_tools_calls_and_results(tiny):
    msgs = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "current_time",
                                                              "arguments": "{\"timezone\": \"Asia/Tokyo\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": "{\"city\": \"Tokyo\"}"}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]
    prompt = tiny.render(msgs, TOOLS)
    assert "namespace functions {" in prompt and "type current_time = (_: {" in prompt
    assert "Calls to these tools must go to the commentary channel: 'functions'." in prompt
    one = ('<|start|>assistant to=functions.current_time<|channel|>commentary json<|message|>'
           '{"timezone": "Asia/Tokyo"}<|call|><|start|>functions.current_time to=assistant<|channel|>commentary'
           '<|message|>"12:00"<|end|>')
    two = ('<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Tokyo"}'
           '<|call|><|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"sunny"<|end|>')
    assert one + two in prompt                        # each call followed by its own result
    assert prompt.endswith("<|start|>assistant")


@pytest.mark.parametrize("by_bytes", [False, True])
def test_forced_stream_analysis_preamble_tool_call(tiny, by_bytes):
    seq = _byte_ids(tiny, CALL_SEQ) if by_bytes else _ids(tiny, CALL_SEQ)
    call = _ids(tiny, "<|call|>")[0]
    stats: dict = {}
    deltas = list(tiny.stream_chat(MESSAGES, tools=TOOLS, max_tokens=len(seq) + 20,
                                   logits_processor=forcing(seq, then=call), stats=stats))
    spoken, calls = _collect(deltas)
    assert "".join(d.text for d in deltas if d.channel == "analysis") == "Need the time."
    assert spoken == "確認します。Let me check."                 # the preamble is for the user
    assert calls == {"current_time": CALL_ARGS}
    assert all(d.content_type == "json" for d in deltas if d.kind == "tool_call")
    assert CALL_ARGS not in spoken and "timezone" not in spoken
    assert stats["finish_reason"] == "tool_calls"
    assert stats["completion_tokens"] == len(seq)               # the engine's count (<|call|> not counted)
    assert stats["prompt_tokens"] == len(tiny.tokenize(tiny.render(MESSAGES, TOOLS)))


def test_every_split_of_the_arguments_through_the_engine(tiny):
    """The JSON arguments cut into two tokens at every byte: never spoken, always whole."""
    head = _ids(tiny, CALL_SEQ[: CALL_SEQ.index("{")])
    call = _ids(tiny, "<|call|>")[0]
    raw = CALL_ARGS.encode()
    for i in range(1, len(raw)):
        seq = head + _ids(tiny, raw[:i].decode()) + _ids(tiny, raw[i:].decode())   # two BPE runs cut at i
        deltas = list(tiny.stream_chat(MESSAGES, tools=TOOLS, max_tokens=len(seq) + 5,
                                       logits_processor=forcing(seq, then=call)))
        spoken, calls = _collect(deltas)
        assert calls == {"current_time": CALL_ARGS} and "{" not in spoken, i


def test_result_goes_back_and_final_is_spoken(tiny):
    msgs = MESSAGES + [
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "current_time", "arguments": CALL_ARGS}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"datetime\": \"2026-01-01T12:00:00+09:00\"}"}]
    seq = _ids(tiny, "<|channel|>final<|message|>It is noon.")
    ret = _ids(tiny, "<|return|>")[0]
    stats: dict = {}
    deltas = list(tiny.stream_chat(msgs, tools=TOOLS, logits_processor=forcing(seq, then=ret), stats=stats))
    spoken, calls = _collect(deltas)
    assert spoken == "It is noon." and calls == {} and stats["finish_reason"] == "stop"


def test_truncated_answer_reports_length_and_engine_counts(tiny):
    # many marker tokens before the answer: counting deltas would undercount and report "stop"
    seq = _ids(tiny, "<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>final<|message|>")
    stats: dict = {}
    deltas = list(tiny.stream_chat(MESSAGES, max_tokens=len(seq) + 4, logits_processor=forcing(seq), stats=stats))
    assert stats["finish_reason"] == "length"
    assert stats["completion_tokens"] == len(seq) + 4 > len(deltas)
    assert stats["prompt_tokens"] == len(tiny.tokenize(tiny.render(MESSAGES)))


def test_role_change_stops_generation(tiny):
    seq = _ids(tiny, "<|channel|>final<|message|>Paris.<|end|><|start|>user<|message|>more")
    stats: dict = {}
    deltas = list(tiny.stream_chat(MESSAGES, max_tokens=len(seq) + 20, logits_processor=forcing(seq), stats=stats))
    assert "".join(d.text for d in deltas if d.spoken) == "Paris."
    assert stats["finish_reason"] == "stop"
    assert stats["completion_tokens"] < len(seq) + 20          # stopped at the user header, not at max_tokens


def _check_args(name: str, args: str) -> None:
    a = json.loads(args)
    if name == "current_time":
        assert set(a) == {"timezone"} and a["timezone"] in ("Asia/Tokyo", "UTC")
    else:
        assert set(a) == {"city", "days", "metric"}
        assert isinstance(a["city"], str) and len(a["city"]) <= 8
        assert isinstance(a["days"], int) and isinstance(a["metric"], bool)


@pytest.mark.parametrize("choice", [{"type": "function", "function": {"name": "get_weather"}},
                                    {"type": "function", "function": {"name": "current_time"}}, "required"])
def test_grammar_makes_random_weights_call_with_valid_arguments(tiny, choice):
    for _ in range(2):
        stats: dict = {}
        deltas = list(tiny.stream_chat(MESSAGES, tools=TOOLS, tool_choice=choice, max_tokens=120, stats=stats))
        spoken, calls = _collect(deltas)
        assert spoken == "" and len(calls) == 1
        (name, args), = calls.items()
        if isinstance(choice, dict):
            assert name == choice["function"]["name"]
        _check_args(name, args)
        assert stats["finish_reason"] == "tool_calls"


def test_tool_choice_none_and_bad_choice(tiny):
    from spark_voice.tools import ToolError

    prompt = tiny.render(MESSAGES, [])
    list(tiny.stream_chat(MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=2))
    assert tiny.last_stats["prompt_tokens"] == len(tiny.tokenize(prompt))   # no tools offered
    with pytest.raises(ToolError):
        list(tiny.stream_chat(MESSAGES, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "x"}}))


def test_voice_turn_with_tool_on_tiny_gptoss(tiny):
    """A voice turn on the real engine: analysis, a spoken preamble, a Python tool, the spoken result."""
    from spark_voice.backends.mock import MockTTS
    from spark_voice.config import Settings
    from spark_voice.pipeline import VoicePipeline

    first = _ids(tiny, CALL_SEQ)
    call, ret = _ids(tiny, "<|call|>")[0], _ids(tiny, "<|return|>")[0]
    final = _ids(tiny, "<|channel|>final<|message|>It is noon in Tokyo.")

    class Steered:  # the real backend; the logits processor plays the model's part
        provider, is_mock, supports_tools = "llama_cpp", False, True

        def stream_chat(self, messages, **kw):
            after_tool = messages[-1]["role"] == "tool"
            proc = forcing(final, then=ret) if after_tool else forcing(first, then=call)
            return tiny.stream_chat(messages, logits_processor=proc, max_tokens=len(first) + 10, **kw)

    s = Settings.load(environ={}, use_dotenv=False, profile="mock")
    pipe = VoicePipeline(llm=Steered(), tts=MockTTS(), settings=s, language="en")
    got: list[str] = []

    @pipe.tool
    def current_time(timezone: str) -> str:
        """The current time."""
        got.append(timezone)
        return "12:00"

    turn = pipe.run(text="What time is it?")
    assert got == ["Asia/Tokyo"] and not turn.error, [(e.stage, e.text, e.data) for e in turn.events]
    assert turn.answer == "確認します。Let me check. It is noon in Tokyo."
    sentences = [e.text for e in turn.events if e.stage == "llm.sentence"]
    assert sentences[0].startswith("確認します") and sentences[-1] == "It is noon in Tokyo."
    spoken = "".join(e.text for e in turn.events if e.stage in ("llm.token", "llm.sentence", "tts.chunk"))
    assert "timezone" not in spoken and "Need the time" not in spoken
    stages = [e.stage for e in turn.events]
    assert stages.index("llm.tool_call") < stages.index("tool.result")
    first = next(e for e in turn.events if e.stage == "llm.token")
    assert first.data["channel"] == "commentary" and turn.latencies["first_token"] > 0   # the preamble counts


def test_auto_call_arguments_follow_the_schema(tiny):
    """tool_choice auto: the model opens a call by itself (forced header), its arguments are then
    generated under the function's grammar: random weights still write valid arguments."""
    head = _ids(tiny, "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>")
    for _ in range(3):
        stats: dict = {}
        deltas = list(tiny.stream_chat(MESSAGES, tools=TOOLS, max_tokens=120, logits_processor=forcing(head),
                                       stats=stats))
        spoken, calls = _collect(deltas)
        assert spoken == "" and list(calls) == ["get_weather"]
        _check_args("get_weather", calls["get_weather"])
        assert stats["finish_reason"] == "tool_calls"
    # tool_choice none: a call the model writes anyway is not reported
    stats = {}
    deltas = list(tiny.stream_chat(MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=40,
                                   logits_processor=forcing(head), stats=stats))
    assert not any(d.kind == "tool_call" for d in deltas) and stats["finish_reason"] != "tool_calls"
