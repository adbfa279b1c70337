"""spark-voice batch: single process (mock and dev profiles) and a local Ray cluster with a killed actor.

Resume is by content: an interrupted run resumes where it stopped, a changed file is redone, a
renamed one is not, a corrupt one is recorded and the job goes on. On Ray: two actors, one killed
mid-run and one file that kills its actor every time -> the job completes, every file exactly once
in the manifest, with its outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, model_file, need_module, speech_wav, tone
from spark_voice.batch import BatchError, parse_stages, run_batch
from spark_voice.config import Settings
from spark_voice.errors import ConfigError


def make_clips(folder: Path, names=("a.wav", "b.wav", "sub/c.flac")) -> list[str]:
    """Tone clips (the mock STT hears 'speech' by energy); each a different length, so a different hash."""
    for i, name in enumerate(names):
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        x = np.concatenate([np.zeros(1600, np.float32), tone(0.5 + 0.1 * i), np.zeros(4000, np.float32)])
        sf.write(p, x, 16000)
    return list(names)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def check_outputs(out: Path, rec: dict, stages=("stt", "llm", "tts")) -> None:
    assert rec["status"] == "ok", rec
    doc = json.loads((out / rec["outputs"]["transcript"]).read_text(encoding="utf-8"))
    assert doc["file"] == rec["file"] and doc["text"] and doc["duration_s"] > 0
    assert doc["segments"] and all(s["end"] >= s["start"] and s["text"] for s in doc["segments"])
    if "llm" in stages:
        assert (out / rec["outputs"]["answer"]).read_text(encoding="utf-8").strip() == rec["answer"] != ""
    if "tts" in stages:
        info = sf.info(str(out / rec["outputs"]["audio"]))
        assert info.format == "OGG" and info.subtype == "OPUS" and info.duration > 0.1
    else:
        assert "audio" not in rec["outputs"]
    assert set(rec["seconds"]) >= {"decode", "stt", "total"}
    assert len(rec["sha256"]) == 64 and rec["attempts"] >= 1


def cli(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "spark_voice", "batch", *args], capture_output=True, text=True,
                          env=env, cwd=str(cwd), timeout=timeout, check=False)


# ------------------------------------------------------------------ units
def test_parse_stages():
    assert parse_stages("stt") == ("stt",)
    assert parse_stages("stt,llm") == ("stt", "llm")
    assert parse_stages("all") == parse_stages("stt,llm,tts") == ("stt", "llm", "tts")
    assert parse_stages("stt,rag,llm,tts") == ("stt", "rag", "llm", "tts")
    for bad in ("llm", "stt,tts", "tts,stt,llm", "stt,foo", ""):
        with pytest.raises(ConfigError):
            parse_stages(bad)


def test_actor_sizing_keeps_threads_within_the_cluster(mock_settings):
    from spark_voice.batch.ray_exec import actor_settings_env, size_actors
    from spark_voice.batch.runner import make_spec

    s = mock_settings.model_copy(update={"llm_threads": 2, "stt_threads": 2, "tts_threads": 2})
    assert size_actors(s, ("stt", "llm"), 2, 2, 0) == (2, 1, 0.0)  # 2 actors share 2 cores: 1 each
    assert size_actors(s, ("stt", "llm"), None, 8, 0) == (4, 2, 0.0)  # auto: threads per actor, as many as fit
    assert size_actors(s, ("stt",), 1, 2, 0) == (1, 2, 0.0)
    cuda = s.model_copy(update={"backend": "cuda"})
    assert size_actors(cuda, ("stt",), None, 20, 1) == (1, 2, 1.0)  # one GPU: one actor holding it
    half = cuda.model_copy(update={"batch_gpus_per_actor": 0.5})
    assert size_actors(half, ("stt",), None, 20, 1) == (2, 2, 0.5)
    with pytest.raises(BatchError, match="more than the cluster"):
        size_actors(s.model_copy(update={"batch_cpus_per_actor": 2}), ("stt",), 3, 4, 0)
    spec = make_spec(s, Path("/tmp/x"), ("stt", "llm"))
    env = actor_settings_env(spec, 1)
    assert env["LLM_THREADS"] == env["STT_THREADS"] == env["TTS_THREADS"] == "1"
    assert Settings.load(spec.root_dir, environ={}, use_dotenv=False, **env).llm_threads == 1


# ------------------------------------------------------------------ single process, mock profile
def test_mock_batch_outputs_manifest_and_summary(tmp_path, mock_settings):
    inp, out = tmp_path / "in", tmp_path / "out"
    names = make_clips(inp)
    res = run_batch(inp, out, mock_settings, language="en", progress=False, echo=None)
    assert res.exit_code == 0
    recs = records(out)
    assert sorted(r["file"] for r in recs) == sorted(names)
    for r in recs:
        check_outputs(out, r)
    s = json.loads((out / "summary.json").read_text())
    assert s["processed"] == s["ok"] == 3 and s["failed"] == 0 and s["audio_s"] > 1.0
    assert set(s["rtf"]) >= {"stt", "llm", "tts", "job"}
    # prefixes of the pipeline: stt only writes transcripts
    out2 = tmp_path / "stt-only"
    res = run_batch(inp, out2, mock_settings, stages="stt", progress=False, echo=None)
    assert res.exit_code == 0
    for r in records(out2):
        check_outputs(out2, r, stages=("stt",))
        assert "answer" not in r["outputs"]
    # files done with fewer stages are done again when more are asked for, not the other way round
    res = run_batch(inp, out2, mock_settings, stages="stt,llm", progress=False, echo=None)
    assert res.summary.processed == 3 and res.summary.ok == 3
    res = run_batch(inp, out2, mock_settings, stages="stt", progress=False, echo=None)
    assert res.summary.processed == 0 and res.summary.done_before == 3


def test_resume_after_a_crash_changed_file_redone_renamed_not(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    names = make_clips(inp)
    common = ["--profile", "mock", "--language", "en", "--stages", "stt,llm"]
    crashed = cli(str(inp), str(out), *common, "--exit-after", "1", cwd=tmp_path)  # dies like kill -9
    assert crashed.returncode == 75, crashed.stderr
    first = records(out)
    assert len(first) == 1 and first[0]["status"] == "ok"
    with open(out / "manifest.jsonl", "ab") as f:  # a crash in the middle of the next append
        f.write(b'{"file": "b.wav", "status": "o')

    resumed = cli(str(inp), str(out), *common, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 already in" in resumed.stdout and "2 new or changed" in resumed.stdout
    assert "half-written" in resumed.stdout
    recs = records(out)  # every line parses: the half line was cut off
    assert sorted(r["file"] for r in recs) == sorted(names) and recs[0] == first[0]

    # changed content under the same name -> redone; a renamed file -> not redone
    x = np.concatenate([tone(1.3, freq=330.0), np.zeros(800, np.float32)])
    sf.write(inp / "a.wav", x, 16000)
    (inp / "sub" / "c.flac").rename(inp / "sub" / "c-renamed.flac")
    again = cli(str(inp), str(out), *common, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    recs = records(out)
    assert [r["file"] for r in recs[3:]] == ["a.wav"]  # only the changed file
    assert recs[3]["sha256"] != recs[0]["sha256"] and "1.3 seconds" in recs[3]["transcript"]
    assert recs[0]["language"] == "en"
    assert "1 processed" in again.stdout and "1 renamed" in again.stdout
    last = cli(str(inp), str(out), *common, cwd=tmp_path)
    assert "0 processed" in last.stdout and "2 done before, 1 renamed" in last.stdout
    assert len(records(out)) == 4


def test_corrupt_files_recorded_and_the_job_goes_on(tmp_path, mock_settings):
    inp, out = tmp_path / "in", tmp_path / "out"
    make_clips(inp, ("a.wav", "c.wav"))
    (inp / "b.wav").write_bytes(b"RIFF....this is not audio")
    (inp / "empty.ogg").write_bytes(b"")
    (inp / "notes.txt").write_text("not audio, not an input")
    res = run_batch(inp, out, mock_settings, language="en", progress=False, echo=None)
    assert res.exit_code == 1 and res.summary.ok == 2 and res.summary.failed == 2
    recs = {r["file"]: r for r in records(out)}
    assert set(recs) == {"a.wav", "b.wav", "c.wav", "empty.ogg"}
    for bad in ("b.wav", "empty.ogg"):
        assert recs[bad]["status"] == "error" and recs[bad]["error_type"] == "AudioError"
        assert recs[bad]["stage"] == "decode" and bad in recs[bad]["error"]
    assert {f["file"] for f in res.summary.failures} == {"b.wav", "empty.ogg"}
    # not retried by default; --retry-errors retries them
    res = run_batch(inp, out, mock_settings, language="en", progress=False, echo=None)
    assert res.summary.processed == 0 and res.summary.failed_before == 2
    res = run_batch(inp, out, mock_settings, language="en", progress=False, echo=None, retry_errors=True)
    assert res.summary.processed == 2 and res.exit_code == 1
    assert len(records(out)) == 6


def test_cli_errors_are_one_line(tmp_path):
    r = cli(str(tmp_path / "nope"), str(tmp_path / "out"), "--profile", "mock", cwd=tmp_path)
    assert r.returncode == 2 and "not a folder" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "in").mkdir()
    r = cli(str(tmp_path / "in"), str(tmp_path / "out"), "--profile", "mock", "--stages", "tts", cwd=tmp_path)
    assert r.returncode == 2 and "--stages" in r.stderr and "Traceback" not in r.stderr
    make_clips(tmp_path / "in", ("a.wav",))
    r = cli(str(tmp_path / "in"), str(tmp_path / "out"), "--profile", "mock", "--stages", "stt,rag,llm",
            "--set", f"RAG_INDEX_PATH={tmp_path / 'none.bin'}", cwd=tmp_path)
    assert r.returncode == 2 and "no usable index" in r.stderr and "Traceback" not in r.stderr


def test_without_ray_everything_else_works_and_ray_names_the_extra(tmp_path):
    """Ray is optional: `import spark_voice` and a local batch work without it; --ray says which extra."""
    inp = tmp_path / "in"
    make_clips(inp, ("a.wav",))
    code = f"""
