"""Fish Speech adapter: contract test against a fake `fish_speech` module tree with the real API
surface (launch_thread_safe_queue, dac load_model, TTSInferenceEngine.inference yielding
header/segment/final/error results, ServeTTSRequest/ServeReferenceAudio), plus a real integration
test that runs only where fish_speech and an OpenAudio S1 mini checkpoint are present."""

from __future__ import annotations

import importlib.util
import queue
import sys
import threading
import types
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
import soundfile as sf
from pydantic import BaseModel, ConfigDict

from conftest import ROOT
from spark_voice.backends.mock import MockTTS
from spark_voice.backends.registry import Fallback
from spark_voice.backends.tts_fish import CHECKPOINT_FILES, FishTTS
from spark_voice.errors import BackendUnavailable, MissingDependency, ModelNotFound, VoiceError


# --------------------------------------------------------------------------- the fake package
class FakeState:
    def __init__(self) -> None:
        self.requests: list = []
        self.launch: dict = {}
        self.decoder: dict = {}
        self.threads = None
        self.queue: queue.Queue | None = None
        self.streaming_engine = False  # yield header + segments like the API server's streaming mode


def install_fake_fish(monkeypatch, state: FakeState, sample_rate: int = 44100) -> None:
    def mod(name: str, **attrs) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__path__ = []  # a package, so submodules import
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)
        return m

    mod("torch", cuda=types.SimpleNamespace(is_available=lambda: False, empty_cache=lambda: None),
        bfloat16="bfloat16", half="float16", set_num_threads=lambda n: setattr(state, "threads", n))

    class ServeReferenceAudio(BaseModel):
        audio: bytes
        text: str

    class ServeTTSRequest(BaseModel):  # the fields of fish_speech.utils.schema.ServeTTSRequest
        model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
        text: str
        chunk_length: int = 200
        format: Literal["wav", "pcm", "mp3", "opus"] = "wav"
        references: list[ServeReferenceAudio] = []
        reference_id: str | None = None
        seed: int | None = None
        use_memory_cache: Literal["on", "off"] = "off"
        normalize: bool = True
        streaming: bool = False
        max_new_tokens: int = 1024
        top_p: float = 0.7
        repetition_penalty: float = 1.2
        temperature: float = 0.7

    @dataclass
    class InferenceResult:
        code: Literal["header", "segment", "error", "final"]
        audio: tuple[int, np.ndarray] | None
        error: Exception | None

    class TTSInferenceEngine:
        def __init__(self, llama_queue, decoder_model, precision, compile) -> None:
            self.llama_queue, self.decoder_model = llama_queue, decoder_model
            self.precision, self.compile = precision, compile

        def inference(self, req: ServeTTSRequest):
            state.requests.append(req)
            sr = self.decoder_model.sample_rate
            if "FAIL" in req.text:
                yield InferenceResult("error", None, RuntimeError("No audio generated"))
                return
            n = int(0.04 * len(req.text) * sr)
            t = np.arange(n, dtype=np.float32) / sr
            audio = (0.2 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
            if state.streaming_engine or req.streaming:
                yield InferenceResult("header", (sr, np.zeros(44, np.int16)), None)
                half = n // 2
                yield InferenceResult("segment", (sr, audio[:half]), None)
                yield InferenceResult("segment", (sr, audio[half:]), None)
            yield InferenceResult("final", (sr, audio[None, :]), None)  # (1, n) like a decoded batch

    def launch_thread_safe_queue(checkpoint_path, device, precision, compile: bool = False):
        state.launch = dict(checkpoint_path=checkpoint_path, device=device, precision=precision, compile=compile)
        state.queue = queue.Queue()
        return state.queue

    def load_model(config_name, checkpoint_path, device="cuda"):
        state.decoder = dict(config_name=config_name, checkpoint_path=checkpoint_path, device=device)
        return types.SimpleNamespace(sample_rate=sample_rate, device=device)

    mod("fish_speech")
    mod("fish_speech.inference_engine", TTSInferenceEngine=TTSInferenceEngine, InferenceResult=InferenceResult)
    mod("fish_speech.utils")
    mod("fish_speech.utils.schema", ServeTTSRequest=ServeTTSRequest, ServeReferenceAudio=ServeReferenceAudio)
    mod("fish_speech.models")
    mod("fish_speech.models.text2semantic")
    mod("fish_speech.models.text2semantic.inference", launch_thread_safe_queue=launch_thread_safe_queue)
    mod("fish_speech.models.dac")
    mod("fish_speech.models.dac.inference", load_model=load_model)


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
    install_fake_fish(monkeypatch, state)
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
    assert len(chunks) == 3 and all(c.sample_rate == 44100 and c.samples.ndim == 1 for c in chunks)
    r = reqs[0]
    assert len(r.references) == 1 and r.references[0].text == "Hi, this is Bob speaking."
    assert r.references[0].audio == (references / "bob" / "sample.flac").read_bytes()
    assert r.reference_id is None and r.use_memory_cache == "on" and r.streaming is False
    assert r.max_new_tokens == 1024 and r.chunk_length == 200


def test_voice_choice(fish, monkeypatch):
    list(fish.synthesize("こんにちは。", language="ja"))
    assert fish.state.requests[-1].references[0].text.startswith("こんにちは、アリス")
    list(fish.synthesize("Hello.", voice="default"))
    assert fish.state.requests[-1].references == []
    fish.default_voice = "bob"
    list(fish.synthesize("Hello."))
    assert fish.state.requests[-1].references[0].text.startswith("Hi, this is Bob")


def test_streaming_engine_segments_not_duplicated(fish):
    fish.state.streaming_engine = True
    chunks = list(fish.synthesize("One sentence only."))
    assert len(chunks) == 2  # the two segments; the final (their concatenation) is not repeated
    assert sum(len(c.samples) for c in chunks) == int(0.04 * len("One sentence only.") * 44100)


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
    assert q.get_nowait() is None and not fish.info().loaded


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
    with pytest.raises(MissingDependency, match=r"spark-voice\[fish\]"):
        FishTTS(checkpoint, device="cpu").load()


def test_from_settings(tmp_path):
    from spark_voice.config import Settings

    s = Settings.load(tmp_path, environ={}, use_dotenv=False, profile="prod", TTS_BACKEND="cpu",
                      TTS_DEFAULT_VOICE="alice", TTS_THREADS="3")
    f = FishTTS.from_settings(s)
    assert f.checkpoint_dir == s.model_path("tts") and f.requested_device == "cpu"
    assert f.reference_dir == s.path(s.tts_reference_local_dir) and f.default_voice == "alice" and f.threads == 3


# --------------------------------------------------------------------------- the real thing (Spark only)
def test_real_fish_speech_if_installed():
    from spark_voice.config import Settings

    if importlib.util.find_spec("fish_speech") is None:
        pytest.skip("fish_speech not installed (the `fish` extra; GPU boxes only)")
    s = Settings.load(ROOT, environ={}, profile="prod")
    ckpt = s.model_path("tts")
    if not all((ckpt / f).is_file() for f in CHECKPOINT_FILES):
        pytest.skip(f"no OpenAudio S1 mini checkpoint at {ckpt}")
    tts = FishTTS.from_settings(s)
    chunks = list(tts.synthesize("Hello. This is Fish Speech.", language="en"))
    assert len(chunks) >= 2 and all(c.sample_rate == tts.sample_rate for c in chunks)
    assert sum(c.duration for c in chunks) > 1.0
    tts.close()
