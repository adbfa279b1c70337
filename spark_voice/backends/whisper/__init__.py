"""whisper.cpp speech to text (pywhispercpp), split by job.

- :mod:`.recognizer`  :class:`WhisperCppSTT`: model load, whole-clip transcription, the bench hook
- :mod:`.streaming`   :class:`WhisperCppStream`: VAD-driven live recognition (partials, finals)
- :mod:`.windowing`   silence checks and cutting long audio into 30 s windows at pauses
- :mod:`.filters`     decode-loop trimming, non-speech hallucinations, joining segment texts
- :mod:`.native`      OpenMP wait policy, the binding import, whisper.cpp's log lines

The ggml file check lives with the models tooling (:mod:`spark_voice.models.ggml`).
Imports go recognizer -> streaming -> (windowing, filters); native and windowing import nothing
of this package.
"""

from .recognizer import WhisperCppSTT
from .streaming import WhisperCppStream

__all__ = ["WhisperCppSTT", "WhisperCppStream"]
