"""``latency.png``: per-turn latencies per stage, and pipeline vs floors (needs matplotlib, the
``bench`` extra, imported when a plot is drawn: without it :func:`plot_png` raises ImportError)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["plot_png"]


def plot_png(report: dict[str, Any], rows: list[dict[str, Any]], stages: Sequence[str]) -> bytes:
    """Per-turn latencies per stage (dots, p50 and p95 ticks) and pipeline vs floors (bars).

    `stages`: the per-turn metrics to plot, in order (those missing from the report are skipped)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    run = report["run"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    names = [m for m in stages if m in report["metrics"]]
    rng = np.random.default_rng(0)
    langs = sorted({r["language"] for r in rows})
    colors = {lang: f"C{i}" for i, lang in enumerate(langs)}
    for x, m in enumerate(names):
        for lang in langs:
            vals = [r[m] for r in rows if r.get(m) is not None and r["language"] == lang]
            ax1.scatter(x + rng.uniform(-0.12, 0.12, len(vals)), vals, s=14, alpha=0.7, color=colors[lang],
                        label=lang if x == 0 else None)
        st = report["metrics"][m]
        ax1.hlines([st["p50_ms"]], x - 0.3, x + 0.3, colors="k", linewidth=2)
        ax1.hlines([st["p95_ms"]], x - 0.3, x + 0.3, colors="r", linewidth=1.5, linestyles="dashed")
    ax1.set_xticks(range(len(names)), names)
    ax1.set_ylabel("ms")
    vals = [r[m] for r in rows for m in names if isinstance(r.get(m), (int, float)) and r[m] > 0]
    if vals and max(vals) / max(min(vals), 1e-3) > 200:
        ax1.set_yscale("log")
    ax1.set_title(f"per-turn latency ({report['n']} turns; black p50, red dashed p95)")
    if len(langs) > 1:
        ax1.legend(title="clip language", fontsize=8)
    ax1.grid(axis="y", alpha=0.3)

    bars: list[tuple[str, float, float]] = []
    ov = report.get("overhead", {})
    for key, label in (("stt", "STT"), ("answer_to_first_audio", "LLM+TTS"), ("first_audio", "voice->voice")):
        if key in ov:
            bars.append((label, ov[key]["pipeline_p50_ms"], ov[key]["floor_p50_ms"]))
    sv = report.get("streaming_vs_sequential", {})
    if "seq_first_audio" in sv:
        bars.append(("first audio:\nstream vs seq", sv["seq_first_audio"]["pipeline_p50_ms"],
                     sv["seq_first_audio"]["floor_p50_ms"]))
    if bars:
        pos = np.arange(len(bars))
        ax2.bar(pos - 0.2, [b[1] for b in bars], 0.4, label="pipeline (streaming)")
        ax2.bar(pos + 0.2, [b[2] for b in bars], 0.4, label="floor / sequential")
        ax2.set_xticks(pos, [b[0] for b in bars], fontsize=8)
        ax2.set_ylabel("p50 ms")
        ax2.legend(fontsize=8)
        ax2.set_title("pipeline vs raw floors, streaming vs sequential")
    else:
        ax2.text(0.5, 0.5, "floors not measured (--no-floors)", ha="center", va="center")
        ax2.set_axis_off()
    fig.suptitle(f"spark-voice bench  {run['timestamp']}  commit {run.get('commit', '?')}  profile {run['profile']}"
                 f"  {'real-time' if run['realtime'] else 'fast'}  cpu x{run['cpu_count']}"
                 f"  load {run.get('loadavg_1m_end')}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
