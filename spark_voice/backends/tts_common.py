"""What the TTS backends share: voice-name checks, voice choice, onnxruntime session options.

Voice choice when the caller names no voice (the same rule in every TTS backend):
1. TTS_DEFAULT_VOICE, when it is one of this backend's voices and speaks the requested language
   (or no language was asked for);
2. else the first voice that speaks the requested language;
3. else TTS_DEFAULT_VOICE if it is ours, else the backend's first voice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import VoiceError
from ..onnx import import_onnxruntime, session_options
from ..types import Audio, Voice

# a pause after every sentence chunk, so that consecutive chunks do not run into each other
CHUNK_PAUSE_S = 0.15
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_voice_name(name: str) -> str:
    """Reject names that could walk the file system (path separators, `..`, control characters)."""
    if not isinstance(name, str) or not name.strip():
        raise VoiceError("empty voice name")
    if "/" in name or "\\" in name or ".." in name or "\x00" in name or not _SAFE_NAME.match(name):
        raise VoiceError(f"invalid voice name {name!r}: letters, digits, '_', '-', '.' only "
                         "(no path separators, no '..')")
    return name


def pick_voice(voices: Sequence[Voice], voice: str | None, language: str | None,
               default: str = "") -> Voice:
    """The Voice to speak with (see the module doc); VoiceError listing voices for an unknown name."""
    if not voices:
        raise VoiceError("this backend has no voices")
    by_name = {v.name: v for v in voices}
    if voice:
        check_voice_name(voice)
        if voice not in by_name:
            raise VoiceError(f"unknown voice {voice!r}; available voices: {', '.join(by_name)}")
        return by_name[voice]
    lang = (language or "").split("-")[0].split("_")[0].lower() or None
    dflt = by_name.get(default) if default else None
    if dflt is not None and (lang is None or dflt.language == lang):
        return dflt
    if lang:
        for v in voices:
            if v.language == lang:
                return v
    return dflt or voices[0]


def ort_session_options(threads: int) -> Any:
    """onnxruntime options for a CPU voice (see :func:`spark_voice.onnx.session_options`)."""
    return session_options(threads)


def ort_import() -> ModuleType:
    """onnxruntime, or MissingDependency naming the `tts` extra."""
    return import_onnxruntime("tts")


def with_pause(samples: np.ndarray, sample_rate: int, pause_s: float = CHUNK_PAUSE_S) -> Audio:
    samples = np.asarray(samples, dtype=np.float32).ravel()
    pad = np.zeros(int(pause_s * sample_rate), dtype=np.float32)
    return Audio(np.concatenate([samples, pad]) if len(samples) else samples, sample_rate)


