"""Fish Speech adapter, fast: against the fake `fish_speech` of tests/fish_fake.py, whose API is
compared with the real fish-speech by tests/test_fish_real.py (which also runs the adapter on the
real code, on CPU, with a tiny random-weight checkpoint)."""

from __future__ import annotations

import importlib.abc
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from fish_fake import FakeState, install
from spark_voice.backends.mock import MockTTS
from spark_voice.backends.registry import Fallback
from spark_voice.backends.tts_fish import CHECKPOINT_FILES, FishTTS
from spark_voice.errors import (
    AudioError,
    BackendUnavailable,
    EngineLoadError,
    EngineLoadTimeout,
    MissingDependency,
    ModelNotFound,
    VoiceError,
)


@pytest.fixture
def checkpoint(tmp_path):
    d = tmp_path / "openaudio-s1-mini"
    d.mkdir()
    for f in CHECKPOINT_FILES:
        (d / f).write_bytes(b"x")
    return d


@pytest.fixture
def references(tmp_path):
    refs = tmp_path / "references"
    t = np.arange(8000, dtype=np.float32) / 16000
    tone = 0.1 * np.sin(2 * np.pi * 300 * t)
    for name, audio_name, text_name, text in [("alice", "alice.wav", "alice.lab", "こんにちは、アリスです。"),
                                              ("bob", "sample.flac", "sample.txt", "Hi, this is Bob speaking."),
                                              ("a..b", "x.wav", "x.txt", "bad name"),
                                              ("no_transcript", "y.wav", None, None)]:
        d = refs / name
        d.mkdir(parents=True)
        sf.write(d / audio_name, tone, 16000)
        if text_name:
            (d / text_name).write_text(text, encoding="utf-8")
    return refs


@pytest.fixture
def fish(monkeypatch, checkpoint, references):
    state = FakeState()
    install(monkeypatch, state)
    tts = FishTTS(checkpoint, device="cuda", reference_dir=references, threads=2)
    tts.state = state
    return tts


# --------------------------------------------------------------------------- contract
def test_loads_like_the_model_manager(fish, checkpoint):
    fish.load()
    st = fish.state
    assert st.launch == dict(checkpoint_path=str(checkpoint), device="cpu", precision="bfloat16", compile=False)
    assert st.decoder == dict(config_name="modded_dac_vq", checkpoint_path=str(checkpoint / "codec.pth"),
                              device="cpu")
    assert st.threads == 2  # CPU torch threads = TTS_THREADS
    assert fish.device == "cpu" and fish.endpoint.endswith("@cpu") and "fish_speech" in fish.endpoint
    assert any("CUDA is not available" in w for w in fish.info().warnings)


def test_voices_from_reference_folders(fish):
    vs = {v.name: v for v in fish.voices()}
    assert set(vs) == {"alice", "bob", "default"}  # a..b (bad name) and no_transcript skipped
    assert vs["alice"].language == "ja" and vs["bob"].language == "en"
    assert all(v.sample_rate == 44100 and v.provider == "fish" for v in vs.values())


def test_one_request_per_sentence_with_reference(fish, references):
    text = "Hello there. How are you today? I am fine."
    chunks = list(fish.synthesize(text, language="en"))
    reqs = fish.state.requests
    assert [r.text for r in reqs] == ["Hello there.", "How are you today?", "I am fine."]
    # two segments per request (the fake engine's samples), each yielded as it comes
    assert len(chunks) == 6 and all(c.sample_rate == 44100 and c.samples.ndim == 1 for c in chunks)
    r = reqs[0]
    assert len(r.references) == 1 and r.references[0].text == "Hi, this is Bob speaking."
    assert r.references[0].audio == (references / "bob" / "sample.flac").read_bytes()
    assert r.reference_id is None and r.use_memory_cache == "on" and r.streaming is True
    # the real ServeTTSRequest defaults (tests/test_fish_real.py compares the fake with the real one)
    gen = (r.max_new_tokens, r.chunk_length, r.top_p, r.repetition_penalty, r.temperature)
    assert gen == (1024, 200, 0.8, 1.1, 0.8)
    # the engine decoded the reference through our decoder: mono float32 at the codec's rate
    assert fish.state.loaded_audio and fish.state.loaded_audio[0].dtype == np.float32
    assert abs(len(fish.state.loaded_audio[0]) - 0.5 * 44100) <= 2


