"""The live recogniser of :class:`~.recognizer.WhisperCppSTT`: :class:`WhisperCppStream`.

silero VAD (see :mod:`spark_voice.audio.vad`) on 32 ms frames, start at STT_VAD_THRESHOLD, end
after STT_SILENCE_MS below ``threshold - 0.15``. ``speech_start`` is reported on the frame that
crosses the threshold (the pipeline uses it for barge-in). While speech goes on, a partial
transcript of the current utterance only (plus 0.3 s pre-roll) is decoded every
STT_PARTIAL_INTERVAL_MS of new audio (or, when a partial decode took longer than half that
interval, after twice its wall time in audio, so that partials never occupy more than about half
of real time on a slow machine); partials use a shortened encoder context (``audio_ctx``), one
segment, no timestamps, no temperature fallback and a token cap, so their cost grows with the
utterance, not with 30 s. An utterance reaching STT_MAX_UTTERANCE_S is finalised there and a new
one continues. At the end of speech come ``speech_end`` and ``final``; the final is decoded with
exactly the parameters of :meth:`WhisperCppSTT.transcribe`, so a streamed clip and the whole clip
give the same text. An utterance whose final text is empty (noise) gives ``speech_end`` without
``final``. ``audio_time`` of an event is the seconds of input consumed when it was detected. The
VAD's onnxruntime session uses 1 intra-op thread without spinning.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ...audio.vad import FRAME, SpeechDetector
from ...errors import AudioError
from ...types import SAMPLE_RATE_STT, Audio, SttEvent
from .filters import join_texts
from .windowing import is_silent

if TYPE_CHECKING:
    from .recognizer import WhisperCppSTT

__all__ = ["WhisperCppStream"]

SR = SAMPLE_RATE_STT
PREROLL_S = 0.3            # audio kept before the VAD start of an utterance


class WhisperCppStream:
    """One live audio stream; see the module docstring. Not thread-safe (one feeder)."""

    def __init__(self, stt: WhisperCppSTT, language: str, *, partial_interval_ms: int, silence_ms: int,
                 max_utterance_s: float) -> None:
        self.stt, self.language = stt, language
        self._vad = stt.load_vad().new_state()
        self._det = SpeechDetector(threshold=stt.vad_threshold, min_silence_ms=silence_ms)
        self._partial_step = int(partial_interval_ms * SR / 1000)
        self._max_utt = int(max_utterance_s * SR)
        self._preroll = int(PREROLL_S * SR)
        self._resampler: Any = None  # soxr.ResampleStream while the input is not 16 kHz
        self._in_rate = SR
        self._store = np.zeros(int(4 * SR), dtype=np.float32)  # audio from global sample `_base` on,
        self._len = 0                                           # in a buffer that grows by doubling
        self._base = 0
        self._frames_end = 0       # global samples covered by VAD frames
        self._utt_start: int | None = None
        self._next_partial = 0
        self._last_partial = ""
        self._partial_lang = ""
        self.partial_seconds = 0.0  # wall time spent on partial decodes (for benchmarks)
        self.partial_count = 0

    # --------------------------------------------------------- input
    def _to_16k(self, audio: Audio) -> np.ndarray:
        """Streaming soxr resampling (state kept across chunks, so chunk edges leave no artefacts)."""
        tail = None
        if self._resampler is not None and audio.sample_rate != self._in_rate:  # the rate changed
            tail = self._drain_resampler()
        if audio.sample_rate == SR:
            x = audio.samples
        else:
            if self._resampler is None:
                import soxr

                self._in_rate = audio.sample_rate
                self._resampler = soxr.ResampleStream(self._in_rate, SR, 1, dtype="float32", quality="HQ")
            x = np.asarray(self._resampler.resample_chunk(audio.samples), dtype=np.float32)
        return x if tail is None or not len(tail) else np.concatenate([tail, x])

    def _drain_resampler(self) -> np.ndarray:
        r, self._resampler = self._resampler, None
        if r is None:
            return np.zeros(0, np.float32)
        return np.asarray(r.resample_chunk(np.zeros(0, np.float32), last=True), dtype=np.float32)

    def feed(self, audio: Audio) -> list[SttEvent]:
        """Push audio (any rate, mono or (frames, channels)); returns the events it produced."""
        if not isinstance(audio, Audio):
            raise AudioError(f"stream.feed expects Audio, got {type(audio).__name__}")
        x = self._to_16k(audio)
        if not np.all(np.isfinite(x)):
            raise AudioError("audio contains NaN or infinite samples")
        return self._push(x)

    def _push(self, x: np.ndarray) -> list[SttEvent]:
        events: list[SttEvent] = []
        if len(x):
            self._append(x)
        probs = self._vad.feed(x)
        for p in probs:
            self._frames_end += FRAME
            end = self._frames_end
            ev = self._det.feed(float(p))
            if ev == "start":
                self._utt_start = max(self._base, end - FRAME - self._preroll)
                self._next_partial = end + self._partial_step
                self._last_partial, self._partial_lang = "", ""
                events.append(SttEvent("speech_start", audio_time=end / SR, language=self._lang_hint()))
            elif ev == "end":
                events.append(SttEvent("speech_end", audio_time=end / SR, language=self._lang_hint()))
                events += self._final(end)
            elif self._utt_start is not None:
                if end - self._utt_start >= self._max_utt:
                    events += self._final(end)  # cap reached: finalise, the speech goes on
                    self._utt_start = end
                    self._next_partial = end + self._partial_step
                    self._last_partial, self._partial_lang = "", ""
                elif end >= self._next_partial and self._det.silent_frames == 0:  # not in a pause
                    t0 = time.perf_counter()
                    events += self._partial(end)
                    # bounded cost: partials never take more than about half of real time
                    busy = int(2.0 * (time.perf_counter() - t0) * SR)
                    self._next_partial = end + max(self._partial_step, busy)
        if self._utt_start is None:  # keep only the pre-roll while nobody speaks
            keep_from = max(self._base, self._frames_end - self._preroll)
            self._drop_before(keep_from)
        return events

    def _lang_hint(self) -> str:
        return "" if self.language == "auto" else self.language

    def _slice(self, start: int, end: int) -> np.ndarray:
        return self._store[start - self._base:end - self._base]

    def _append(self, x: np.ndarray) -> None:
        need = self._len + len(x)
        if need > len(self._store):
            grown = np.zeros(max(need, 2 * len(self._store)), dtype=np.float32)
            grown[:self._len] = self._store[:self._len]
            self._store = grown
        self._store[self._len:need] = x
        self._len = need

    def _drop_before(self, pos: int) -> None:
        k = min(pos - self._base, self._len)
        if k > 0:
            self._store[:self._len - k] = self._store[k:self._len].copy()
            self._len -= k
            self._base += k

    # --------------------------------------------------------- decoding
    def _partial(self, end: int) -> list[SttEvent]:
        assert self._utt_start is not None
        lang = self._partial_lang or self.language
        t0 = time.perf_counter()
        segs, detected = self.stt.decode(self._slice(self._utt_start, end), lang, partial=True)
        self.partial_seconds += time.perf_counter() - t0
        self.partial_count += 1
        if self.language == "auto" and detected and not self._partial_lang:
            self._partial_lang = detected  # later partials of this utterance skip detection
        text = join_texts([s.text for s in segs], detected)
        if not text or text == self._last_partial:
            return []
        self._last_partial = text
        return [SttEvent("partial", text, audio_time=end / SR, language=detected)]

    def _final(self, end: int) -> list[SttEvent]:
        start, self._utt_start = self._utt_start, None
        if start is None:
            return []
        samples = self._slice(start, end).copy()
        self._drop_before(max(self._base, end - self._preroll))
        if is_silent(samples):
            return []
        segs, lang = self.stt.decode(samples, self.language, offset=start / SR)
        text = join_texts([s.text for s in segs], lang)
        if not text:
            return []
        return [SttEvent("final", text, audio_time=end / SR, language=lang, segments=segs)]

    def flush(self) -> list[SttEvent]:
        """End of input: the rest of the audio is added and an utterance in progress finalised."""
        events: list[SttEvent] = []
        tail = self._drain_resampler()
        if len(tail):
            events += self._push(tail)
        end = self._base + self._len
        if self._utt_start is not None:
            events.append(SttEvent("speech_end", audio_time=end / SR, language=self._lang_hint()))
            events += self._final(end)
        self._det.reset()
        self._vad.reset()
        self._len = 0
        self._base = self._frames_end = end
        # the VAD restarts on a frame grid from `end`
        return events
