"""`spark-voice doctor`: runs, JSON shape, fix lines for missing models / CPU-only bindings / thread
oversubscription, nvidia-smi parsing (a fake nvidia-smi on PATH), and /health's gpu_warnings."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from spark_voice import doctor
from spark_voice.config import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    shutil.copy(ROOT / ".env.default", tmp_path / ".env.default")
    for var in ("LLM_MODEL", "STT_MODEL", "EMBEDDING_MODEL", "TTS_MODEL_LOCAL_DIR", "SPARK_VOICE_PROFILE", "BACKEND"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPARK_VOICE_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def fake_bindings(monkeypatch):
    """Bindings as a CPU-only build reports them (no import of the real ones)."""
    monkeypatch.setattr(doctor, "llama_binding", lambda: {"installed": True, "version": "0.3.36",
                                                          "gpu_offload": False, "error": None})
    monkeypatch.setattr(doctor, "whisper_binding", lambda: {"installed": True, "version": "1.5.1", "cuda": False,
                                                            "system_info": "WHISPER : CPU : AVX2 = 1 |",
                                                            "error": None})


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """An nvidia-smi on PATH that reports a DGX Spark GPU."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "nvidia-smi"
    exe.write_text("#!/bin/sh\necho 'NVIDIA GB10, 12.1, 580.95.05, 122502 MiB'\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return exe


def test_collect_mock_profile_shape(mock_settings):
    r = doctor.collect(mock_settings, gpu=False)
    assert set(r) >= {"python", "platform", "settings", "packages", "bindings", "gpu", "models", "threads",
                      "problems", "ok"}
    assert r["python"]["ok"] and r["packages"]["spark-voice"]
    assert r["models"] == []  # mock engines need no file
    assert r["ok"] is True  # warnings (threads on a small box) do not fail
    assert all(set(p) == {"check", "severity", "message", "fix"} for p in r["problems"])
    assert "no problems found" in doctor.format_text(r) or "problem(s):" in doctor.format_text(r)


def test_cli_json(home, capsys):
    from spark_voice.cli import main

    rc = main(["doctor", "--json", "--profile", "mock", "--no-gpu"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["ok"] is True and data["settings"]["profile"] == "mock"
    assert data["threads"]["cpu_count"] == os.cpu_count()
    assert data["bindings"]["llama_cpp"].keys() >= {"installed", "version", "gpu_offload"}
    assert data["bindings"]["whisper_cpp"].keys() >= {"installed", "version", "cuda", "system_info"}


def test_missing_model_has_fix_line(home, fake_bindings, capsys):
    from spark_voice.cli import main

    rc = main(["doctor", "--profile", "prod", "--no-gpu", "--set", "TTS_PROVIDER=mock", "--set", "TTS_FALLBACK=none"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "[error] model:llm" in out and "gpt-oss-20b-mxfp4.gguf: no such file" in out
    assert "fix: put the model at" in out and "spark-voice models use llm" in out
    s = Settings.load(home, environ={}, profile="prod", TTS_PROVIDER="mock", TTS_FALLBACK="none")
    r = doctor.collect(s, gpu=False)
    llm = next(p for p in r["problems"] if p["check"] == "model:llm")
    assert llm["severity"] == "error" and "models use llm" in llm["fix"]
    assert not r["ok"]


def test_dev_profile_missing_model_says_prepare(home, fake_bindings):
    s = Settings.load(home, environ={}, profile="dev", TTS_PROVIDER="mock", TTS_FALLBACK="none")
    r = doctor.collect(s, gpu=False)
    fixes = {p["check"]: p["fix"] for p in r["problems"]}
    assert "models prepare --small --role llm" in fixes["model:llm"]
    assert "models prepare --small --role stt" in fixes["model:stt"]


def test_cuda_backend_with_cpu_bindings(home, fake_bindings, fake_nvidia_smi):
    s = Settings.load(home, environ={}, profile="prod", LLM_CUDA_ARCH="90")
    warns = doctor.gpu_warnings(s)
    assert len(warns) == 2 and "llama-cpp-python 0.3.36 was built without GPU offload" in warns[0]
    assert "pywhispercpp 1.5.1 was built without CUDA" in warns[1]
    r = doctor.collect(s, models=False)
    assert r["gpu"]["devices"][0] == {"name": "NVIDIA GB10", "compute_cap": "12.1", "arch": "sm_121",
                                      "driver": "580.95.05", "memory": "122502 MiB"}
    checks = {p["check"]: p for p in r["problems"]}
    assert "bindings.build --preset cuda-sm121" in checks["gpu_build"]["fix"]
    assert "LLM_CUDA_ARCH=121" in checks["cuda_arch"]["fix"]
    assert "gpu" not in checks  # a device is visible
    text = doctor.format_text(r)
    assert "NVIDIA GB10 (compute 12.1, sm_121)" in text and "GPU offload: no" in text
    # BACKEND=cpu: nothing to warn about
    assert doctor.gpu_warnings(Settings.load(home, environ={}, profile="dev")) == []


def test_no_gpu_visible_warns(home, fake_bindings, monkeypatch):
    monkeypatch.setattr(doctor.shutil, "which", lambda name, *a, **k: None)
    s = Settings.load(home, environ={}, profile="prod")
    r = doctor.collect(s, models=False)
    gpu = next(p for p in r["problems"] if p["check"] == "gpu")
    assert "BACKEND=cpu" in gpu["fix"] and r["gpu"]["error"] == "nvidia-smi not on PATH"


def test_thread_oversubscription(home, fake_bindings, monkeypatch):
    s = Settings.load(home, environ={}, profile="dev", LLM_THREADS=str((os.cpu_count() or 1) + 1))
    r = doctor.collect(s, gpu=False, models=False)
    t = next(p for p in r["problems"] if p["check"] == "threads")
    assert t["severity"] == "warning" and "at most" in t["fix"]
    r = doctor.collect(Settings.load(home, environ={}, profile="mock"), gpu=False, models=False,
                       environ={"OMP_WAIT_POLICY": "active"})
    assert any(p["check"] == "omp" and "passive" in p["fix"] for p in r["problems"])


def test_real_bindings_probe():
    """The installed bindings answer (whatever they were built with)."""
    lb = doctor.llama_binding()
    if lb["installed"]:
        assert isinstance(lb["gpu_offload"], bool)
    wb = doctor.whisper_binding()
    if wb["installed"]:
        assert isinstance(wb["cuda"], bool) and "WHISPER" in wb["system_info"]
