"""RAG: chunker offsets, ingest (incremental, atomic, locked, refusing other models), retrieval in the
turn, kill -9 during ingest (for real, in a subprocess), and real MiniLM retrieval on an en+ja corpus."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, model_file, need_module
from spark_voice.backends.mock import MockEmbedder, MockLLM
from spark_voice.errors import ConfigError, RagIndexError
from spark_voice.pipeline import VoicePipeline
from spark_voice.rag.chunking import split_text
from spark_voice.rag.ingest import ingest
from spark_voice.rag.retrieve import IndexRetriever
from spark_voice.rag.store import IndexLock, IndexStore


@pytest.fixture(autouse=True)
def _needs_faiss():
    need_module("faiss", "rag")  # skip on a bare developer box, fail in CI


class CountingEmbedder(MockEmbedder):
    """MockEmbedder that remembers every text it embedded (and each call's kind)."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__(dim)
        self.texts: list[str] = []
        self.kinds: list[str] = []

    def embed(self, texts, *, kind="document"):
        self.texts += list(texts)
        self.kinds.append(kind)
        return super().embed(texts, kind=kind)


class RenamedEmbedder(MockEmbedder):
    def __init__(self, dim: int = 64, model_id: str = "other-model") -> None:
        super().__init__(dim)
        self.model_id = model_id


DOCS = {
    "animals/cats.txt": "Cats sleep most of the day. A kitten needs food four times a day. "
                        "Cats purr when they are happy.\n\nIndoor cats live longer than outdoor cats.",
    "trains.md": "# Shinkansen\n\n新幹線は東京と大阪を約二時間半で結びます。最高速度は時速三百二十キロです。\n"
                 "のぞみは最も速い列車です。",
    "cooking.md": "Boil the pasta in salted water for nine minutes. Stir the sauce slowly.",
}


def write(root: Path, docs: dict[str, str]) -> Path:
    for rel, text in docs.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write(tmp_path / "docs", DOCS)


@pytest.fixture
def index_path(tmp_path) -> Path:
    return tmp_path / "faiss" / "index.bin"


@pytest.fixture
def small_settings(mock_settings):
    return mock_settings.model_copy(update={"rag_chunk_chars": 80, "rag_chunk_overlap": 20, "rag_min_score": 0.0})


# ----------------------------------------------------------------------------------- chunker
def _check_chunks(text: str, chunks, size: int, overlap: int) -> None:
    assert chunks
    covered = np.zeros(len(text), bool)
    for a, b in zip(chunks, chunks[1:]):
        assert b.start > a.start and b.end > a.end
        assert a.end - b.start <= overlap  # never more overlap than asked
    for c in chunks:
        assert text[c.start:c.end] == c.text and c.text == c.text.strip()
        assert 0 < len(c.text) <= size
        covered[c.start:c.end] = True
    assert all(covered[i] or text[i].isspace() for i in range(len(text))), "every character is in a chunk"


def test_chunker_japanese_sentences_and_offsets():
    sents = ["東京は日本の首都です。", "人口は約千四百万人です！", "富士山は高いですか？", "「本当？」と彼は言った。",
             "新幹線はとても速い。"]
    text = "".join(sents * 6) + "\n\n" + "句読点のない長い文章" * 30
    chunks = split_text(text, 60, 15)
    _check_chunks(text, chunks, 60, 15)
    # chunks that end before the unpunctuated tail end at a sentence end, never inside 「本当？」
    for c in chunks:
        if c.end < text.index("\n\n"):
            assert c.text[-1] in "。！？", c.text
            assert not c.text.endswith("「本当？")
    # the overlap repeats whole sentences where one fits
    assert any(b.start < a.end and text[b.start - 1] in "。！？" for a, b in zip(chunks, chunks[1:]))
    # an unbroken run is cut at the size limit
    assert max(len(c.text) for c in chunks) == 60


def test_chunker_english_sentences_and_offsets():
    text = ("Dr. Smith went to Washington on Monday. He met e.g. the president! Prices rose 3.5 percent.\n"
            "A very long sentence without any punctuation goes on and on and on for a while to force a cut at "
            "a space somewhere in the middle of it all because nothing else is available here\n\nLast one.")
    chunks = split_text(text, 70, 20)
    _check_chunks(text, chunks, 70, 20)
    assert chunks[0].text.startswith("Dr. Smith went to Washington on Monday.")
    for c in chunks:
        assert not c.text.endswith("Dr.") and not c.text.endswith("e.g.")
        # words are never cut in half
        assert c.start == 0 or not text[c.start - 1].isalnum()
        assert c.end == len(text) or not text[c.end].isalnum()
    assert split_text("  \n ", 50, 10) == []
    with pytest.raises(ConfigError):
        split_text("abc", 50, 50)


# ----------------------------------------------------------------------------------- ingest
def test_ingest_then_search_with_sources(corpus, index_path, small_settings):
    emb = CountingEmbedder()
    s = ingest(corpus, index_path, emb, small_settings, progress=False)
    assert (s.files_added, s.files_changed, s.files_removed, s.files_unchanged) == (3, 0, 0, 0)
    assert s.written and s.chunks == s.chunks_embedded > 3 and s.index_type == "flat"
    assert set(emb.kinds) == {"document"}
    header, _ = IndexStore(index_path)._parse_meta(*_meta(index_path))
    assert header["embedding_model"] == "mock-ngram-64" and header["dim"] == 64
    assert header["index_type"] == "flat" and header["created"] and header["chunk_chars"] == 80
    assert set(header["files"]) == set(DOCS)
    r = IndexRetriever.open(index_path, emb, small_settings)
    hits = r.search("How many times a day does a kitten need food?", top_k=2)
    assert hits and hits[0].source == "animals/cats.txt"
    assert emb.kinds[-1] == "query"
    h = hits[0]
    doc = DOCS[h.source]
    assert doc[h.start:h.end] == h.text and -1.0 <= h.score <= 1.0001
    assert r.search("新幹線の最高速度は？")[0].source == "trains.md"
    assert r.search("   ") == []


def _meta(index_path: Path):
    metas = sorted(index_path.parent.glob(index_path.name + ".*.meta.jsonl"))
    assert len(metas) >= 1
    store = IndexStore(index_path)
    stamp = store.load(index=False).stamp
    m = store.meta_path(stamp)
    return m, m.read_bytes()


def test_incremental_reembeds_only_the_changed_file(corpus, index_path, small_settings):
    ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False)
    before = IndexStore(index_path).load(vectors=True)
    (corpus / "cooking.md").write_text("Bake the bread at two hundred degrees for forty minutes.", encoding="utf-8")
    emb = CountingEmbedder()
    s = ingest(corpus, index_path, emb, small_settings, progress=False, batch_size=2)
    assert (s.files_added, s.files_changed, s.files_removed, s.files_unchanged) == (0, 1, 0, 2)
    expected = [c.text for c in split_text((corpus / "cooking.md").read_text(encoding="utf-8"), 80, 20)]
    assert emb.texts == expected, "only the changed file was embedded"
    after = IndexStore(index_path).load(vectors=True)
    old_rows = {(c["source"], c["start"]): i for i, c in enumerate(before.chunks)}
    for i, c in enumerate(after.chunks):
        assert c["id"] == i
        if c["source"] != "cooking.md":  # kept vectors are the stored ones, bit for bit
            assert np.array_equal(after.vectors[i], before.vectors[old_rows[(c["source"], c["start"])]])
    r = IndexRetriever.open(index_path, MockEmbedder(), small_settings)
    assert r.search("bake bread degrees")[0].source == "cooking.md"
    assert all("pasta" not in c["text"] for c in after.chunks)
    # nothing changed: nothing embedded, nothing written
    emb2 = CountingEmbedder()
    s2 = ingest(corpus, index_path, emb2, small_settings, progress=False)
    assert not s2.written and emb2.texts == [] and s2.files_unchanged == 3
    assert IndexStore(index_path).load(index=False).stamp == after.stamp


