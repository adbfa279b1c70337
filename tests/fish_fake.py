"""A fake `fish_speech` module tree for the fast unit tests of the Fish adapter, and `describe()`,
which both sides use to prove that the fake has the real API (tests/test_fish_real.py compares
describe() of this fake with describe() of the real fish-speech, run in the fish venv).

What the fake copies from fish-speech d3df505 (fish_speech/utils/schema.py, inference_engine/,
models/text2semantic/inference.py, models/dac/inference.py):
* ServeTTSRequest / ServeReferenceAudio: the same fields, defaults and constraints;
* TTSInferenceEngine(llama_queue, decoder_model, precision, compile).inference(req): "header" only when
  streaming, one "segment" per generated sample only when streaming, then "final" (all segments
  concatenated), or "error"; the engine reads reference audio through its own ``load_audio``;
* launch_thread_safe_queue(checkpoint_path, device, precision, compile=False): starts a worker
  thread that loads the model and waits for it **without a timeout** — a load failure inside the
  worker leaves the caller blocked forever, as the real one does;
* load_model(config_name, checkpoint_path, device="cuda").
"""

from __future__ import annotations

import inspect
import queue
import sys
import threading
import types
from dataclasses import dataclass
from typing import Any, Literal, Optional, Tuple

import numpy as np


# --------------------------------------------------------------------------- describe (both sides)
def _default(v: Any) -> Any:
    if v is inspect.Parameter.empty:
        return "<required>"
    return v if isinstance(v, (int, float, str, bool, type(None), list)) else repr(type(v).__name__)


def _signature(fn: Any) -> list:
    return [[p.name, p.kind.name, _default(p.default)] for p in inspect.signature(fn).parameters.values()]


def _constraints(field: Any) -> dict:
    out: dict = {}
    for m in field.metadata:
        for attr in ("ge", "gt", "le", "lt", "strict", "max_length", "min_length", "pattern"):
            v = getattr(m, attr, None)
            if v is not None:
                out[attr] = v
    return out


def _model(cls: Any) -> dict:
    fields = {}
    for name, f in cls.model_fields.items():
        ann = f.annotation
        literal = list(getattr(ann, "__args__", ())) if getattr(ann, "__origin__", None) is Literal else None
        fields[name] = {"required": f.is_required(), "default": None if f.is_required() else _default(f.default),
                        "constraints": _constraints(f), "literal": literal}
    return fields


def describe() -> dict:
    """The API surface of the importable `fish_speech` that the adapter relies on."""
    from fish_speech.inference_engine import TTSInferenceEngine
    from fish_speech.models.dac.inference import load_model
    from fish_speech.models.text2semantic.inference import launch_thread_safe_queue
    from fish_speech.utils import schema

    try:
        from fish_speech.inference_engine.utils import InferenceResult
    except ImportError:
        from fish_speech.inference_engine import InferenceResult  # type: ignore[no-redef]
    return {
        "launch_thread_safe_queue": _signature(launch_thread_safe_queue),
        "load_model": _signature(load_model),
        "TTSInferenceEngine.__init__": _signature(TTSInferenceEngine.__init__),
        "TTSInferenceEngine.inference": _signature(TTSInferenceEngine.inference),
        "TTSInferenceEngine.load_audio": _signature(TTSInferenceEngine.load_audio),
        "InferenceResult": list(InferenceResult.__dataclass_fields__),
        "ServeTTSRequest": _model(schema.ServeTTSRequest),
        "ServeReferenceAudio": _model(schema.ServeReferenceAudio),
    }


# --------------------------------------------------------------------------- the fake package
class FakeState:
    def __init__(self) -> None:
        self.requests: list = []
        self.launch: dict = {}
        self.decoder: dict = {}
        self.threads = None
        self.queue: queue.Queue | None = None
        self.samples = 2            # segments per request (the real engine of d3df505 makes 1)
        self.fail_in_worker: BaseException | None = None   # raised inside the worker thread
        self.loaded_audio: list = []
        self.worker: threading.Thread | None = None


