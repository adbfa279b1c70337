"""LLM and embedding throughput: our llama.cpp backends vs raw llama-cpp-python, in one run.

    python benchmarks/bench_llm.py [--profile dev] [--threads 2] [--max-tokens 128] [--rounds 5]

LLM: tokens/s of ``LlamaCppLLM.stream_chat`` (what VoicePipeline drives: template rendering,
context fitting, incremental detokenization, stop handling, harmony parsing for gpt-oss) vs
``llama_cpp.Llama.create_completion(stream=True)`` on the same rendered prompt, the same
``Llama`` object (same threads, same weights, same KV prefix reuse), greedy sampling and the same
max_tokens. Rounds alternate A/B after a warm-up; medians are compared (target ratio >= 0.97).

Embeddings: sentences/s of ``LlamaCppEmbedder.embed`` vs ``Llama.embed`` on the same ``Llama``
object and the same sentences (target ratio >= 0.95).

Timings only; nothing is asserted. Models come from the settings (dev profile: the small models
that `spark-voice models prepare --small` puts under ./models).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def bench_llm(settings, rounds: int, max_tokens: int) -> dict:
    from spark_voice.backends.llm_llama_cpp import LlamaCppLLM

    ours = LlamaCppLLM.from_settings(settings)
    ours.load()
    raw = ours.llm  # the very same llama_cpp.Llama
    messages = [{"role": "system", "content": settings.llm_system_prompt},
                {"role": "user", "content": "Tell me a long story about a lighthouse keeper and a storm."}]
    prompt = ours.render(messages)
    sampling = dict(temperature=0.0, top_p=ours.top_p, top_k=ours.top_k, min_p=ours.min_p, repeat_penalty=1.0)
    eos = raw._model.token_get_text(raw.token_eos())

    def run_ours() -> tuple[float, str, int]:
        t0 = time.perf_counter()
        text = "".join(d.text for d in ours.stream_chat(messages, max_tokens=max_tokens, temperature=0.0))
        dt = time.perf_counter() - t0
        return dt, text, ours.last_stats["completion_tokens"]

    def run_raw() -> tuple[float, str, int]:
        t0 = time.perf_counter()
        chunks = [c["choices"][0]["text"] for c in raw.create_completion(
            prompt, max_tokens=max_tokens, stream=True, stop=[eos], **sampling)]
        dt = time.perf_counter() - t0
        return dt, "".join(chunks), len(chunks)

    run_ours(), run_raw()  # warm-up (page in weights, fill the prompt cache)
    a, b = [], []
    same = True
    for _ in range(rounds):
        ta, text_a, n_a = run_ours()
        tb, text_b, n_b = run_raw()
        same = same and text_a == text_b
        # greedy on the same prompt: identical text means identical tokens
        a.append(n_a / ta)
        b.append((n_a if text_a == text_b else n_b) / tb)
    ours.close()
    return {"ours": statistics.median(a), "raw": statistics.median(b), "tokens": n_a, "same_text": same,
            "rounds_ours": a, "rounds_raw": b}


def bench_embed(settings, rounds: int, n_texts: int) -> dict:
    from spark_voice.backends.embed_llama_cpp import LlamaCppEmbedder

    ours = LlamaCppEmbedder.from_settings(settings)
    ours.load()
    raw = ours.llm
    subjects = ["The weather", "A small cat", "The stock market", "My neighbour", "The old train",
                "This recipe", "The football team", "A quiet library"]
    verbs = ["changed quickly", "surprised everyone", "was discussed at length", "needs attention",
             "looked different today", "made the news again"]
    texts = [f"{subjects[i % len(subjects)]} {verbs[i % len(verbs)]} (note {i})." for i in range(n_texts)]

    def run_ours() -> float:
        t0 = time.perf_counter()
        ours.embed(texts)
        return len(texts) / (time.perf_counter() - t0)

    def run_raw() -> float:
        t0 = time.perf_counter()
        raw.embed(texts)
        return len(texts) / (time.perf_counter() - t0)

    run_ours(), run_raw()
    a, b = [], []
    for _ in range(rounds):
        a.append(run_ours())
        b.append(run_raw())
    ours.close()
    return {"ours": statistics.median(a), "raw": statistics.median(b), "texts": n_texts,
            "parallel": settings.embedding_parallel}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="dev")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--skip-llm", action="store_true")
    ap.add_argument("--skip-embed", action="store_true")
    args = ap.parse_args(argv)

    from spark_voice.config import Settings

    s = Settings.load(profile=args.profile, LLM_THREADS=str(args.threads), EMBEDDING_THREADS=str(args.threads))
    rows = []
    if not args.skip_llm:
        r = bench_llm(s, args.rounds, args.max_tokens)
        rows.append(("LLM tokens/s", s.model_path("llm").name, r["ours"], r["raw"], 0.97,
                     f"{r['tokens']} tokens, same text: {r['same_text']}"))
    if not args.skip_embed:
        r = bench_embed(s, args.rounds, args.texts)
        rows.append(("embed sentences/s", s.model_path("embedding").name, r["ours"], r["raw"], 0.95,
                     f"{r['texts']} texts, EMBEDDING_PARALLEL={r['parallel']}"))
    print(f"threads={args.threads} rounds={args.rounds} (medians, A/B alternated)")
    print(f"{'metric':<18} {'model':<34} {'ours':>9} {'raw':>9} {'ratio':>7} {'target':>7}  note")
    ok = True
    for name, model, ours, raw, target, note in rows:
        ratio = ours / raw if raw else float("nan")
        ok = ok and ratio >= target
        print(f"{name:<18} {model:<34} {ours:9.1f} {raw:9.1f} {ratio:7.3f} {'>=' + str(target):>7}  {note}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
