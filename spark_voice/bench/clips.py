"""The bench's input: speech clips found on disk, and their real-time replay.

:func:`find_clips` loads the bundled ``examples/audio/question_*.wav`` (or the audio files of a
folder) at 16 kHz with a language taken from the file name (``*_ja`` / ``*_en``).
:class:`PacedSTT` wraps the pipeline's recogniser so that its streams receive audio no faster
than a live microphone would deliver it (``--realtime``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audio.io import load_audio
from ..backends.base import SpeechToText, SttStream
from ..errors import AudioError, SparkVoiceError
from ..turn.speculative import TurnEndHook
from ..types import SAMPLE_RATE_STT, Audio, BackendInfo, SttEvent, Transcript

__all__ = ["AUDIO_EXTS", "BUNDLED", "Clip", "PacedSTT", "PacedStream", "clip_language", "find_clips"]

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
BUNDLED = Path(__file__).resolve().parents[2] / "examples" / "audio"
LANGUAGES = ("ja", "en", "zh", "ko", "de", "fr", "es", "it")


@dataclass
class Clip:
    path: Path
    audio: Audio  # 16 kHz mono
    language: str

    @property
    def name(self) -> str:
        return self.path.name


def clip_language(path: Path, default: str) -> str:
    """`question_ja.wav` -> ja; no language tag in the name -> `default`."""
    m = re.search(r"(?:^|[_\-.])([a-z]{2})$", path.stem.lower())
    return m.group(1) if m and m.group(1) in LANGUAGES else default


def find_clips(samples: Path | None, language: str | None, default_language: str) -> list[Clip]:
    """The clips of `samples` (a folder or one file; None: the bundled ones), loaded at 16 kHz."""
    if samples is None:
        paths = sorted(BUNDLED.glob("question_*.wav"))
        if not paths:
            raise SparkVoiceError(f"no bundled clips under {BUNDLED} (examples/audio/question_*.wav); "
                                  "pass --samples DIR")
    else:
        samples = Path(samples)
        if samples.is_file():
            paths = [samples]
        elif samples.is_dir():
            paths = sorted(p for p in samples.iterdir() if p.suffix.lower() in AUDIO_EXTS and p.is_file())
        else:
            raise AudioError(f"{samples}: no such file or folder")
        if not paths:
            raise AudioError(f"{samples}: no audio files ({', '.join(AUDIO_EXTS)})")
    return [Clip(p, load_audio(p, SAMPLE_RATE_STT), language or clip_language(p, default_language)) for p in paths]


class PacedSTT:
    """A speech-to-text backend whose streams receive audio no faster than real time: frame k
    (ending at audio time T) is handed over at stream start + T, as a live source would.
    The pipeline itself is untouched; a recogniser slower than real time simply falls behind.

    After the first final transcript the rest of the file is fed without pacing: in a live
    session (VoiceSession) the turn starts at the final, while `VoicePipeline.run` drains the
    file first -- pacing the trailing silence would add its duration to first_token/tts_start.

    Implements :class:`~spark_voice.backends.base.SpeechToText` by delegating every call to
    `inner`; only :meth:`stream` differs.
    """

    def __init__(self, inner: SpeechToText) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.is_mock = inner.is_mock

    def load(self) -> None:
        self.inner.load()

    def probe(self) -> None:
        self.inner.probe()

    def info(self) -> BackendInfo:
        return self.inner.info()

    def close(self) -> None:
        self.inner.close()

    def transcribe(self, audio: Audio, language: str | None = None) -> Transcript:
        return self.inner.transcribe(audio, language)

    def stream(self, language: str | None = None, **options: Any) -> PacedStream:
        return PacedStream(self.inner.stream(language, **options))


class PacedStream:
    """One paced stream: :meth:`feed` sleeps until the audio fed so far would have arrived live."""

    def __init__(self, inner: SttStream) -> None:
        self.inner = inner
        self.t0: float | None = None
        self.fed = 0.0
        self.final_seen = False

    def feed(self, audio: Audio) -> list[SttEvent]:
        if self.t0 is None:
            self.t0 = time.perf_counter()
        self.fed += audio.duration
        delay = self.t0 + self.fed - time.perf_counter()
        if delay > 0 and not self.final_seen:
            time.sleep(delay)
        events = self.inner.feed(audio)
        self.final_seen = self.final_seen or any(e.kind == "final" for e in events)
        return events

    def flush(self) -> list[SttEvent]:
        return self.inner.flush()

    @property
    def voiced_ms(self) -> float | None:
        return getattr(self.inner, "voiced_ms", None)

    @property
    def on_turn_end(self) -> TurnEndHook | None:
        """The inner stream's speculative-start hook (see spark_voice.turn.speculative)."""
        return getattr(self.inner, "on_turn_end", None)

    @on_turn_end.setter
    def on_turn_end(self, hook: TurnEndHook | None) -> None:
        self.inner.on_turn_end = hook  # type: ignore[attr-defined]