def test_voice_choice(fish, monkeypatch):
    list(fish.synthesize("こんにちは。", language="ja"))
    assert fish.state.requests[-1].references[0].text.startswith("こんにちは、アリス")
    list(fish.synthesize("Hello.", voice="default"))
    assert fish.state.requests[-1].references == []
    fish.default_voice = "bob"
    list(fish.synthesize("Hello."))
    assert fish.state.requests[-1].references[0].text.startswith("Hi, this is Bob")


def test_streaming_segments_not_duplicated(fish):
    chunks = list(fish.synthesize("One sentence only."))
    assert len(chunks) == 2  # the two segments; the final (their concatenation) is not repeated
    seg = int(0.02 * len("One sentence only.") * 44100)
    assert [len(c.samples) for c in chunks] == [seg, seg + int(0.15 * 44100)]  # pause after the last


def test_first_chunk_before_the_text_is_done(fish):
    gen = fish.synthesize("First sentence here. Second one follows. And a third.")
    first = next(gen)
    assert len(first.samples) and len(fish.state.requests) == 1  # later sentences not yet requested
    rest = list(gen)
    assert len(fish.state.requests) == 3 and len(rest) == 5


def test_engine_error_raises_and_falls_back(fish):
    with pytest.raises(BackendUnavailable, match="No audio generated"):
        list(fish.synthesize("FAIL please."))
    fb = Fallback("tts", [fish, MockTTS()])
    out = list(fb.synthesize("FAIL please."))
    assert out and out[0].sample_rate == MockTTS.sample_rate and fb.fallback_count == 1


def test_cancel_between_chunks(fish):
    cancel = threading.Event()
    got = []
    for c in fish.synthesize("First one. Second one. Third one.", cancel=cancel):
        got.append(c)
        cancel.set()
    assert len(got) == 1 and len(fish.state.requests) == 1


def test_bad_input(fish):
    assert list(fish.synthesize("")) == [] and list(fish.synthesize("  \n")) == []
    assert fish.state.requests == []
    for bad in ("../alice", "a/b", "..", "c:\\x"):
        with pytest.raises(VoiceError):
            fish.synthesize("Hello.", voice=bad)
    with pytest.raises(VoiceError, match="available voices: alice, bob, default"):
        fish.synthesize("Hello.", voice="carol")


def test_close_stops_the_worker(fish):
    fish.load()
    q = fish.state.queue
    fish.close()
    assert not fish.info().loaded
    fish.state.worker.join(5)
    assert not fish.state.worker.is_alive() and q.empty()  # it took the None and stopped


# --------------------------------------------------------------------------- load failures
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_worker_load_failure_is_bounded_and_clear(fish):
    fish.state.fail_in_worker = RuntimeError("CUDA out of memory (in the worker)")
    fish.load_timeout = 30
    t0 = time.monotonic()
    with pytest.raises(EngineLoadError, match="failed to load in its worker thread: RuntimeError: CUDA out of memory"):
        fish.load()
    assert time.monotonic() - t0 < 10  # seen at once, not after the timeout


