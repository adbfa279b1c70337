"""spark-voice: a whole voice assistant (STT -> RAG -> LLM -> TTS) in one process.

    import spark_voice
    pipe = spark_voice.VoicePipeline.from_settings()          # settings from .env.default / .env
    turn = pipe.run("question.wav")                           # transcript, answer, audio, latencies

Heavy engines (llama_cpp, pywhispercpp, onnxruntime, faiss, fish_speech, sounddevice) are imported
by the backend that needs them, so this import and the mock profile need none of them.
"""

from __future__ import annotations

import os as _os

# Before any native engine loads: OpenMP threads sleep instead of spinning (two engines share the
# cores), and onnxruntime sends no telemetry. setdefault: an explicit user choice wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "passive")
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("HF_HUB_OFFLINE", "1")

from .backends.base import Audio, LlmDelta, Segment, SttEvent, Transcript, Voice  # noqa: E402
from .config import Settings  # noqa: E402
from .errors import (AudioError, BackendUnavailable, ConfigError, ContextOverflow, MissingDependency,  # noqa: E402
                     ModelNotFound, SparkVoiceError, VoiceError)
from .events import Event, LatencyRecorder  # noqa: E402
from .pipeline import Hit, Turn, VoicePipeline, VoiceSession  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Audio", "AudioError", "BackendUnavailable", "ConfigError", "ContextOverflow", "Event", "Hit",
           "LatencyRecorder", "LlmDelta", "MissingDependency", "ModelNotFound", "Segment", "Settings",
           "SparkVoiceError", "SttEvent", "Transcript", "Turn", "Voice", "VoiceError", "VoicePipeline",
           "VoiceSession", "__version__"]
