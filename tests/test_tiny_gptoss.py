"""Tiny random-weight gpt-oss GGUF fixture: loads in llama.cpp, carries the harmony
tokenizer + chat template, and streams tokens. Needs gguf (convert extra) and
llama-cpp-python (llm extra), both part of [cpu]: no skip.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before llama.cpp loads OpenMP

import llama_cpp  # the llm extra (part of [cpu]); gguf comes with the convert extra
import pytest

from tiny_gptoss import GPT_OSS_CHAT_TEMPLATE, build_tiny_gptoss

MESSAGES = [
    {"role": "system", "content": "You are a terse voice assistant."},
    {"role": "user", "content": "Hello, what is the weather today?"},
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_tiny_gptoss(tmp_path_factory.mktemp("gptoss") / "tiny-gpt-oss.gguf")


@pytest.fixture(scope="module")
def llm(model_path):
    m = llama_cpp.Llama(model_path=str(model_path), n_ctx=512, n_threads=2,
                        n_threads_batch=2, verbose=False)
    yield m
    m.close()


def _tok(llm, s: str) -> list[int]:
    return llm.tokenize(s.encode(), add_bos=False, special=True)


def test_file_is_tiny_and_atomic(model_path):
    assert model_path.stat().st_size < 4 * 1024 * 1024
    assert not [p for p in model_path.parent.iterdir() if p.suffix == ".tmp"]


def test_metadata_identifies_gpt_oss(llm):
    md = llm.metadata
    assert md["general.architecture"] == "gpt-oss"
    assert "gpt-oss" in md["general.name"]
    assert md["tokenizer.chat_template"] == GPT_OSS_CHAT_TEMPLATE
    assert md["tokenizer.ggml.model"] == "gpt2"
    assert md["tokenizer.ggml.pre"] == "gpt-4o"
    assert int(md["gpt-oss.attention.sliding_window"]) == 128
    assert int(md["gpt-oss.expert_count"]) >= int(md["gpt-oss.expert_used_count"])


def test_harmony_special_tokens(llm):
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ids = {t: _tok(llm, t) for t in ("<|start|>", "<|end|>", "<|message|>", "<|channel|>",
                                      "<|return|>", "<|call|>", "<|constrain|>", "<|endoftext|>")}
    assert all(len(v) == 1 for v in ids.values()), ids
    ids = {t: v[0] for t, v in ids.items()}
    assert llm.token_eos() == ids["<|return|>"]
    assert llama_cpp.llama_vocab_is_eog(vocab, ids["<|return|>"])
    assert llama_cpp.llama_vocab_is_eog(vocab, ids["<|call|>"])
    assert not llama_cpp.llama_vocab_is_eog(vocab, ids["<|end|>"])  # as for the real model
    # control tokens are hidden unless special=True; harmony markers always render
    seq = [ids["<|channel|>"], ids["<|end|>"], ids["<|return|>"]]
    assert llm.detokenize(seq) == b"<|channel|><|end|>"
    assert llm.detokenize(seq, special=True) == b"<|channel|><|end|><|return|>"


def test_chat_template_renders_harmony(llm):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                              eos_token="<|return|>", bos_token="<|startoftext|>")
    prompt = fmt(messages=MESSAGES, reasoning_effort="low").prompt
    assert prompt.startswith("<|start|>system<|message|>")
    assert "Reasoning: low" in prompt
    assert "<|start|>developer<|message|># Instructions\n\nYou are a terse voice assistant." in prompt
    assert prompt.endswith("<|start|>user<|message|>Hello, what is the weather today?<|end|>"
                           "<|start|>assistant")
    assert "Reasoning: medium" in fmt(messages=MESSAGES).prompt  # default effort
    toks = _tok(llm, prompt)
    assert toks.count(_tok(llm, "<|start|>")[0]) == 4


def test_completion_and_streaming(llm):
    out = llm.create_completion("<|start|>user<|message|>hi<|end|><|start|>assistant",
                                max_tokens=20, temperature=0.0)
    assert out["usage"]["completion_tokens"] == 20
    assert out["choices"][0]["finish_reason"] == "length"
    chunks = list(llm.create_completion("<|start|>user<|message|>hi<|end|><|start|>assistant",
                                        max_tokens=16, temperature=0.8, seed=1, stream=True))
    assert len(chunks) >= 16
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_completion_uses_gguf_template(llm):
    assert llm.chat_format == "chat_template.default"
    out = llm.create_chat_completion(MESSAGES, max_tokens=8, temperature=0.0)
    assert out["choices"][0]["finish_reason"] == "length"
    # the handler (not create_chat_completion) forwards template kwargs
    handler = llm._chat_handlers[llm.chat_format]
    out = handler(llama=llm, messages=MESSAGES, max_tokens=4, reasoning_effort="high")
    assert out["usage"]["prompt_tokens"] > 20


def test_eos_stops_generation(llm):
    ret = _tok(llm, "<|return|>")[0]
    out = llm.create_completion("<|start|>assistant", max_tokens=10, temperature=0.0,
                                logit_bias={ret: 1000.0})
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["choices"][0]["text"] == ""
