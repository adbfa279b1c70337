"""The real Fish Speech path on CPU: our adapter -> fish-speech d3df505's own launch_thread_safe_queue,
DAC load_model and TTSInferenceEngine.inference, with a tiny random-weight checkpoint in the S1 mini
layout, in a separate cached environment (scripts/fish_env.sh: CPU torch + what fish-speech's
inference imports; built once, a few minutes, then reused).

One driver process (tests/fish_driver.py, in the fish venv) runs every scenario and writes JSON;
the tests below assert on it. It needs the vendored fish-speech tree (../shared/vendor/fish-speech
or FISH_SPEECH_SRC): a skip on a developer box without it, a failure in CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import IN_CI, ROOT, need

pytestmark = [pytest.mark.real, pytest.mark.slow]

SRC = Path(os.environ.get("FISH_SPEECH_SRC", ROOT.parent / "shared" / "vendor" / "fish-speech"))
CACHE = Path(os.environ.get("SPARK_VOICE_CACHE", ROOT / ".cache"))
TESTS = ROOT / "tests"


def _env_for_fish() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="passive", ORT_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", SPARK_VOICE_ROOT=str(ROOT))
    return env


@pytest.fixture(scope="module")
def fish_python() -> str:
    need((SRC / ".project-root").is_file(), f"no vendored fish-speech tree at {SRC} (set FISH_SPEECH_SRC)")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "fish_env.sh")], capture_output=True, text=True,
                       timeout=2400, env={**os.environ, "FISH_SPEECH_SRC": str(SRC)})
    assert r.returncode == 0, f"scripts/fish_env.sh failed:\n{r.stderr[-4000:]}"
    return r.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tiny_checkpoint(fish_python) -> Path:
    """The tiny S1-mini-layout checkpoint, cached by the hash of its generator and codec config."""
    h = hashlib.sha256()
    for f in (TESTS / "fish_tiny_checkpoint.py", *sorted((TESTS / "fixtures" / "fish").glob("*.yaml"))):
        h.update(f.read_bytes())
    out = CACHE / f"fish-tiny-s1-{h.hexdigest()[:12]}"
    if not (out / "codec.pth").is_file():
        r = subprocess.run([fish_python, str(TESTS / "fish_tiny_checkpoint.py"), str(out)], capture_output=True,
                           text=True, timeout=900, env=_env_for_fish(), cwd="/")
        assert r.returncode == 0, f"checkpoint generator failed:\n{r.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def run(fish_python, tiny_checkpoint, tmp_path_factory) -> dict:
    piper = ROOT / "models" / "tts" / "piper"
    need(any(piper.glob("*.onnx")),
         f"{piper}: no piper voice (the CPU fallback); run `spark-voice models prepare --small`")
    work = tmp_path_factory.mktemp("fish")
    out = work / "result.json"
    r = subprocess.run([fish_python, str(TESTS / "fish_driver.py"), str(tiny_checkpoint), str(work / "w"), str(out)],
                       capture_output=True, text=True, timeout=1200, env=_env_for_fish(), cwd=str(work))
    assert r.returncode == 0 and out.is_file(), f"fish driver failed (rc {r.returncode}):\n{r.stderr[-6000:]}"
    return json.loads(out.read_text(encoding="utf-8"))


def ok(run: dict, name: str) -> dict:
    res = run[name]
    assert "error" not in res, f"{name}: {res.get('error')}: {res.get('message')}\n{res.get('trace', '')}"
    return res


# --------------------------------------------------------------------------- the engine, for real
def test_loads_the_real_engine_from_the_pinned_tree(run):
    res = ok(run, "load")
    assert res["engine"] == "fish_speech.inference_engine.TTSInferenceEngine"
    assert f"fish-speech-{'d3df50503b36314a964f66cac1af1e19e95bcfa3'}" in res["fish_file"]  # the pinned copy
    assert res["sample_rate"] == res["codec_rate"] == 44100 and res["device"] == "cpu"
    assert res["voices"] == {"alice": "ja", "bob": "en", "default": "ja"}
    # the broken reference is skipped with a warning that names the file and the reason
    assert any("'broken'" in w and "voice.wav" in w and "cannot decode audio" in w for w in res["warnings"])


def test_default_voice_streams_one_sentence_at_a_time(run):
    res = ok(run, "default_voice_streaming")
    assert res["sentences"] == ["Hello there.", "How are you today?", "I am fine."]
    assert res["n"] == 3 and res["rates"] == [44100] and res["finite"] and res["peak"] > 0
    assert all(n >= 2048 for n in res["samples"])  # at least one codec frame (512 x 4 samples)
    # the first chunk came while only the first sentence had been requested
    assert res["requests_at_first_chunk"] == 1 and res["requests_total"] == 3
    assert res["at_s"] == sorted(res["at_s"])
    # and our pipeline resamples and encodes it (opus at 48 kHz, wav/pcm at the asked rate)
    enc = res["encoded"]
    assert enc["opus"][1] == 48000 and enc["opus"][0] > 100
    assert enc["wav"][1] == 24000 and enc["wav"][0] == enc["pcm"][0] + 44


def test_requests_carry_the_real_defaults_and_streaming(run):
    reqs = run["requests"]
    assert reqs and all(r["streaming"] for r in reqs)
    assert {(r["top_p"], r["temperature"], r["repetition_penalty"], r["chunk_length"]) for r in reqs} == \
        {(0.8, 0.8, 1.1, 200)}


def test_reference_voices(run):
    res = ok(run, "reference_voices")
    for voice in ("alice", "bob"):
        assert res[voice]["n"] >= 1 and res[voice]["rates"] == [44100] and res[voice]["finite"]
        assert res[voice]["requests"] == 1
    assert res["encoded_references"] == 2  # both references went through the real codec encoder
    assert res["ja_default_refs"] == 1  # Japanese text, no voice named -> the Japanese reference


def test_bad_reference_file_is_a_clear_error(run):
    res = ok(run, "bad_reference_at_request")
    assert res["raised"] == "AudioError"
    assert "sample.flac" in res["message"] and "cannot decode audio" in res["message"]


def test_load_failure_inside_the_worker_is_bounded_and_clear(run):
    res = ok(run, "worker_load_failure")
    assert res["raised"] == "EngineLoadError" and "BackendUnavailable" in res["mro"]
    assert "failed to load in its worker thread" in res["message"] and "bad-ckpt" in res["message"]
    assert res["elapsed"] < 120  # well within TTS_FISH_LOAD_TIMEOUT (fish-speech alone waits forever)


def test_load_timeout(run):
    res = ok(run, "load_timeout")
    assert res["raised"] == "EngineLoadTimeout" and "TimeoutError" in res["mro"]
    assert "TTS_FISH_LOAD_TIMEOUT=0.05" in res["message"] and res["elapsed"] < 30


def test_server_falls_back_to_the_cpu_voice_and_health_says_why(run):
    res = ok(run, "server_fallback")
    tts = res["tts"]
    assert res["ready_status"] == 200, res
    assert tts["provider"] == "fish" and tts["fallback_count"] == 1, tts
    assert "worker thread" in tts["last_error"] and "bad-ckpt" in tts["last_error"]
    assert any(w.startswith("tts: fell back 1x to piper") and "worker thread" in w for w in res["warnings"])
    assert res["speech_status"] == 200 and res["speech_bytes"] > 1000 and "audio/wav" in res["speech_type"]


# --------------------------------------------------------------------------- the fake, checked
def test_fake_fish_speech_matches_the_real_api(run, monkeypatch):
    import fish_fake

    real = run["signatures"]
    assert "error" not in real, real
    fish_fake.install(monkeypatch, fish_fake.FakeState())
    fake = json.loads(json.dumps(fish_fake.describe()))
    assert fake == real


def test_non_editable_install_is_explained(fish_python, tiny_checkpoint, tmp_path):
    """fish-speech copied out of its source tree (as a non-editable install leaves it): the real
    pyrootutils failure becomes a MissingDependency that says how to install it."""
    tree = Path(subprocess.run([fish_python, "-c", "import fish_speech; print(list(fish_speech.__path__)[0])"],
                               capture_output=True, text=True, env=_env_for_fish(), cwd="/").stdout.strip())
    site = tmp_path / "site"
    shutil.copytree(tree, site / "fish_speech")
    code = ("import sys\nfrom spark_voice.backends.tts_fish import FishTTS\n"
            "from spark_voice.errors import MissingDependency\n"
            f"t = FishTTS({str(tiny_checkpoint)!r}, device='cpu')\n"
            "try:\n    t.load()\nexcept MissingDependency as e:\n    print('MISSING', e)\n    sys.exit(0)\n"
            "print('LOADED?')\nsys.exit(1)\n")
    env = _env_for_fish()
    env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}"
    r = subprocess.run([fish_python, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path),
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "without its source tree" in r.stdout and ".project-root" in r.stdout and "pip install -e" in r.stdout


def test_ci_runs_it():
    """Not a skip in CI: the vendored tree is beside the clone there (shared/)."""
    if IN_CI:
        assert (SRC / ".project-root").is_file(), f"CI lacks the vendored fish-speech tree at {SRC}"
    assert sys.version_info >= (3, 10)
