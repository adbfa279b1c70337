"""The examples run (mock profile): offline batch (a wrapper of `spark-voice batch`), quickstart, embed_in_app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from conftest import ROOT, tone

EXAMPLES = ROOT / "examples"
BATCH = EXAMPLES / "offline_batch.py"


def run_example(script: Path, *args: str, env: dict | None = None, cwd: Path | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})}
    return subprocess.run([sys.executable, str(script), *args], check=False, capture_output=True, text=True, env=e,
                          cwd=str(cwd or ROOT), timeout=timeout)


def make_questions(folder: Path, names=("a.wav", "b.wav", "sub/c.flac")) -> list[str]:
    for i, name in enumerate(names):
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        x = np.concatenate([np.zeros(1600, np.float32), tone(0.5 + 0.2 * i), np.zeros(4000, np.float32)])
        sf.write(p, x, 16000)
    return list(names)


def manifest_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def batch(inp: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_example(BATCH, str(inp), "--out", str(out), "--profile", "mock", "--language", "en", *extra, env=env)


def test_offline_batch_is_a_wrapper_of_spark_voice_batch(tmp_path):
    """The example delegates to `spark-voice batch` (tests/test_batch.py tests the job itself)."""
    inp, out = tmp_path / "q", tmp_path / "answers"
    names = make_questions(inp)
    r = batch(inp, out, "--no-speak")
    assert r.returncode == 0, r.stderr
    records = manifest_records(out)
    assert sorted(r["file"] for r in records) == sorted(names)
    assert all(r["status"] == "ok" and r["answer"] and "audio" not in r["outputs"] for r in records)
    again = batch(inp, out, "--no-speak")
    assert again.returncode == 0 and "3 already in" in again.stdout
    assert batch(tmp_path / "nope", tmp_path / "out").returncode == 2


def test_quickstart_runs_in_mock_profile(tmp_path):
    clip = tmp_path / "question.wav"
    make_questions(tmp_path, ("question.wav",))
    r = run_example(EXAMPLES / "quickstart.py", "--profile", "mock", "--audio", str(clip), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    for needle in ("profile mock", "transcript:", "answer:", "latency ms:", "stt.partial", "tts.chunk",
                   "turn.done", "p50"):
        assert needle in r.stdout
    assert sf.info(str(tmp_path / "quickstart_answer.ogg")).duration > 0


def test_embed_in_app_runs_with_a_custom_llm(tmp_path):
    clip = tmp_path / "question.wav"
    make_questions(tmp_path, ("question.wav",))
    r = run_example(EXAMPLES / "embed_in_app.py", "--profile", "mock", "--audio", str(clip))
    assert r.returncode == 0, r.stderr
    assert "We are open from nine to six" in r.stdout  # the app's own FAQ model answered
    assert "[speaker] playing" in r.stdout  # through the configured (mock) TTS
    assert "cancelled when the user left: True" in r.stdout
