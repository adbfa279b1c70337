"""End-of-turn detection beyond silence: Smart Turn v3.2 (ONNX, onnxruntime, no torch).

Smart Turn (pipecat-ai, BSD-2-Clause) is a small whisper-encoder classifier: it hears the last 8 s
of the user's turn and says whether the turn is *complete* ("...午後三時からです。") or the user
paused mid-sentence ("明日の会議は、ええと、"). Model file: ``smart-turn-v3.2-cpu.onnx`` shipped in
the ``pipecat-ai`` wheel (``pipecat/audio/turn/smart_turn/data/``), installed ``--no-deps`` by
``spark-voice models prepare`` and copied to ``<STT_MODEL_LOCAL_DIR>/smart-turn-v3.2-cpu.onnx``.
The package is never imported (it would import its dependencies): the file is located with
``importlib.util.find_spec``. Lookup: STT_TURN_MODEL > the copy under STT_MODEL_LOCAL_DIR > the
package file.

Signature: input ``input_features`` float32 (batch, 80, 800) (:mod:`spark_voice.turn.features`),
output ``logits`` (batch, 1): the probability that the turn is complete (the exported graph ends
in a sigmoid).

How a stream uses it (:class:`EndOfTurn`): the VAD reports a short pause
(STT_TURN_SHORT_SILENCE_MS); the model runs on the utterance so far; probability >=
STT_TURN_THRESHOLD ends the turn now, else the stream keeps listening, and the turn ends when the
user stays silent for STT_TURN_LONG_SILENCE_MS (speech in between continues the same utterance).
:class:`MockTurnModel` is the deterministic stand-in of the mock profile.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import MissingDependency, ModelNotFound
from ..onnx import cpu_session
from .features import SAMPLE_RATE, last_window, log_mel

log = logging.getLogger("spark_voice.turn")

TURN_FILE = "smart-turn-v3.2-cpu.onnx"
PACKAGE = "pipecat"
PACKAGE_PARTS = ("audio", "turn", "smart_turn", "data", TURN_FILE)


class TurnModel(Protocol):
    """Anything that tells how likely a turn (16 kHz mono samples) is complete."""

    def predict(self, samples: np.ndarray) -> float: ...


def packaged_turn_model() -> Path:
    """The ONNX file inside the installed pipecat-ai package (not imported)."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for base in spec.submodule_search_locations:
            p = Path(base).joinpath(*PACKAGE_PARTS)
            if p.is_file():
                return p
    raise MissingDependency("pipecat-ai", "stt", f"no {TURN_FILE} found; run `spark-voice models prepare "
                            "--small` (pip install --no-deps pipecat-ai), or set STT_TURN_MODEL")


def find_turn_model(settings=None, override: str | Path | None = None) -> Path:
    """STT_TURN_MODEL (or `override`) > <STT_MODEL_LOCAL_DIR>/smart-turn-v3.2-cpu.onnx > the package."""
    explicit = override if override else (getattr(settings, "stt_turn_model", "") if settings is not None else "")
    if explicit:
        p = settings.path(explicit) if settings is not None else Path(explicit).expanduser()
        if not p.is_file():
            raise ModelNotFound(f"STT_TURN_MODEL: {p} does not exist (a {TURN_FILE} file is expected)")
        return p
    if settings is not None:
        local = settings.path(settings.stt_model_local_dir) / TURN_FILE
        if local.is_file():
            return local
    return packaged_turn_model()


_CACHE: dict[tuple[str, int], "SmartTurnModel"] = {}
_CACHE_LOCK = threading.Lock()


def load_turn_model(path: str | Path, threads: int = 1) -> "SmartTurnModel":
    """One shared session per (file, threads)."""
    key = (str(Path(path).resolve()), int(threads))
    with _CACHE_LOCK:
        m = _CACHE.get(key)
        if m is None:
            m = _CACHE[key] = SmartTurnModel(path, threads=threads)
        return m


