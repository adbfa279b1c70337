"""Voice activity detection: the silero VAD ONNX model run with onnxruntime directly (no torch).

The model file is the `silero_vad.onnx` shipped by the `silero-vad` package (install it with
``pip install --no-deps silero-vad``). That package is never imported (it imports torch): the file
is located with ``importlib.util.find_spec``. Lookup order of :func:`find_vad_model`:
STT_VAD_MODEL (explicit path) > ``<STT_MODEL_LOCAL_DIR>/silero_vad.onnx`` (copied there by
``spark-voice models prepare``) > the package file.

Model signature (silero v5/v6, 16 kHz): inputs ``input`` float32 (batch, 64 + 512) — the last 64
samples of the previous frame ("context") followed by a 512-sample frame (32 ms) — ``state`` float32
(2, batch, 128) and ``sr`` int64 scalar; outputs the speech probability (batch, 1) and the new
state. :class:`VadState` keeps the state, the context and the unfinished frame of one stream;
one :class:`SileroVAD` (one onnxruntime session, thread safe) serves any number of streams.

:class:`SpeechDetector` turns frame probabilities into speech start / end with hysteresis, like
silero's own ``get_speech_timestamps``: speech starts at ``prob >= threshold``, and ends after
``min_silence_ms`` of ``prob < threshold - 0.15``.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MissingDependency, ModelNotFound
from ..onnx import cpu_session

SAMPLE_RATE = 16_000
FRAME = 512          # samples per model call at 16 kHz (32 ms)
CONTEXT = 64         # samples of the previous frame the model sees again
VAD_FILE = "silero_vad.onnx"

__all__ = ["SileroVAD", "SpeechDetector", "VadState", "find_vad_model", "load_vad", "packaged_vad_model",
           "speech_spans"]


def packaged_vad_model() -> Path:
    """`silero_vad/data/silero_vad.onnx` of the installed silero-vad package (not imported)."""
    try:
        spec = importlib.util.find_spec("silero_vad")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for base in spec.submodule_search_locations:
            p = Path(base) / "data" / VAD_FILE
            if p.is_file():
                return p
    raise MissingDependency("silero-vad", "stt",
                            f"no {VAD_FILE} found; pip install --no-deps silero-vad, or set STT_VAD_MODEL")


def find_vad_model(settings=None, override: str | Path | None = None) -> Path:
    """The VAD model file: override / STT_VAD_MODEL > <STT_MODEL_LOCAL_DIR>/silero_vad.onnx > package."""
    explicit = override if override else (getattr(settings, "stt_vad_model", "") if settings is not None else "")
    if explicit:
        p = settings.path(explicit) if settings is not None else Path(explicit).expanduser()
        if not p.is_file():
            raise ModelNotFound(f"STT_VAD_MODEL: {p} does not exist (a silero_vad.onnx file is expected)")
        return p
    if settings is not None:
        local = settings.path(settings.stt_model_local_dir) / VAD_FILE
        if local.is_file():
            return local
    return packaged_vad_model()


_CACHE: dict[tuple[str, int], SileroVAD] = {}
_CACHE_LOCK = threading.Lock()


def load_vad(path: str | Path, threads: int = 1) -> SileroVAD:
    """A shared SileroVAD per (file, threads): one onnxruntime session serves every stream."""
    key = (str(Path(path).resolve()), int(threads))
    with _CACHE_LOCK:
        vad = _CACHE.get(key)
        if vad is None:
            vad = _CACHE[key] = SileroVAD(path, threads=threads)
        return vad


class SileroVAD:
    """One onnxruntime session on silero_vad.onnx; per-stream state lives in :class:`VadState`."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        self.session = cpu_session(self.path, threads, what="silero VAD")
        names = {i.name for i in self.session.get_inputs()}
        if not {"input", "state", "sr"} <= names:
            raise ModelNotFound(f"{self.path}: unexpected VAD model inputs {sorted(names)} "
                                "(silero v5/v6 expected: input, state, sr)")
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def new_state(self) -> VadState:
        return VadState(self)

    def run(self, x: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """One model call: x (1, 64 + 512) float32, state (2, 1, 128) -> (probability, new state)."""
        out, new_state = self.session.run(None, {"input": x, "state": state, "sr": self._sr})
        return float(out.reshape(-1)[0]), new_state

    def probs(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability of every 512-sample frame of 16 kHz mono audio (fresh state)."""
        return self.new_state().feed(samples)


class VadState:
    """Streaming state of one audio stream: model state, 64-sample context, unfinished frame."""

    def __init__(self, vad: SileroVAD) -> None:
        self.vad = vad
        self.reset()

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._buf = np.zeros((1, CONTEXT + FRAME), dtype=np.float32)  # context | frame
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames = 0  # frames processed so far

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Push 16 kHz mono float32 samples; returns the probabilities of the frames completed."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(self._pending):
            samples = np.concatenate([self._pending, samples])
        n = len(samples) // FRAME
        out = np.empty(n, dtype=np.float32)
        buf = self._buf
        for i in range(n):
            buf[0, CONTEXT:] = samples[i * FRAME:(i + 1) * FRAME]
            out[i], self._state = self.vad.run(buf, self._state)
            buf[0, :CONTEXT] = buf[0, -CONTEXT:]
        self._pending = samples[n * FRAME:].copy()
        self.frames += n
        return out


@dataclass
class SpeechDetector:
    """Hysteresis on frame probabilities: start at >= threshold, end after `min_silence_ms` below
    `threshold - 0.15`. `feed(p)` returns "start", "end" or None for each frame."""

    threshold: float = 0.5
    min_silence_ms: int = 500
    neg_threshold: float | None = None
    min_speech_ms: int = 0
    in_speech: bool = False
    silent_frames: int = 0
    speech_frames: int = 0

    def __post_init__(self) -> None:
        if self.neg_threshold is None:
            self.neg_threshold = max(self.threshold - 0.15, 0.01)
        self._min_silence = max(1, int(round(self.min_silence_ms * SAMPLE_RATE / 1000 / FRAME)))

    @property
    def min_silence_frames(self) -> int:
        """Frames below the end threshold that end speech (min_silence_ms in frames)."""
        return self._min_silence

    def feed(self, p: float) -> str | None:
        if not self.in_speech:
            if p >= self.threshold:
                self.in_speech, self.silent_frames, self.speech_frames = True, 0, 1
                return "start"
            return None
        self.speech_frames += 1
        if p < (self.neg_threshold or 0.0):
            self.silent_frames += 1
            if self.silent_frames >= self._min_silence:
                self.in_speech = False
                return "end"
        elif p >= self.threshold:
            self.silent_frames = 0
        return None

    def reset(self) -> None:
        self.in_speech, self.silent_frames, self.speech_frames = False, 0, 0


def speech_spans(probs: np.ndarray, threshold: float = 0.5, min_silence_ms: int = 300,
                 pad_ms: int = 200) -> list[tuple[int, int]]:
    """Speech spans (start, end) in samples from frame probabilities, padded by `pad_ms`."""
    det = SpeechDetector(threshold=threshold, min_silence_ms=min_silence_ms)
    spans: list[tuple[int, int]] = []
    start = 0
    for i, p in enumerate(probs):
        ev = det.feed(float(p))
        if ev == "start":
            start = i * FRAME
        elif ev == "end":
            spans.append((start, (i + 1 - det._min_silence) * FRAME + FRAME))
    if det.in_speech:
        spans.append((start, len(probs) * FRAME))
    pad = int(pad_ms * SAMPLE_RATE / 1000)
    total = len(probs) * FRAME
    return [(max(0, s - pad), min(total, e + pad)) for s, e in spans]
