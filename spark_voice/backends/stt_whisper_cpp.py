"""The whisper.cpp speech-to-text backend under its historical name (provider ``whisper_cpp``).

The code lives in :mod:`spark_voice.backends.whisper` (recogniser, streaming, windowing, filters,
native environment); this module re-exports its public classes so that
``from spark_voice.backends.stt_whisper_cpp import WhisperCppSTT`` keeps working.
"""

from .whisper import WhisperCppStream, WhisperCppSTT

__all__ = ["WhisperCppSTT", "WhisperCppStream"]
