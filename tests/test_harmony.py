"""gpt-oss harmony: the incremental channel parser on recorded harmony strings split at every
possible boundary, and the real llama.cpp backend on a tiny random-weight gpt-oss GGUF."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from conftest import need_module
from spark_voice.harmony import HarmonyParser, is_harmony_metadata, parse

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
    [("analysis", "Need the weather; call the tool."), ("commentary", "{\"location\":\"Tokyo\"}")],
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
RECORDED = [ANALYSIS_FINAL, TOOL_CALL, PREAMBLE_JA, UNFINISHED]


def _run(pieces: list[str], in_header: bool = True) -> tuple[list[tuple[str, str]], HarmonyParser]:
    p = HarmonyParser(in_header=in_header)
    out: list[tuple[str, str]] = []
    for piece in pieces:
        out += p.feed(piece)
    out += p.finish()
    merged: list[tuple[str, str]] = []
    for ch, t in out:
        if merged and merged[-1][0] == ch:
            merged[-1] = (ch, merged[-1][1] + t)
        else:
            merged.append((ch, t))
    return merged, p


@pytest.mark.parametrize("text,expected,stop", RECORDED)
def test_whole_string(text, expected, stop):
    got, p = _run([text])
    assert got == expected
    assert p.stop_marker == stop and p.done == bool(stop)
    assert parse(text) == expected


@pytest.mark.parametrize("text,expected,stop", RECORDED)
def test_every_two_way_split(text, expected, stop):
    for i in range(1, len(text)):
        got, p = _run([text[:i], text[i:]])
        assert got == expected, (i, text[:i])
        assert p.stop_marker == stop


@pytest.mark.parametrize("text,expected,stop", [ANALYSIS_FINAL, TOOL_CALL])
def test_every_three_way_split(text, expected, stop):
    n = len(text)
    for i, j in itertools.combinations(range(1, n), 2):
        got, _ = _run([text[:i], text[i:j], text[j:]])
        assert got == expected, (i, j)


@pytest.mark.parametrize("text,expected,stop", RECORDED)
def test_character_by_character(text, expected, stop):
    got, p = _run(list(text))
    assert got == expected
    assert p.stop_marker == stop


def test_deltas_stream_before_the_message_ends():
    p = HarmonyParser()
    assert p.feed("<|channel|>final<|message|>Hel") == [("final", "Hel")]
    assert p.feed("lo <|") == [("final", "lo ")]        # "<|" held back: may be a marker
    assert p.feed("end|>") == []
    assert not p.done and p.state == "idle"            # <|end|> ends the message, not the turn
    assert p.feed("<|start|>assistant<|channel|>final<|message|>again") == [("final", "again")]
    assert p.feed("<|return|>more") == [] and p.done


def test_full_transcript_with_start_and_constrain():
    text = ("<|start|>assistant<|channel|>final<|message|>Hi<|end|>"
            "<|start|>assistant to=functions.x<|channel|>commentary<|constrain|>json<|message|>{}<|call|>")
    for in_header in (True, False):
        got, p = _run([text], in_header=in_header)
        assert got == [("final", "Hi"), ("commentary", "{}")]
        assert p.recipient == "functions.x" and p.stop_marker == "<|call|>"


def test_header_text_never_emitted_and_unknown_channel_is_not_final():
    got, _ = _run(["<|channel|>secret<|message|>hidden<|end|><|start|>assistant<|channel|>final"
                   "<|message|>shown<|return|>"])
    assert got == [("analysis", "hidden"), ("final", "shown")]
    got, _ = _run(["no harmony markers at all"])  # header text only: nothing to speak
    assert got == []


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
    from spark_voice.models.tiny_gptoss import build_tiny_gptoss

    path = build_tiny_gptoss(tmp_path_factory.mktemp("gptoss") / "tiny-gpt-oss.gguf")
    llm = LlamaCppLLM(path, n_ctx=512, n_threads=2, backend="cpu", reasoning_effort="high",
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
    # random weights never write harmony markers: tokens are generated (counted) but not spoken
    deltas = list(tiny.stream_chat(MESSAGES, max_tokens=12))
    assert tiny.last_stats["completion_tokens"] == 12
    assert tiny.last_stats["finish_reason"] == "length"
    assert all(d.channel != "final" for d in deltas)


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
