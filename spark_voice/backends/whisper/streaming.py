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
give the same text (STT_FINAL_CTX=fitted by default: an encoder context fitted to the utterance,
see the recognizer).

End of turn: with an end-of-turn model (STT_TURN_DETECTION=on, :mod:`spark_voice.turn`) the VAD
reports pauses of STT_TURN_SHORT_SILENCE_MS; the model hears the utterance and either ends the
turn there (``speech_end`` ``reason="complete"``) or the stream keeps listening: speech continues
the same utterance, and STT_TURN_LONG_SILENCE_MS of silence ends it (``reason="timeout"``).
Without it the turn ends after STT_SILENCE_MS (``reason="silence"``). ``speech_end`` carries the
silence waited after the voice stopped (``silence_ms``). An utterance whose final text is empty
(noise) gives ``speech_end`` without ``final``. ``audio_time`` of an event is the seconds of input
consumed when it was detected. The VAD's onnxruntime session uses 1 intra-op thread without spinning.

Speculative start (:mod:`spark_voice.turn.speculative`): when the turn ends, before the final is
decoded, ``on_turn_end(partial, agreeing, language)`` (when set) hears the last partial and how
many partial decodes in a row gave its words; it may start the LLM on it and returns the threads
the final decode may use meanwhile (0: STT_THREADS).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ...audio.vad import FRAME, SpeechDetector
from ...errors import AudioError
from ...turn.speculative import PartialTracker
from ...types import SAMPLE_RATE_STT, Audio, SttEvent
from .filters import join_texts
from .windowing import is_silent

if TYPE_CHECKING:
    from ...turn import EndOfTurn
    from ...turn.speculative import TurnEndHook
    from .recognizer import WhisperCppSTT

__all__ = ["WhisperCppStream"]

SR = SAMPLE_RATE_STT
PREROLL_S = 0.3            # audio kept before the VAD start of an utterance
FRAME_MS = FRAME * 1000.0 / SR  # one VAD frame (512 samples at 16 kHz = 32 ms)


class WhisperCppStream:
    """One live audio stream; see the module docstring. Not thread-safe (one feeder)."""

    def __init__(self, stt: WhisperCppSTT, language: str, *, partial_interval_ms: int, silence_ms: int,
                 max_utterance_s: float, end_of_turn: EndOfTurn | None = None,
                 vad_threshold: float | None = None, prefix_padding_ms: int | None = None) -> None:
        self.stt, self.language = stt, language
        self._vad = stt.load_vad().new_state()
        # with an end-of-turn model the VAD reports short pauses and the model decides (see turn/)
        self.end_of_turn = end_of_turn
        self._silence_ms = end_of_turn.short_ms if end_of_turn is not None else silence_ms
        self._threshold = stt.vad_threshold if vad_threshold is None else float(vad_threshold)
        self._det = SpeechDetector(threshold=self._threshold, min_silence_ms=self._silence_ms)
        self._pause_at = 0
        self._voiced = 0           # VAD frames at or above the threshold in the current utterance
        self._partial_step = int(partial_interval_ms * SR / 1000)
        self._max_utt = int(max_utterance_s * SR)
        self._preroll = int((PREROLL_S if prefix_padding_ms is None else prefix_padding_ms / 1000.0) * SR)
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
        self.partials = PartialTracker()  # agreeing partial decodes (speculative start)
        self.on_turn_end: TurnEndHook | None = None

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
            if p >= self._threshold:
                self._voiced += 1
            eot = self.end_of_turn
            if ev == "start" and eot is not None and eot.holding and self._utt_start is not None:
                eot.resume()  # the user went on after a mid-turn pause: the same utterance continues
                continue
            if ev == "end" and eot is not None and self._utt_start is not None:
                self._pause_at = end - self._det.min_silence_frames * FRAME
                if not eot.on_pause(self._slice(self._utt_start, end)):
                    continue  # incomplete: keep listening up to the long silence
                ev = "turn_end"
            if (ev is None and eot is not None and eot.holding and self._utt_start is not None
                    and eot.waited((end - self._pause_at) * 1000.0 / SR)):
                ev = "turn_end"
            if ev == "start":
                self._voiced = 0
                self._utt_start = max(self._base, end - FRAME - self._preroll)
                self._next_partial = end + self._partial_step
                self._last_partial, self._partial_lang = "", ""
                self.partials.reset()
                events.append(SttEvent("speech_start", audio_time=end / SR, language=self._lang_hint()))
            elif ev in ("end", "turn_end"):
                waited = self._det.min_silence_frames * FRAME if eot is None else end - self._pause_at
                reason = "silence" if eot is None else ("complete" if eot.last_probability is not None
                                                        and eot.last_probability >= eot.threshold else "timeout")
                events.append(SttEvent("speech_end", audio_time=end / SR, language=self._lang_hint(),
                                       silence_ms=round(waited * 1000.0 / SR, 1), reason=reason))
                # after a held pause the final hears the speech plus the short pause, not 2 s of silence
                until = self._pause_at + self._det.min_silence_frames * FRAME if reason == "timeout" else None
                events += self._final(end, until, self._turn_end())
            elif eot is not None and eot.holding:
                pass  # a held pause: no partials, no utterance cap
            elif self._utt_start is not None:
                if end - self._utt_start >= self._max_utt:
                    events += self._final(end)  # cap reached: finalise, the speech goes on
                    self._utt_start = end
                    self._next_partial = end + self._partial_step
                    self._last_partial, self._partial_lang = "", ""
                    self.partials.reset()
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

    @property
    def voiced_ms(self) -> float:
        """Voiced audio (VAD at or above the threshold) of the utterance in progress, in ms."""
        return self._voiced * FRAME_MS if self._utt_start is not None else 0.0

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
        self.partials.decoded(text)
        if not text or text == self._last_partial:
            return []
        self._last_partial = text
        return [SttEvent("partial", text, audio_time=end / SR, language=detected)]

    def _turn_end(self) -> int:
        """The turn ended: tell `on_turn_end` the last partial (see the module docstring)."""
        hook, p = self.on_turn_end, self.partials
        if hook is None or not p.text or self._utt_start is None:
            return 0
        return int(hook(p.text, p.agreeing, self._partial_lang or self._lang_hint()) or 0)

    def _final(self, end: int, until: int | None = None, n_threads: int = 0) -> list[SttEvent]:
        """Decode the utterance [start, until or end); `until` leaves out a long held silence;
        `n_threads` > 0: the decode's threads (an LLM runs beside it)."""
        start, self._utt_start = self._utt_start, None
        if start is None:
            return []
        samples = self._slice(start, min(end, until) if until is not None else end).copy()
        self._drop_before(max(self._base, end - self._preroll))
        if is_silent(samples):
            return []
        segs, lang = self.stt.decode(samples, self.language, offset=start / SR, n_threads=n_threads or None)
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
            events.append(SttEvent("speech_end", audio_time=end / SR, language=self._lang_hint(), reason="flush"))
            events += self._final(end, None, self._turn_end())
        if self.end_of_turn is not None:
            self.end_of_turn.reset()
        self._det.reset()
        self._vad.reset()
        self._len = 0
        self._base = self._frames_end = end
        # the VAD restarts on a frame grid from `end`
        return events