def test_removed_file_is_dropped_and_added_file_appended(corpus, index_path, small_settings):
    ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False)
    (corpus / "animals" / "cats.txt").unlink()
    s = ingest(corpus, index_path, CountingEmbedder(), small_settings, progress=False)
    assert (s.files_removed, s.files_unchanged, s.chunks_embedded) == (1, 2, 0) and s.chunks_removed > 0
    data = IndexStore(index_path).load()
    assert {c["source"] for c in data.chunks} == {"trains.md", "cooking.md"}
    assert data.index.ntotal == len(data.chunks) and "animals/cats.txt" not in data.files
    # an added file only: appended; rebuild: everything embedded again
    write(corpus, {"new/notes.txt": "Water boils at one hundred degrees."})
    emb = CountingEmbedder()
    s = ingest(corpus, index_path, emb, small_settings, progress=False)
    assert s.files_added == 1 and emb.texts == ["Water boils at one hundred degrees."]
    emb = CountingEmbedder()
    s = ingest(corpus, index_path, emb, small_settings, progress=False, rebuild=True)
    assert s.files_added == 3 and len(emb.texts) == s.chunks


def test_empty_source_does_not_silently_empty_the_index(corpus, index_path, small_settings, tmp_path):
    ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RagIndexError, match="refusing to empty"):
        ingest(empty, index_path, MockEmbedder(), small_settings, progress=False)
    assert len(IndexStore(index_path).load(index=False).chunks) > 0
    s = ingest(empty, index_path, MockEmbedder(), small_settings, progress=False, rebuild=True)
    assert s.written and s.chunks == 0 and s.warnings
    assert IndexRetriever.open(index_path, MockEmbedder(), small_settings).search("kitten") == []


