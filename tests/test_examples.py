"""The examples run (mock profile): offline batch with resume and bad files, quickstart, embed_in_app."""

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


def test_offline_batch_resumes_after_a_crash(tmp_path):
    inp, out = tmp_path / "q", tmp_path / "answers"
    names = make_questions(inp)
    crashed = batch(inp, out, env={"SPARK_VOICE_BATCH_CRASH_AFTER": "1"})  # dies like kill -9 after one file
    assert crashed.returncode == 75, crashed.stderr
    first = manifest_records(out)
    assert len(first) == 1 and first[0]["status"] == "ok"
    # a crash in the middle of the next append leaves half a line
    with open(out / "manifest.jsonl", "ab") as f:
        f.write(b'{"file": "b.wav", "status": "o')

    resumed = batch(inp, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 already in" in resumed.stdout and "2 to do" in resumed.stdout
    assert "half-written" in resumed.stderr
    records = manifest_records(out)  # every line parses: the half line was cut off
    assert sorted(r["file"] for r in records) == sorted(names)  # each file exactly once
    assert records[0] == first[0]  # the first file was not redone
    for r in records:
        assert r["status"] == "ok" and r["request_id"] and r["transcript"] and r["answer"]
        assert set(r["latency_ms"]) >= {"final", "first_token", "tts_start", "end_to_end"}
        info = sf.info(str(out / r["audio"]))
        assert info.format == "OGG" and info.subtype == "OPUS" and info.duration > 0.1

    again = batch(inp, out)  # nothing left to do
    assert again.returncode == 0 and "0 to do" in again.stdout
    assert len(manifest_records(out)) == len(names)


def test_offline_batch_records_a_bad_file_and_goes_on(tmp_path):
    inp, out = tmp_path / "q", tmp_path / "answers"
    make_questions(inp, ("a.wav", "c.wav"))
    (inp / "b.wav").write_bytes(b"RIFF....this is not audio")
    (inp / "empty.ogg").write_bytes(b"")
    r = batch(inp, out)
    assert r.returncode == 1, r.stderr  # some files failed
    recs = {x["file"]: x for x in manifest_records(out)}
    assert set(recs) == {"a.wav", "b.wav", "c.wav", "empty.ogg"}
    assert recs["a.wav"]["status"] == "ok" and recs["c.wav"]["status"] == "ok"  # c comes after the bad one
    for bad in ("b.wav", "empty.ogg"):
        assert recs[bad]["status"] == "error" and recs[bad]["error_type"] == "AudioError"
        assert bad in recs[bad]["error"]
    # a rerun does not retry errors by default; --retry-errors does
    assert "0 to do" in batch(inp, out).stdout
    retry = batch(inp, out, "--retry-errors", "--no-speak")
    assert "2 to do" in retry.stdout and retry.returncode == 1
    assert len(manifest_records(out)) == 6


def test_offline_batch_rejects_a_missing_folder(tmp_path):
    r = batch(tmp_path / "nope", tmp_path / "out")
    assert r.returncode == 2 and "not a folder" in r.stderr


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