import sys
sys.modules["ray"] = None  # as if Ray were not installed
import spark_voice, spark_voice.batch
from spark_voice.cli import main
assert main(["batch", {str(inp)!r}, {str(tmp_path / 'o1')!r}, "--profile", "mock", "--stages", "stt"]) == 0
sys.exit(main(["batch", {str(inp)!r}, {str(tmp_path / 'o2')!r}, "--profile", "mock", "--ray"]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2, r.stderr
    assert "pip install 'spark-voice[ray]'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o2" / "manifest.jsonl").exists()


# ------------------------------------------------------------------ single process, dev profile (real engines)
def speech_set(folder: Path, n: int) -> list[str]:
    """n different files of real speech: the bundled English question with a different lead-in each."""
    a, sr = sf.read(str(speech_wav("en")), dtype="float32")
    names = []
    for i in range(n):
        name = f"q{i}.wav"
        sf.write(folder / name, np.concatenate([np.zeros(int(sr * 0.05 * i), np.float32), a]), sr)
        names.append(name)
    return names


@pytest.fixture(scope="module")
def dev_batch_settings():
    s = Settings.load(ROOT, environ={}, profile="dev", STT_MODEL="ggml-tiny.en.bin", STT_LANGUAGE="en",
                      LLM_MAX_TOKENS="24", LLM_TEMPERATURE="0", LLM_SEED="0", RAG_ENABLED="off",
                      LLM_THREADS="2", STT_THREADS="2", TTS_THREADS="2")
    for role in ("stt", "llm"):
        model_file(s, role)
    need_module("onnxruntime", "tts")
    return s


@pytest.mark.real
@pytest.mark.slow
def test_dev_batch_real_engines_resume_changed_renamed_corrupt(tmp_path, dev_batch_settings):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    names = speech_set(inp, 2)
    (inp / "zz-broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")

    def stop_after_first(rec, _executor):  # Ctrl-C after the first file
        raise KeyboardInterrupt

    res = run_batch(inp, out, dev_batch_settings, progress=False, echo=None, on_record=stop_after_first)
    assert res.exit_code == 130 and res.summary.interrupted and len(records(out)) == 1
    res = run_batch(inp, out, dev_batch_settings, progress=False, echo=None)
    assert res.summary.done_before == 1 and res.summary.processed == 2
    recs = {r["file"]: r for r in records(out)}
    assert set(recs) == {"zz-broken.wav", *names}
    assert recs["zz-broken.wav"]["status"] == "error" and recs["zz-broken.wav"]["error_type"] == "AudioError"
    for name in names:
        r = recs[name]
        check_outputs(out, r)
        assert "capital" in r["transcript"].lower() and "france" in r["transcript"].lower()
        assert r["seconds"]["stt"] > 0 and r["seconds"]["llm"] > 0 and r["seconds"]["tts"] > 0
    # renamed: nothing to do; changed: redone
    (inp / names[0]).rename(inp / "moved.wav")
    os.utime(inp / names[1], ns=(1, 1))  # touched, same content: hashed, found, not redone
    res = run_batch(inp, out, dev_batch_settings, stages="stt", progress=False, echo=None)
    assert res.summary.processed == 0 and res.summary.renamed == 1 and res.summary.done_before == 1
    a, sr = sf.read(str(inp / names[1]), dtype="float32")
    sf.write(inp / names[1], a[: len(a) // 2], sr)  # the first half of the question
    res = run_batch(inp, out, dev_batch_settings, stages="stt", progress=False, echo=None)
    assert res.summary.processed == 1 and res.summary.ok == 1
    last = records(out)[-1]
    assert last["file"] == names[1] and last["sha256"] != recs[names[1]]["sha256"]
    assert res.summary.rtf()["stt"] > 0


# ------------------------------------------------------------------ Ray, a local cluster on loopback
@pytest.fixture(scope="module")
def ray_cluster():
    need_module("ray", "ray")
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=80 * 1024 * 1024,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}, logging_level="WARNING",
             _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_two_actors_one_killed_mid_run_each_file_once(tmp_path, ray_cluster):
    ray = ray_cluster
    inp, out = tmp_path / "in", tmp_path / "out"
    names = make_clips(inp, tuple(f"q{i}.wav" for i in range(6)) + ("zz-poison.wav",))
    s = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="mock", BATCH_MAX_RETRIES="1",
                      BATCH_ACTOR_RESTARTS="4", BATCH_INFLIGHT_PER_ACTOR="2")
    seen: dict = {"killed": None, "max_inflight": 0}

    def kill_one(rec, ex):
        seen["max_inflight"] = max(seen["max_inflight"], sum(ex.inflight))
        if seen["killed"] is None:  # after the first commit: kill the busiest other actor mid-file
            idx = max((i for i in range(len(ex.actors)) if i != rec.get("actor")), key=lambda i: ex.inflight[i])
            seen["inflight_at_kill"] = ex.inflight[idx]
            ray.kill(ex.actors[idx], no_restart=False)
            seen["killed"] = idx
        seen["retried"] = ex.retried

    # every file takes 0.4 s (so the kill lands mid-file); zz-poison.wav kills its actor each time
    res = run_batch(inp, out, s, stages="stt,llm,tts", language="en", ray=True, actors=2, progress=False, echo=None,
                    on_record=kill_one, debug={"sleep_s": 0.4, "crash_on": "poison"})
    recs = records(out)
    files = [r["file"] for r in recs]
    assert sorted(files) == sorted(names) and len(files) == len(set(files))  # no duplicate, no missing file
    by = {r["file"]: r for r in recs}
    poison = by.pop("zz-poison.wav")
    assert poison["status"] == "error" and poison["error_type"] == "WorkerDied"
    assert poison["attempts"] == 2  # 1 + BATCH_MAX_RETRIES
    for rec in by.values():
        check_outputs(out, rec)
    assert any(r["attempts"] == 2 for r in by.values())  # the file the killed actor was working on, redone
    assert res.summary.ok == 6 and res.summary.failed == 1 and res.exit_code == 1
    assert res.summary.resent >= 2 and res.summary.duplicates == 0
    assert any(line.startswith("recovery:") for line in res.summary.lines())
    assert seen["killed"] is not None and seen["inflight_at_kill"] >= 1 and seen["retried"] >= 1
    assert seen["max_inflight"] <= 2 * 2  # BATCH_INFLIGHT_PER_ACTOR x actors: the folder is streamed
    # a rerun finds everything done; nothing is written twice
    again = run_batch(inp, out, s, stages="stt,llm,tts", ray=True, actors=2, progress=False, echo=None)
    assert again.summary.processed == 0 and len(records(out)) == len(names)


def test_ray_actors_that_cannot_start_stop_the_job_with_the_reason(tmp_path, ray_cluster):
    inp = tmp_path / "in"
    make_clips(inp, ("a.wav",))
    s = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="mock", RAG_INDEX_PATH=str(tmp_path / "no.bin"))
    with pytest.raises(BatchError, match="no Ray actor could start.*no usable index"):
        run_batch(inp, tmp_path / "out", s, stages="stt,rag,llm", ray=True, actors=1, progress=False, echo=None)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


@pytest.mark.real
@pytest.mark.slow
def test_ray_dev_profile_two_actors_real_engines(tmp_path, ray_cluster, dev_batch_settings):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    names = speech_set(inp, 3)
    res = run_batch(inp, out, dev_batch_settings, stages="stt,llm", ray=True, actors=2, progress=False, echo=None)
    assert res.exit_code == 0 and res.summary.workers == 2 and res.summary.ok == 3
    recs = records(out)
    assert sorted(r["file"] for r in recs) == names
    for r in recs:
        check_outputs(out, r, stages=("stt", "llm"))
        assert "capital" in r["transcript"].lower() and "france" in r["transcript"].lower()
        assert r["seconds"]["stt"] > 0 and r["seconds"]["llm"] > 0
    rtf = res.summary.rtf()
    assert rtf["stt"] > 0 and rtf["llm"] > 0 and rtf["job"] > 0