def test_index_types_hnsw_and_ivf_fallback(corpus, index_path, small_settings):
    ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False)
    emb = CountingEmbedder()
    s = ingest(corpus, index_path, emb, small_settings, progress=False, index_type="hnsw")
    assert s.written and s.index_type == "hnsw" and emb.texts == [], "a new index type re-uses stored vectors"
    r = IndexRetriever.open(index_path, MockEmbedder(), small_settings)
    assert type(r.data.index).__name__ == "IndexHNSWFlat"
    assert r.search("kitten food")[0].source == "animals/cats.txt"
    s = ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False, index_type="ivf")
    assert s.index_type == "flat" and any("ivf" in w for w in s.warnings)


def test_ivf_index_trains_with_enough_vectors(tmp_path, mock_settings):
    from spark_voice.rag.store import build_index, search_index

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index, kind, params, warns = build_index(x, "ivf", 32)
    assert kind == "ivf" and params["nlist"] >= 8 and not warns
    scores, ids = search_index(index, x[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_sq8_index_is_near_exact_and_rebuilt_on_growth(corpus, index_path, small_settings, tmp_path):
    from spark_voice.rag.store import build_index, search_index

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index, kind, _, warns = build_index(x, "sq8", 64)
    assert kind == "sq8" and type(index).__name__ == "IndexScalarQuantizer" and not warns
    _, ids = search_index(index, x[:50], 1)
    assert (ids[:, 0] == np.arange(50)).mean() >= 0.95  # each vector finds itself
    s = ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False, index_type="sq8")
    assert s.index_type == "sq8"
    (corpus / "extra.txt").write_text("Parrots can imitate human speech.", encoding="utf-8")
    s = ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False, index_type="sq8")
    r = IndexRetriever.open(index_path, MockEmbedder(), small_settings)
    assert type(r.data.index).__name__ == "IndexScalarQuantizer"
    assert r.search("parrots imitate speech")[0].source == "extra.txt"


def test_other_embedding_model_or_dim_is_refused(corpus, index_path, small_settings):
    ingest(corpus, index_path, MockEmbedder(64), small_settings, progress=False)
    with pytest.raises(RagIndexError, match=r"mock-ngram-64.*dim 64.*mock-ngram-32.*dim 32.*--rebuild"):
        ingest(corpus, index_path, MockEmbedder(32), small_settings, progress=False)
    with pytest.raises(RagIndexError, match="'mock-ngram-64'.*'other-model'"):
        ingest(corpus, index_path, RenamedEmbedder(64), small_settings, progress=False)
    with pytest.raises(RagIndexError, match="mock-ngram-64.*mock-ngram-32"):
        IndexRetriever.open(index_path, MockEmbedder(32), small_settings)
    s = ingest(corpus, index_path, MockEmbedder(32), small_settings, progress=False, rebuild=True)
    assert s.written and s.dim == 32
    assert IndexRetriever.open(index_path, MockEmbedder(32), small_settings).data.dim == 32


