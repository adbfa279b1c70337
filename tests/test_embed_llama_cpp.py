"""The real embedding backend (llama-cpp-python, embedding=True) on the all-MiniLM-L6-v2 GGUF."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from conftest import model_file, need, need_module
from spark_voice.backends.embed_llama_cpp import LlamaCppEmbedder
from spark_voice.errors import ConfigError, MissingDependency, ModelNotFound

SENTENCES = ["The cat sits on the mat.", "A cat is sitting on a rug.", "Stock markets fell sharply today.",
             "東京は日本の首都です。", ""]


@pytest.fixture(scope="module")
def path(dev_settings):
    need_module("llama_cpp", "embed")
    return model_file(dev_settings, "embedding")


@pytest.fixture(scope="module")
def emb(dev_settings, path):
    e = LlamaCppEmbedder.from_settings(dev_settings)
    e.load()
    yield e
    e.close()


def test_settings_and_identity(emb, dev_settings):
    assert emb.dim == 384
    assert emb.model_id == "all-MiniLM-L6-v2.gguf:bert:384:mean"
    assert emb.llm.context_params.n_ubatch == dev_settings.embedding_ubatch
    assert emb.llm.context_params.n_batch >= emb.llm.context_params.n_ubatch
    assert emb.llm.context_params.n_threads == 2 and emb.llm.context_params.n_threads_batch == 2
    assert emb.max_tokens == 512                       # MiniLM's context
    assert emb.endpoint == f"inproc:llama_cpp:{emb.model_path}@cpu"
    emb.probe()
    assert emb.info().ready


def test_unit_norm_float32_and_paraphrase_closer(emb):
    v = emb.embed(SENTENCES)
    assert v.shape == (len(SENTENCES), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > 0.6


def test_matches_numpy_reference(emb):
    need_module("safetensors", "convert")
    from spark_voice.models import convert_bert

    try:
        ref = convert_bert.reference_embed(None, SENTENCES[:4])
    except (FileNotFoundError, ImportError) as exc:
        need(False, f"MiniLM source weights missing ({convert_bert.PIP_HINT}): {exc}")
    cos = (emb.embed(SENTENCES[:4]) * ref).sum(axis=1)
    assert (cos >= 0.999).all(), cos


def test_batching_equals_one_by_one(emb):
    texts = [f"Sentence number {i} talks about {'apples' if i % 2 else 'the weather in Tokyo'}." * (1 + i % 4)
             for i in range(23)]
    together = emb.embed(texts)
    alone = np.vstack([emb.embed([t]) for t in texts])
    assert ((together * alone).sum(axis=1) > 0.9999).all()
    assert emb.embed([]).shape == (0, 384)


def test_query_and_document_prefixes(path):
    e = LlamaCppEmbedder(path, backend="cpu", n_threads=2, document_prefix="search_document: ",
                         query_prefix="search_query: ")
    try:
        q, d = e.embed(["cats"], kind="query"), e.embed(["cats"], kind="document")
        assert float((q * d).sum()) < 0.9999
        plain = LlamaCppEmbedder(path, backend="cpu", n_threads=2)
        np.testing.assert_allclose(plain.embed(["search_query: cats"]), q, atol=1e-5)
        plain.close()
        with pytest.raises(ValueError):
            e.embed(["x"], kind="passage")
    finally:
        e.close()


def test_long_text_truncated_with_warning(emb, caplog):
    long = "word " * 2000
    with caplog.at_level(logging.WARNING, logger="spark_voice.embedding"):
        v = emb.embed([long, "short"])
    assert any("truncated" in r.getMessage() for r in caplog.records)
    assert np.isfinite(v).all() and abs(float(np.linalg.norm(v[0])) - 1) < 1e-5
    assert len(emb.tokenize(long)) == emb.max_tokens


def test_bad_settings_and_missing_pieces(tmp_path, monkeypatch, path):
    with pytest.raises(ConfigError, match="mean, cls, last"):
        LlamaCppEmbedder(path, pooling="none")
    with pytest.raises(ModelNotFound, match="models prepare --small"):
        LlamaCppEmbedder(tmp_path / "missing.gguf", backend="cpu").load()
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(MissingDependency, match=r"spark-voice\[embed\]"):
        LlamaCppEmbedder(path, backend="cpu").load()


def test_cls_pooling_differs(path, emb):
    e = LlamaCppEmbedder(path, backend="cpu", n_threads=2, pooling="cls")
    try:
        v = e.embed(SENTENCES[:2])
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
        assert e.model_id.endswith(":cls")
        assert float((v[0] * emb.embed(SENTENCES[:1])[0]).sum()) < 0.999
    finally:
        e.close()