class SmartTurnModel:
    """onnxruntime session on smart-turn-v3.x: `predict(samples)` -> probability of a complete turn."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        self.path = Path(path)
        self.session = cpu_session(self.path, threads, what="end-of-turn model")
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        if "input_features" not in inputs:
            raise ModelNotFound(f"{self.path}: unexpected inputs {sorted(inputs)} (smart-turn v3 expects "
                                "input_features [batch, 80, 800])")
        self._lock = threading.Lock()
        self.calls, self.seconds = 0, 0.0

    def features(self, samples: np.ndarray) -> np.ndarray:
        return log_mel(last_window(samples))[None]

    def predict(self, samples: np.ndarray) -> float:
        t0 = time.perf_counter()
        feats = self.features(samples)
        with self._lock:
            out = self.session.run(None, {"input_features": feats})[0]
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return float(np.asarray(out).reshape(-1)[0])


class MockTurnModel:
    """Deterministic stand-in (mock profile, unit tests): a turn is complete when the voice fell
    before the pause -- the mean level of the last 0.3 s of voiced audio is below `fall` (0.72) x the
    median level of the turn's voiced frames, as at the end of a sentence -- else incomplete (a level
    that holds or rises: more to come; a steady test tone waits for the long silence). On the bundled
    clips this agrees with Smart Turn: mid-sentence pauses 0.75-0.96, sentence ends 0.40-0.70.
    Tests pass `fixed=` for a constant answer."""

    def __init__(self, fixed: float | None = None, threshold: float = 0.01, fall: float = 0.72) -> None:
        self.fixed, self.threshold, self.fall = fixed, threshold, fall
        self.calls = 0

    def predict(self, samples: np.ndarray) -> float:
        self.calls += 1
        if self.fixed is not None:
            return float(self.fixed)
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = int(0.03 * SAMPLE_RATE)
        frames = len(x) // n
        if frames == 0:
            return 1.0
        rms = np.sqrt((x[: frames * n].reshape(frames, n) ** 2).mean(axis=1))
        voiced = rms[rms > self.threshold]
        if len(voiced) < 10:
            return 0.0
        return 1.0 if float(voiced[-10:].mean()) < self.fall * float(np.median(voiced)) else 0.0


@dataclass
class EndOfTurn:
    """The end-of-turn policy of one stream: a short pause asks the model, a long one ends anyway.

    `on_pause(samples)` -> True (end the turn now) / False (hold and keep listening).
    `waited(silence_ms)` -> True once a held pause reached the long silence.
    """

    model: TurnModel
    threshold: float = 0.5
    short_ms: int = 200
    long_ms: int = 2000
    holding: bool = False
    last_probability: float | None = None
    stats: dict = field(default_factory=lambda: {"complete": 0, "incomplete": 0, "timeout": 0, "model_s": 0.0})

    def on_pause(self, samples: np.ndarray) -> bool:
        t0 = time.perf_counter()
        try:
            p = float(self.model.predict(samples))
        except Exception as exc:  # a broken model must not stop the conversation: fall back to silence
            log.warning("end-of-turn model failed (%s); waiting for the long silence", exc)
            p = 0.0
        self.stats["model_s"] += time.perf_counter() - t0
        self.last_probability = p
        done = p >= self.threshold
        self.stats["complete" if done else "incomplete"] += 1
        self.holding = not done
        return done

    def resume(self) -> None:
        """The user spoke again during a held pause: the same utterance goes on."""
        self.holding = False

    def waited(self, silence_ms: float) -> bool:
        if self.holding and silence_ms >= self.long_ms:
            self.holding = False
            self.stats["timeout"] += 1
            return True
        return False

    def reset(self) -> None:
        self.holding = False


def build_end_of_turn(settings, *, mock: bool = False) -> EndOfTurn | None:
    """The EndOfTurn configured by STT_TURN_* (None when STT_TURN_DETECTION=off)."""
    if settings is None or settings.stt_turn_detection == "off":
        return None
    model: TurnModel = MockTurnModel() if mock else load_turn_model(find_turn_model(settings),
                                                                     threads=settings.stt_turn_threads)
    return EndOfTurn(model, threshold=settings.stt_turn_threshold, short_ms=settings.stt_turn_short_silence_ms,
                     long_ms=settings.stt_turn_long_silence_ms)