def test_second_ingest_is_refused_while_locked(corpus, index_path, small_settings):
    with IndexLock(index_path):
        with pytest.raises(RagIndexError, match=f"locked by pid {os.getpid()}"):
            ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False)
    assert ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False).written


def test_missing_and_corrupt_index_give_clear_errors(corpus, index_path, small_settings):
    with pytest.raises(RagIndexError, match="no index at .*spark-voice ingest"):
        IndexRetriever.open(index_path, MockEmbedder(), small_settings)
    ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False)
    meta, raw = _meta(index_path)
    meta.write_bytes(raw[: len(raw) // 2] + b"\x00garbage")
    with pytest.raises(RagIndexError, match="metadata .* is corrupt"):
        IndexRetriever.open(index_path, MockEmbedder(), small_settings)
    with pytest.raises(RagIndexError, match="corrupt.*--rebuild"):
        ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False)
    meta.write_text('{"header": {"format": "something-else"}}\n')
    with pytest.raises(RagIndexError, match="corrupt"):
        IndexRetriever.open(index_path, MockEmbedder(), small_settings)
    assert ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False, rebuild=True).written
    data = bytearray(index_path.read_bytes())
    data[-5] ^= 0xFF
    index_path.write_bytes(bytes(data))
    with pytest.raises(RagIndexError, match="does not match any metadata"):
        IndexRetriever.open(index_path, MockEmbedder(), small_settings)
    index_path.write_bytes(b"")
    with pytest.raises(RagIndexError):
        IndexRetriever.open(index_path, MockEmbedder(), small_settings)


def test_retriever_reloads_after_a_new_ingest(corpus, index_path, small_settings):
    ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False)
    r = IndexRetriever.open(index_path, MockEmbedder(), small_settings)
    write(corpus, {"extra.txt": "Penguins live in Antarctica and eat fish."})
    ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False)
    assert r.search("Where do penguins live?")[0].source == "extra.txt"


# ----------------------------------------------------------------------------------- pipeline
def test_pipeline_puts_hits_and_sources_into_the_prompt(corpus, index_path, small_settings):
    ingest(corpus, index_path, MockEmbedder(), small_settings, progress=False)
    llm = MockLLM()
    p = VoicePipeline(None, llm, None, retriever=IndexRetriever.open(index_path, MockEmbedder(), small_settings),
                      settings=small_settings)
    turn = p.run(text="How often should a kitten eat?", speak=False)
    ev = [e for e in turn.events if e.stage == "rag.hits"]
    assert len(ev) == 1 and ev[0].data["hits"][0]["source"] == "animals/cats.txt"
    assert "ms" in ev[0].data and ev[0].data["hits"][0]["score"] > 0
    stages = [e.stage for e in turn.events]
    assert stages.index("rag.hits") < stages.index("llm.token")
    system = llm.last_messages[0]["content"]
    assert llm.last_messages[0]["role"] == "system" and "(animals/cats.txt)" in system and "kitten" in system
    assert turn.hits and turn.hits[0].source == "animals/cats.txt"


def test_pipeline_from_settings_uses_or_skips_the_index(corpus, index_path, small_settings):
    s = small_settings.model_copy(update={"rag_index_path": index_path})
    ingest(corpus, index_path, MockEmbedder(), s, progress=False)
    p = VoicePipeline.from_settings(s)
    assert isinstance(p.retriever, IndexRetriever) and not p.warnings
    assert [e for e in p.run(text="kitten food", speak=False).events if e.stage == "rag.hits"][0].data["hits"]
    _meta(index_path)[0].write_text("not json\n")
    p = VoicePipeline.from_settings(s)
    assert p.retriever is None and any("not usable" in w and "corrupt" in w for w in p.warnings)
    assert p.run(text="kitten food", speak=False).answer  # still answers, without retrieval


