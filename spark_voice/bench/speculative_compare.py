"""Speculative start on vs off, side by side in one run (`spark-voice bench --compare`,
`benchmarks/bench_speculative.py`).

The same clips go through the new turn-taking path (Smart Turn, fitted final, eager chunker) with
TURN_SPECULATIVE=on and =off, alternating per clip and round, at real-time pace. Each turn starts
from the same state: no conversation history and (when the LLM has ``reset_cache``) an empty KV
cache, so both variants pay the whole prefill. Reported per language, p50: ``eos_first_audio``
(silence the endpointing waited + speech_end -> first tts.chunk), ``first_audio`` (speech_end ->
first tts.chunk), ``final`` (speech_end -> stt.final: what the final decode loses when it shares the
cores with the LLM) and ``tts_start`` (stt.final -> first tts.chunk: what the speculation gains),
plus the speculation's hits, misses and turns without one (partials not stable).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..types import SAMPLE_RATE_STT, Audio
from .turn_compare import TAIL_S, _p50, _ratio, _turn_metrics, load_clip, use_variant

KEYS = ("eos_first_audio", "first_audio", "final", "tts_start")


def compare_speculative(pipe, settings, clips: dict[str, Audio], rounds: int,
                        paced: Callable[[Any], Any] | None, printer: Callable[[str], None] = print) -> dict[str, Any]:
    """TURN_SPECULATIVE on vs off on the same clips (see the module docstring)."""
    inner = getattr(pipe.stt, "_stt", pipe.stt)
    pipe.stt = paced(inner) if paced is not None else inner
    saved = pipe.settings
    rows: list[dict[str, Any]] = []
    try:
        use_variant(pipe, settings, True)
        base = pipe.settings
        for r in range(rounds):
            for name, audio in clips.items():
                for on in ((True, False) if r % 2 == 0 else (False, True)):
                    pipe.settings = base.model_copy(update={"turn_speculative": "on" if on else "off"})
                    pipe.language = name.rsplit("_", 1)[-1]
                    pipe.reset()
                    if hasattr(pipe.llm, "reset_cache"):
                        pipe.llm.reset_cache()
                    t = pipe.run(audio, streaming_stt=True, request_id=f"spec-{name}-{'on' if on else 'off'}-{r}")
                    guess = next((e.text for e in t.events if e.stage == "llm.speculative"), "")
                    row = {"clip": name, "spec": "on" if on else "off", "round": r,
                           "outcome": t.speculative or "none", "speculated_on": guess, **_turn_metrics(t)}
                    rows.append(row)
                    printer(f"  [spec {row['spec']:>3}] {name}: " + ", ".join(
                        f"{k} {row[k]:.0f}" for k in KEYS if row.get(k) is not None)
                        + (f" ms, {row['outcome']}" + (f" ({guess!r} -> {t.transcript!r})" if guess else "")
                           if on else " ms"))
    finally:
        pipe.stt = inner
        pipe.settings = saved
    out: dict[str, Any] = {"rounds": rounds, "realtime": paced is not None, "turns": rows}
    for lang in ("en", "ja"):
        for key in KEYS:
            vals = {v: [x.get(key) for x in rows if x["spec"] == v and x["clip"].endswith("_" + lang)]
                    for v in ("on", "off")}
            p_on, p_off = _p50(vals["on"]), _p50(vals["off"])
            if p_on is not None or p_off is not None:
                out.setdefault(lang, {})[key] = {"on_p50": p_on, "off_p50": p_off, "ratio": _ratio(p_on, p_off)}
        hit_rows = [x for x in rows if x["spec"] == "on" and x["clip"].endswith("_" + lang)]
        if hit_rows:
            out.setdefault(lang, {})["outcomes"] = {o: sum(1 for x in hit_rows if x["outcome"] == o)
                                                    for o in ("hit", "miss", "none")}
    ons = [x for x in rows if x["spec"] == "on"]
    out["hits"] = sum(1 for x in ons if x["outcome"] == "hit")
    out["misses"] = sum(1 for x in ons if x["outcome"] == "miss")
    out["none"] = sum(1 for x in ons if x["outcome"] == "none")
    return out


def run_speculative(pipe, settings, *, rounds: int = 3, paced: Callable[[Any], Any] | None = None,
                    printer: Callable[[str], None] = print) -> dict[str, Any]:
    """:func:`compare_speculative` on the bundled question and pause clips (with a silent tail)."""
    tail = np.zeros(int(TAIL_S * SAMPLE_RATE_STT), np.float32)
    clips = {n: Audio(np.concatenate([a.samples, tail]), SAMPLE_RATE_STT)
             for n in ("question_en", "pause_en", "question_ja", "pause_ja") if (a := load_clip(n)) is not None}
    printer(f"compare: speculative start on vs off, {rounds} round(s), "
            f"{'real-time pace' if paced is not None else 'as fast as possible'}")
    return compare_speculative(pipe, settings, clips, rounds, paced, printer)


def format_speculative(c: dict[str, Any]) -> list[str]:
    lines = [f"  speculative start (TURN_SPECULATIVE on vs off, ratio = on / off): hits {c['hits']}, "
             f"misses {c['misses']}, no speculation {c['none']}"]
    for lang, label in (("en", "English"), ("ja", "Japanese")):
        d = c.get(lang) or {}
        for key, what in (("eos_first_audio", "end of speech -> first audio"),
                          ("final", "final decode (shares the cores when on)"),
                          ("tts_start", "final -> first audio")):
            if key in d:
                x = d[key]
                lines.append(f"    {label:<8} {what:<40} on {x['on_p50']} ms  off {x['off_p50']} ms  "
                             f"ratio {x['ratio']}")
        if "outcomes" in d:
            o = d["outcomes"]
            lines.append(f"    {label:<8} hits {o['hit']}, misses {o['miss']}, no speculation {o['none']}")
    return lines
