"""RAG benchmark: top-k search latency at 100k vectors, and ingest throughput vs raw embedder calls.

    .venv/bin/python benchmarks/bench_rag.py [--n 100000] [--dim 384] [--threads 1,2] [--out results.json]

1. Search: N random unit vectors (dim 384) in each index type (flat = exact IndexFlatIP, hnsw);
   p50/p95 of one query's top-k through our IndexRetriever.search (query embedding excluded: a
   fixed-vector embedder) and through the raw faiss ``index.search`` on the same index.
   Target: flat p50 < 5 ms on 2 threads.
2. Ingest: a generated en+ja corpus; chunks/s of ``ingest(..., rebuild=True)`` (read, hash, chunk,
   embed, build, atomic commit) vs raw ``embedder.embed`` calls on the same chunk texts in the same
   batches. Target ratio >= 0.95. Uses the real MiniLM GGUF when present (else the mock embedder).
Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spark_voice.rag.chunking import split_text  # noqa: E402
from spark_voice.rag.ingest import ingest  # noqa: E402
from spark_voice.rag.retrieve import IndexRetriever  # noqa: E402
from spark_voice.rag.store import IndexStore, build_index, search_index, set_threads  # noqa: E402


class FixedEmbedder:
    """Returns pre-made query vectors in turn (so search timing excludes the embedding model)."""

    model_id = "bench-random"

    def __init__(self, dim: int, queries: np.ndarray) -> None:
        self.dim, self.queries, self.i = dim, queries, 0

    def embed(self, texts, *, kind="document"):
        q = self.queries[self.i % len(self.queries)][None, :]
        self.i += 1
        return q


def pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3),
            "mean_ms": round(float(a.mean()), 3)}


def bench_search(n: int, dim: int, k: int, n_queries: int, types: list[str], threads: list[int],
                 tmp: Path) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((n_queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    exact = None
    out = {}
    for kind in types:
        t0 = time.perf_counter()
        index, actual, params, _ = build_index(x, kind, dim)
        build_s = time.perf_counter() - t0
        path = tmp / f"search-{kind}" / "index.bin"
        chunks = [{"id": i, "source": f"doc{i // 10}.txt", "start": 0, "end": 1, "sha256": "", "text": "x"}
                  for i in range(n)]
        header = {"embedding_model": "bench-random", "dim": dim, "index_type": actual, "index_type_requested": kind,
                  "index_params": params, "chunk_chars": 400, "chunk_overlap": 80, "files": {}}
        t0 = time.perf_counter()
        IndexStore(path).commit(header, chunks, x, index)
        commit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = IndexRetriever.open(path, FixedEmbedder(dim, q), min_score=-1.0, top_k=k, auto_reload=False)
        open_s = time.perf_counter() - t0
        timings = {}
        for nt in threads:
            set_threads(nt)
            for i in range(10):  # warm-up
                r.search("warm", k)
                search_index(r.data.index, q[i], k)
            raw, ours = [], []
            for i in range(n_queries):
                t0 = time.perf_counter()
                search_index(r.data.index, q[i], k)
                raw.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                r.search("query", k)
                ours.append(time.perf_counter() - t0)
            timings[f"threads_{nt}"] = {"ours": pct(ours), "raw_faiss": pct(raw)}
        set_threads(max(threads))
        _, ids = search_index(r.data.index, q, k)
        if exact is None and actual == "flat":
            exact = ids
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact)])) if exact is not None else None
        out[kind] = {"index_type": actual, "params": params, "build_s": round(build_s, 2),
                     "commit_s": round(commit_s, 2), "open_s": round(open_s, 2),
                     **timings,
                     f"recall_at_{k}_vs_flat": None if recall is None else round(recall, 4)}
    return out


EN = ("The committee reviewed the annual budget and approved new funding for the public library. "
      "Volunteers planted trees along the river to reduce erosion after the spring floods. "
      "Researchers measured the speed of sound in warm and cold air during the experiment. ")
JA = ("市役所は来年度の予算を発表し、図書館の改修に新しい資金を充てることを決めました。"
      "ボランティアは春の洪水の後、川沿いに木を植えて土の流出を防ぎました。"
      "研究者は実験で、暖かい空気と冷たい空気の中での音の速さを測りました。")


def make_corpus(root: Path, n_files: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        body = (EN if i % 2 == 0 else JA) * 4
        (root / f"doc{i:03d}.{'md' if i % 3 == 0 else 'txt'}").write_text(f"Document {i}.\n\n{body}", encoding="utf-8")


def bench_ingest(n_files: int, batch: int, threads: int, tmp: Path) -> dict:
    from spark_voice.config import Settings

    s = Settings.load(ROOT, environ={}, profile="dev", EMBEDDING_THREADS=str(threads), RAG_THREADS=str(threads))
    model = s.model_path("embedding")
    try:
        import llama_cpp  # noqa: F401

        real = model.is_file()
    except ImportError:
        real = False
    if real:
        from spark_voice.backends.embed_llama_cpp import LlamaCppEmbedder

        emb = LlamaCppEmbedder.from_settings(s)
    else:
        from spark_voice.backends.mock import MockEmbedder

        emb = MockEmbedder(384)
    emb.load()
    src = tmp / "corpus"
    make_corpus(src, n_files)
    texts = [c.text for p in sorted(src.iterdir()) for c in split_text(p.read_text(encoding="utf-8"),
                                                                       s.rag_chunk_chars, s.rag_chunk_overlap)]
    emb.embed(texts[:batch], kind="document")  # warm-up
    rounds = []
    for r in range(3):  # interleaved, best of 3 each: the machine may be shared
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            emb.embed(texts[i:i + batch], kind="document")
        raw_s = time.perf_counter() - t0
        summary = ingest(src, tmp / f"ingest{r}" / "index.bin", emb, s, rebuild=True, progress=False,
                         batch_size=batch)
        assert summary.chunks_embedded == len(texts), (summary.chunks_embedded, len(texts))
        rounds.append((raw_s, summary.seconds, summary.embed_seconds))
    raw_s = min(r[0] for r in rounds)
    ours_s = min(r[1] for r in rounds)
    emb.close()
    return {"embedder": emb.model_id if real else "mock (MiniLM GGUF not found)", "files": n_files,
            "chunks": len(texts), "batch": batch, "raw_chunks_per_s": round(len(texts) / raw_s, 2),
            "ours_chunks_per_s": round(len(texts) / ours_s, 2), "ratio": round(raw_s / ours_s, 4),
            # within one ingest call: time in embedder.embed / total (immune to load between runs)
            "in_run_embed_share": round(max(r[2] / r[1] for r in rounds), 4),
            "overhead_s": round(min(r[1] - r[2] for r in rounds), 3),
            "rounds_raw_ours_embed_s": [[round(a, 3) for a in r] for r in rounds]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors in the search index")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--types", default="flat,hnsw")
    ap.add_argument("--threads", default="1,2", help="FAISS threads for search (comma list); the last one "
                                                    "also builds the indexes and runs the ingest")
    ap.add_argument("--files", type=int, default=60, help="documents in the ingest corpus")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--out", help="write the JSON result here too")
    args = ap.parse_args()
    threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
    set_threads(threads[-1])
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "load_avg": [round(x, 2) for x in os.getloadavg()]},
           "threads": threads, "n": args.n, "dim": args.dim, "k": args.k}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res["search"] = bench_search(args.n, args.dim, args.k, args.queries, args.types.split(","), threads, tmp)
        if not args.skip_ingest:
            res["ingest"] = bench_ingest(args.files, args.batch, threads[-1], tmp)
    res["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(res, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