# ----------------------------------------------------------------------------------- CLI
def test_cli_ingest_and_errors(corpus, index_path, capsys):
    from spark_voice.cli import main

    rc = main(["ingest", "--profile", "mock", "--source", str(corpus), "--index", str(index_path), "--json",
               "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["files_added"] == 3 and out["written"] and out["chunks"] > 0
    rc = main(["ingest", "--profile", "mock", "--source", str(corpus), "--index", str(index_path)])
    assert rc == 0 and "3 unchanged" in capsys.readouterr().out
    env = dict(os.environ, SPARK_VOICE_PROFILE="mock")
    r = subprocess.run([sys.executable, "-m", "spark_voice.ingest", "--source", str(corpus / "missing"),
                        "--index", str(index_path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "error:" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    with IndexLock(index_path):
        r = subprocess.run([sys.executable, "-m", "spark_voice.ingest", "--source", str(corpus),
                            "--index", str(index_path), "--rebuild"], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=120)
    assert r.returncode == 2 and f"locked by pid {os.getpid()}" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------------- kill -9
KILL_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from spark_voice.backends.mock import MockEmbedder
    from spark_voice.config import Settings
    from spark_voice.rag import ingest as ing, store

    class SlowEmbedder(MockEmbedder):
        def embed(self, texts, *, kind="document"):
            time.sleep(0.01)
            return super().embed(texts, kind=kind)

    slow_fsync = os.environ.get("SLOW_FSYNC") == "1"
    if slow_fsync:  # widen the window in which temp files exist
        _fsync = os.fsync
        def fsync(fd):
            time.sleep(0.3)
            _fsync(fd)
        os.fsync = fsync
    _write = store.IndexStore._write_file
    def write_file(self, final, parts):
        print("begin", final.name, flush=True)
        time.sleep(0.1)
        _write(self, final, parts)
        print("end", final.name, flush=True)
        time.sleep(0.1)
    store.IndexStore._write_file = write_file
    s = Settings.load(sys.argv[3], environ={}, use_dotenv=False, profile="mock",
                      RAG_CHUNK_CHARS="120", RAG_CHUNK_OVERLAP="20")
    print("start", flush=True)
    ing.ingest(sys.argv[1], sys.argv[2], SlowEmbedder(), s, progress=False, batch_size=4)
    print("done", flush=True)
""")


def _big_corpus(root: Path, variant: int) -> None:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "sigma", "omega",
             "river", "mountain", "forest"]
    rng = random.Random(variant)
    for i in range(20):
        text = " ".join(f"{rng.choice(words)} {rng.choice(words)} number {i} variant {variant}." for _ in range(40))
        (root / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")


def test_kill_9_during_ingest_leaves_the_previous_index_loadable(tmp_path):
    from spark_voice.config import Settings

    src, index_path = tmp_path / "src", tmp_path / "idx" / "index.bin"
    src.mkdir()
    script = tmp_path / "slow_ingest.py"
    script.write_text(KILL_SCRIPT)
    settings = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="mock",
                             RAG_CHUNK_CHARS="120", RAG_CHUNK_OVERLAP="20")
    _big_corpus(src, 0)
    ingest(src, index_path, MockEmbedder(), settings, progress=False)
    store = IndexStore(index_path)
    rnd = random.Random(7)
    # (how to pick the moment, whether the new index may already be committed)
    moments = [("delay", rnd.uniform(0.05, 0.4)), ("delay", rnd.uniform(0.4, 1.2)), ("tmpfile", None),
               ("line", "end meta"), ("line", "end index.bin")]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    live, outcomes = 0, []
    for variant, (how, arg) in enumerate(moments, start=1):
        before = store.load(vectors=True)
        _big_corpus(src, variant)
        proc = subprocess.Popen([sys.executable, str(script), str(src), str(index_path), str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(env, SLOW_FSYNC="1" if how == "tmpfile" else "0"))
        try:
            assert proc.stdout.readline().strip() == "start"
            if how == "delay":
                time.sleep(arg)
            elif how == "tmpfile":
                deadline = time.monotonic() + 60
                while not list(index_path.parent.glob("index.bin.tmp-*")):
                    assert proc.poll() is None and time.monotonic() < deadline, "no temp file appeared"
                    time.sleep(0.002)
            else:
                while True:
                    line = proc.stdout.readline()
                    assert line, f"ingest ended before {arg!r}: {proc.stderr.read()[-2000:]}"
                    line = line.strip()
                    if line == arg or (arg == "end meta" and line.startswith("end ")
                                       and line.endswith(".meta.jsonl")):
                        break  # sidecars of the new index written, index.bin not yet replaced
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"{how} {arg}: ingest finished before the kill"
        after = store.load(vectors=True)  # loads: sha256 of index and vectors verified
        assert after.index.ntotal == len(after.chunks) == len(after.vectors)
        committed = after.stamp != before.stamp
        if how in ("tmpfile", "line") and arg != "end index.bin":
            assert not committed, f"kill at {how} {arg}: the new index must not be visible yet"
        if arg == "end index.bin":
            assert committed
        live = variant if committed else live  # the corpus version the loadable index holds
        assert all(f"variant {live}." in c["text"] for c in after.chunks)
        r = IndexRetriever.open(index_path, MockEmbedder(), settings)
        assert r.search(f"alpha number 3 variant {live}", top_k=3)
        outcomes.append((how, arg, committed))
    print("kill moments (how, arg, new index committed):", outcomes)
    # the next ingest gets the lock (it died with the process) and cleans up the temp files
    s = ingest(src, index_path, MockEmbedder(), settings, progress=False)
    assert s.written or s.files_unchanged == 20
    assert not list(index_path.parent.glob("index.bin.tmp-*"))
    assert len(list(index_path.parent.glob("index.bin.*.meta.jsonl"))) <= 2


# ----------------------------------------------------------------------------------- real MiniLM
REAL_DOCS = {
    "pets.txt": "Cats are independent pets. A kitten should be fed small meals four times a day, and adult "
                "cats twice a day. Fresh water must always be available.",
    "python.md": "Python is a programming language. Use a virtual environment to install packages with pip, "
                 "so that each project keeps its own dependencies.",
    "weather.txt": "A thunderstorm brings lightning, heavy rain and strong wind. Stay indoors and away from "
                   "tall trees until the storm has passed.",
    "volcano.md": "Mount Fuji is an active volcano and the highest mountain in Japan, 3,776 metres tall. "
                  "Climbers usually reach the summit in July or August.",
    "ramen.md": "ラーメンは中華麺をスープに入れた料理です。醤油、味噌、塩、豚骨などの味があります。",
    "train.txt": "新幹線は日本の高速鉄道です。東京から大阪まで約二時間半で行けます。最高速度は時速三百二十キロです。",
    "sakura.md": "桜は春に咲く花です。日本では三月から四月に花見をして、桜の木の下で食事を楽しみます。",
}

QUESTIONS = [
    ("How often should I feed a young cat?", "pets.txt"),
    ("How do I keep the libraries of different coding projects separate?", "python.md"),
    ("What should I do when there is lightning outside?", "weather.txt"),
    ("How high is Japan's tallest peak?", "volcano.md"),
    ("ラーメンのスープにはどんな味がありますか", "ramen.md"),
    ("東京から大阪まで新幹線で何時間かかりますか", "train.txt"),
    ("桜の花はいつ咲きますか", "sakura.md"),
]


def test_real_minilm_retrieves_the_right_document(tmp_path, dev_settings):
    need_module("llama_cpp", "embed")
    model_file(dev_settings, "embedding")
    from spark_voice.backends.embed_llama_cpp import LlamaCppEmbedder

    emb = LlamaCppEmbedder.from_settings(dev_settings)
    try:
        src = write(tmp_path / "docs", REAL_DOCS)
        index = tmp_path / "index.bin"
        s = ingest(src, index, emb, dev_settings, progress=False)
        assert s.files_added == len(REAL_DOCS) and s.dim == 384 and "MiniLM" in s.embedding_model
        r = IndexRetriever.open(index, emb, dev_settings.model_copy(update={"rag_min_score": 0.0}))
        wrong = []
        for q, want in QUESTIONS:
            hits = r.search(q, top_k=1)
            if not hits or hits[0].source != want:
                wrong.append((q, want, [(h.source, round(h.score, 3)) for h in r.search(q, top_k=3)]))
        assert not wrong, wrong
        # the real embedder against an index of another model: refused
        ingest(src, tmp_path / "mock.bin", MockEmbedder(), dev_settings, progress=False)
        with pytest.raises(RagIndexError, match="mock-ngram-64.*MiniLM"):
            IndexRetriever.open(tmp_path / "mock.bin", emb, dev_settings)
    finally:
        emb.close()