def test_load_timeout(fish, monkeypatch):
    import fish_speech.models.text2semantic.inference as t2s

    release = threading.Event()
    real = t2s.launch_thread_safe_queue

    def slow(**kw):
        release.wait(30)
        return real(**kw)

    monkeypatch.setattr(t2s, "launch_thread_safe_queue", slow)
    fish.load_timeout = 0.3
    t0 = time.monotonic()
    with pytest.raises(EngineLoadTimeout, match="TTS_FISH_LOAD_TIMEOUT=0.3"):
        fish.load()
    assert time.monotonic() - t0 < 5
    release.set()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_worker_failure_falls_back_and_health_says_why(fish):
    fish.state.fail_in_worker = RuntimeError("bad checkpoint")
    fb = Fallback("tts", [fish, MockTTS()])
    out = list(fb.synthesize("Hello."))
    assert out and fb.fallback_count == 1
    inf = fb.info()
    assert inf.provider == "fish" and inf.fallback_count == 1
    assert any("worker thread" in w and "bad checkpoint" in w for w in inf.warnings)


def test_project_root_missing_is_explained(monkeypatch, checkpoint):
    install(monkeypatch, FakeState())
    name = "fish_speech.models.dac.inference"

    class NoProjectRoot(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname == name:  # what pyrootutils.setup_root raises outside a source tree
                raise FileNotFoundError("Project root directory not found. Indicators: .project-root")
            return None

    monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NoProjectRoot(), *sys.meta_path])
    with pytest.raises(MissingDependency, match=r"without its source tree.*\.project-root.*editable"):
        FishTTS(checkpoint, device="cpu").load()


def test_bad_reference_file(fish, references):
    (references / "carol").mkdir()
    (references / "carol" / "c.wav").write_bytes(b"RIFF....WAVEnot audio")
    (references / "carol" / "c.txt").write_text("Carol.", encoding="utf-8")
    names = {v.name for v in fish.voices()}
    assert "carol" not in names  # skipped at load, with a warning naming the file
    assert any("carol" in w and "c.wav" in w and "cannot decode" in w for w in fish.info().warnings)
    with pytest.raises(VoiceError, match="available voices"):
        fish.synthesize("Hi.", voice="carol")
    # broken after load: a clear AudioError naming the file (a user error: no fallback)
    (references / "bob" / "sample.flac").write_bytes(b"fLaC broken")
    with pytest.raises(AudioError, match="sample.flac: cannot decode audio"):
        list(fish.synthesize("Hello.", voice="bob"))


# --------------------------------------------------------------------------- missing pieces
def test_missing_checkpoint_files_listed(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "config.json").write_text("{}")
    with pytest.raises(ModelNotFound) as e:
        FishTTS(d, device="cpu").load()
    msg = str(e.value)
    assert all(f in msg for f in ("model.pth", "tokenizer.tiktoken", "special_tokens.json", "codec.pth"))
    with pytest.raises(ModelNotFound, match="does not exist"):
        FishTTS(tmp_path / "nowhere").load()


def test_missing_package_names_the_extra(monkeypatch, checkpoint):
    monkeypatch.setitem(sys.modules, "fish_speech", None)  # import fails
    with pytest.raises(MissingDependency, match=r"pip install -e <fish-speech source tree at d3df505>"):
        FishTTS(checkpoint, device="cpu").load()


def test_from_settings(tmp_path):
    from spark_voice.config import Settings

    s = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="prod", TTS_BACKEND="cpu",
                      TTS_DEFAULT_VOICE="alice", TTS_THREADS="3")
    f = FishTTS.from_settings(s)
    assert f.checkpoint_dir == s.model_path("tts") and f.requested_device == "cpu"
    assert f.reference_dir == s.path(s.tts_reference_local_dir) and f.default_voice == "alice" and f.threads == 3
    assert f.load_timeout == s.tts_fish_load_timeout == 600 and f.codec_config == "modded_dac_vq"




def test_an_abandoned_stream_does_not_block_the_next_request(fish):
    g = fish.synthesize("One sentence. Another one.")
    assert next(g) is not None  # the caller stops consuming here and keeps the generator
    out: list = []
    t = threading.Thread(target=lambda: out.extend(fish.synthesize("Next request.")), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and out, "the engine lock was held across a yield"
    g.close()
