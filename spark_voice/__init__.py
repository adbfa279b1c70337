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

from .config import Settings  # noqa: E402
from .errors import (  # noqa: E402
                     AudioError,
                     BackendUnavailable,
                     ConfigError,
                     ContextOverflow,
                     MissingDependency,
                     ModelNotFound,
                     SparkVoiceError,
                     VoiceError,
)
from .events import Event, LatencyRecorder  # noqa: E402
from .pipeline import Turn, VoicePipeline  # noqa: E402
from .session import VoiceSession  # noqa: E402
from .types import ROLES, Audio, Hit, LlmDelta, Role, Segment, Stage, SttEvent, Transcript, Voice  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ROLES", "Audio", "AudioError", "BackendUnavailable", "ConfigError", "ContextOverflow", "Event", "Hit",
           "LatencyRecorder", "LlmDelta", "MissingDependency", "ModelNotFound", "Role", "Segment", "Settings", "Stage",
           "SparkVoiceError", "SttEvent", "Transcript", "Turn", "Voice", "VoiceError", "VoicePipeline",
           "VoiceSession", "__version__"]
