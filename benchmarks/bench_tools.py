"""Tools benchmark: what tool calling costs, as ratios measured in one run.

    .venv/bin/python benchmarks/bench_tools.py [--n 5] [--out results.json]

1. Harmony parser: tokens/s of HarmonyParser.feed on a recorded gpt-oss stream (analysis, preamble,
   call) vs a bare UTF-8 decode of the same pieces (the floor any streaming needs).
2. Grammar: ms per generated token of SmolLM2 writing tool arguments under the JSON-schema grammar
   (tool_choice = a named function) vs free generation of as many tokens (same prompt, greedy).
3. Tool loop: ms of a mock voice turn that calls a Python tool vs one that does not (same answer
   length), i.e. the loop's own overhead (two LLM rounds, events, the call in a worker thread).
Prints one JSON object (and writes it to --out).
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spark_voice.harmony import HarmonyParser, text_tokens  # noqa: E402

STREAM = ("<|channel|>analysis<|message|>The user wants the weather in Tokyo; call the tool first.<|end|>"
          "<|start|>assistant<|channel|>commentary<|message|>確認します。Let me check the forecast.<|end|>"
          "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
          "<|message|>{\"city\": \"Tokyo\", \"days\": 2}<|call|>")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "days": {"type": "integer", "minimum": 1}},
                   "required": ["city", "days"]}}}]


def _pieces() -> list[tuple[int, bytes]]:
    """The stream as tokens: markers by id, text cut into 3-byte pieces (like BPE tokens)."""
    out: list[tuple[int, bytes]] = []
    for tok, piece in text_tokens(STREAM):
        out += [(tok, piece)] if tok != -1 else [(-1, piece[i:i + 3]) for i in range(0, len(piece), 3)]
    return out


def bench_parser(reps: int = 2000) -> dict:
    toks = _pieces()
    t0 = time.perf_counter()
    for _ in range(reps):
        dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        for _, piece in toks:
            dec.decode(piece)
    floor = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(reps):
        p = HarmonyParser()
        for tok, piece in toks:
            p.feed(tok, piece)
    ours = time.perf_counter() - t0
    n = reps * len(toks)
    return {"tokens": n, "decode_tok_per_s": round(n / floor), "parser_tok_per_s": round(n / ours),
            "parser_us_per_token": round(ours / n * 1e6, 3), "ratio_parser_vs_decode": round(floor / ours, 3)}


def bench_grammar(n: int) -> dict | None:
    from spark_voice.backends.llm_llama_cpp import LlamaCppLLM
    from spark_voice.config import Settings

    s = Settings.load(ROOT, environ={}, profile="dev", LLM_THREADS="2")
    if not s.model_path("llm").exists():
        return None
    llm = LlamaCppLLM.from_settings(s)
    msgs = [{"role": "user", "content": "What is the weather in Tokyo for the next two days?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    free_ms, gram_ms = [], []
    try:
        list(llm.stream_chat(msgs, max_tokens=4, temperature=0.0))  # load + warm
        for _ in range(n):
            st: dict = {}
            t0 = time.perf_counter()
            list(llm.stream_chat(msgs, tools=TOOLS, tool_choice=named, max_tokens=48, temperature=0.0, stats=st))
            k = st["completion_tokens"]
            gram_ms.append((time.perf_counter() - t0 - (st["ttft_s"] or 0)) * 1000 / max(k - 1, 1))
            st2: dict = {}
            t0 = time.perf_counter()
            list(llm.stream_chat(msgs, tools=TOOLS, tool_choice="none", max_tokens=k, temperature=0.0, stats=st2))
            free_ms.append((time.perf_counter() - t0 - (st2["ttft_s"] or 0)) * 1000
                           / max(st2["completion_tokens"] - 1, 1))
    finally:
        llm.close()
    g, f = statistics.median(gram_ms), statistics.median(free_ms)
    return {"model": s.llm_model, "ms_per_token_grammar": round(g, 3), "ms_per_token_free": round(f, 3),
            "ratio_free_vs_grammar": round(f / g, 3)}


def bench_loop(n: int) -> dict:
    from spark_voice.backends.mock import MockLLM
    from spark_voice.config import Settings
    from spark_voice.pipeline import VoicePipeline

    s = Settings.load(environ={}, use_dotenv=False, profile="mock")

    def order_status(order: str) -> str:
        """Status of an order."""
        return "shipped"

    answer = "The tool said: shipped"
    plain = VoicePipeline(llm=MockLLM(answer=answer), settings=s, history_turns=0)
    tools = VoicePipeline(llm=MockLLM(), settings=s, tools=[order_status], history_turns=0)
    a, b = [], []
    for _ in range(n * 20):
        t0 = time.perf_counter()
        plain.run(text="order status please", speak=False)
        a.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        turn = tools.run(text="order status please", speak=False)
        b.append((time.perf_counter() - t0) * 1000)
        assert turn.tool_calls and "shipped" in turn.answer
    pa, pb = statistics.median(a), statistics.median(b)
    return {"turn_ms_without_tool": round(pa, 3), "turn_ms_with_tool": round(pb, 3),
            "tool_loop_overhead_ms": round(pb - pa, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    report = {"parser": bench_parser(), "grammar": bench_grammar(args.n), "tool_loop": bench_loop(args.n)}
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