def install(monkeypatch, state: FakeState, sample_rate: int = 44100) -> None:
    """Put the fake `fish_speech` (and a minimal `torch`/`torchaudio`) into sys.modules."""
    import warnings

    from pydantic import BaseModel, Field, conint, model_validator
    from typing_extensions import Annotated

    warnings.filterwarnings("ignore", message="Support for class-based `config`")

    def mod(name: str, **attrs) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__path__ = []  # a package, so submodules import
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)
        return m

    mod("torch", cuda=types.SimpleNamespace(is_available=lambda: False, empty_cache=lambda: None),
        bfloat16="bfloat16", half="float16", set_num_threads=lambda n: setattr(state, "threads", n))
    mod("torchaudio")  # >= 2.9: no list_audio_backends (the adapter provides it)

    class ServeReferenceAudio(BaseModel):
        audio: bytes
        text: str

        @model_validator(mode="before")
        def decode_audio(cls, values):
            return values

    class ServeTTSRequest(BaseModel):  # class-based Config as in the real one (pydantic warns)
        text: str
        chunk_length: Annotated[int, conint(ge=100, le=300, strict=True)] = 200
        format: Literal["wav", "pcm", "mp3"] = "wav"
        references: list[ServeReferenceAudio] = []
        reference_id: str | None = None
        seed: int | None = None
        use_memory_cache: Literal["on", "off"] = "off"
        normalize: bool = True
        streaming: bool = False
        max_new_tokens: int = 1024
        top_p: Annotated[float, Field(ge=0.1, le=1.0, strict=True)] = 0.8
        repetition_penalty: Annotated[float, Field(ge=0.9, le=2.0, strict=True)] = 1.1
        temperature: Annotated[float, Field(ge=0.1, le=1.0, strict=True)] = 0.8

        class Config:
            arbitrary_types_allowed = True

    @dataclass
    class InferenceResult:
        code: Literal["header", "segment", "error", "final"]
        audio: Optional[Tuple[int, np.ndarray]]
        error: Optional[Exception]

    class TTSInferenceEngine:
        def __init__(self, llama_queue: queue.Queue, decoder_model: Any, precision: Any, compile: bool) -> None:
            sys.modules["torchaudio"].list_audio_backends()  # as ReferenceLoader.__init__ does
            self.llama_queue, self.decoder_model = llama_queue, decoder_model
            self.precision, self.compile = precision, compile

        def load_audio(self, reference_audio, sr):
            raise AssertionError("the adapter replaces load_audio")

        def inference(self, req: ServeTTSRequest):
            state.requests.append(req)
            for ref in req.references:
                state.loaded_audio.append(self.load_audio(ref.audio, self.decoder_model.sample_rate))
            sr = self.decoder_model.sample_rate
            if req.streaming:
                yield InferenceResult("header", (sr, np.frombuffer(b"RIFF" + bytes(40), np.uint8)), None)
            if "FAIL" in req.text:
                yield InferenceResult("error", None, RuntimeError("No audio generated, please check the input text."))
                return
            segments = []
            for i in range(state.samples):
                n = int(0.02 * len(req.text) * sr)
                t = np.arange(n, dtype=np.float32) / sr
                seg = (0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32)
                if req.streaming:
                    yield InferenceResult("segment", (sr, seg), None)
                segments.append(seg)
            yield InferenceResult("final", (sr, np.concatenate(segments, axis=0)), None)

    def launch_thread_safe_queue(checkpoint_path, device, precision, compile: bool = False):
        state.launch = dict(checkpoint_path=checkpoint_path, device=device, precision=precision, compile=compile)
        input_queue: queue.Queue = queue.Queue()
        init_event = threading.Event()

        def worker():
            if state.fail_in_worker is not None:
                raise state.fail_in_worker
            init_event.set()
            while input_queue.get() is not None:
                pass

        state.worker = threading.Thread(target=worker, daemon=True)
        state.worker.start()
        init_event.wait()  # no timeout, like the real one
        state.queue = input_queue
        return input_queue

    def load_model(config_name, checkpoint_path, device="cuda"):
        state.decoder = dict(config_name=config_name, checkpoint_path=checkpoint_path, device=device)
        return types.SimpleNamespace(sample_rate=sample_rate, device=device)

    mod("fish_speech")
    mod("fish_speech.inference_engine", TTSInferenceEngine=TTSInferenceEngine)
    mod("fish_speech.inference_engine.utils", InferenceResult=InferenceResult)
    mod("fish_speech.utils")
    mod("fish_speech.utils.schema", ServeTTSRequest=ServeTTSRequest, ServeReferenceAudio=ServeReferenceAudio)
    mod("fish_speech.models")
    mod("fish_speech.models.text2semantic")
    mod("fish_speech.models.text2semantic.inference", launch_thread_safe_queue=launch_thread_safe_queue)
    mod("fish_speech.models.dac")
    mod("fish_speech.models.dac.inference", load_model=load_model)
