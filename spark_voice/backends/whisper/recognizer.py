"""Speech to text in-process on whisper.cpp through pywhispercpp: :class:`WhisperCppSTT`.

    stt = WhisperCppSTT.from_settings(settings)         # STT_MODEL, STT_LANGUAGE, STT_THREADS ...
    tr = stt.transcribe(load_audio("question.wav"))     # Transcript(text, segments, language, timings)
    s = stt.stream()                                    # live: feed 20-32 ms frames (see .streaming)
    for frame in frames: events = s.feed(frame)         # speech_start, partial, speech_end, final
    events = s.flush()                                  # end of input: finalise the utterance

Model: STT_MODEL is always resolved to an existing local ggml file (a bare name such as "base"
would make pywhispercpp download it); a missing file raises ModelNotFound naming
``spark-voice models prepare --small``; an incomplete one is caught by
:func:`spark_voice.models.ggml.check_ggml_file` before whisper.cpp sees it. STT_LANGUAGE is ``ja``
by default; ``auto`` lets whisper detect the language per call (reported in
``Transcript.language``). An ``.en`` model with a non-English language is reported in
``warnings()`` (an English-only model cannot write Japanese).

Decoding (settings map 1:1 to whisper_full_params): ``n_threads`` = STT_THREADS, ``language``,
greedy decoding, ``no_context=True`` (no text carried between calls, so a result depends only on
its audio). Audio is resampled to 16 kHz mono with soxr; whisper's non-speech markers
([BLANK_AUDIO], (music) ...) are dropped, and so is a transcript that is only one of whisper's
well-known non-speech hallucinations (:mod:`.filters`) when the VAD finds no speech in the audio.
Audio shorter than 0.1 s or digitally silent is not sent to whisper (empty transcript). Audio up
to 30 s is decoded in one call; longer audio is cut into windows of at most 30 s at pauses found
by the VAD (:mod:`.windowing`). Calls into the model are serialised by a lock (one whisper
context per backend); the binding releases the GIL while it runs. The OpenMP wait policy and
whisper.cpp's log lines are handled by :mod:`.native`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ...audio.io import AudioInput, load_audio, resample
from ...audio.vad import SileroVAD, find_vad_model, load_vad
from ...errors import AudioError, ConfigError, ModelNotFound
from ...models.ggml import check_ggml_file
from ...text import drop_markers
from ...types import SAMPLE_RATE_STT, Audio, Segment, Transcript
from ..base import BaseBackend
from .filters import is_hallucination, join_texts, trim_repeats
from .native import capture_log, check_omp_policy, has_cuda, import_pywhispercpp
from .streaming import WhisperCppStream
from .windowing import FLASH_ATTN, WINDOW_S, final_frames, is_silent, partial_frames, plan_windows

if TYPE_CHECKING:
    from ...config import Settings
    from ...turn import EndOfTurn

__all__ = ["WhisperCppSTT", "as_audio"]

log = logging.getLogger("spark_voice.stt")

SR = SAMPLE_RATE_STT
PAD_TO_S = 1.05            # whisper.cpp skips input shorter than 1 s: pad short input with zeros


def as_audio(audio: AudioInput, sample_rate: int | None) -> Audio:
    """Audio as is; a path, encoded bytes or a numpy array (with `sample_rate`) decoded."""
    if isinstance(audio, Audio):
        return audio
    return load_audio(audio, source_rate=sample_rate)


class WhisperCppSTT(BaseBackend):
    """whisper.cpp (pywhispercpp) speech to text; see the module docstring."""

    provider = "whisper_cpp"
    role = "stt"
    raw_label = ("pywhispercpp Model.transcribe(whole clip, 16 kHz float32) on the backend's model, "
                 "with its final-decode parameters")

    def __init__(self, model_path: str | os.PathLike[str], *, language: str = "ja", n_threads: int = 2,
                 vad_model: str | os.PathLike[str] | None = None, vad_threshold: float = 0.5,
                 partial_interval_ms: int = 500, silence_ms: int = 500, max_utterance_s: float = 30.0,
                 use_gpu: bool = False, endpoint: str = "", final_ctx: str = "full",
                 final_ctx_margin_s: float = 1.0, end_of_turn: Callable[[], EndOfTurn | None] | None = None) -> None:
        super().__init__()
        # final decode: "full" = whisper's 30 s encoder window, "fitted" = audio_ctx fitted to the
        # utterance plus final_ctx_margin_s (STT_FINAL_CTX, STT_FINAL_CTX_MARGIN_S)
        self.final_ctx, self.final_ctx_margin_s = final_ctx, float(final_ctx_margin_s)
        # makes a fresh spark_voice.turn.EndOfTurn per stream (None: fixed silence ends turns)
        self.end_of_turn = end_of_turn
        self.model_path = Path(model_path)
        self.language = (language or "auto").strip().lower()
        self.n_threads = int(n_threads)
        self.vad_model = Path(vad_model) if vad_model else None
        self.vad_threshold = float(vad_threshold)
        self.partial_interval_ms = int(partial_interval_ms)
        self.silence_ms = int(silence_ms)
        self.max_utterance_s = float(max_utterance_s)
        self.use_gpu = bool(use_gpu)
        self._endpoint_override = endpoint
        self._model: Any = None  # pywhispercpp.model.Model
        self._pw: ModuleType | None = None
        self._infer_lock = threading.Lock()
        self._vad: SileroVAD | None = None
        self._vad_error: Exception | None = None
        self._warnings: list[str] = []
        self._multilingual: bool | None = None
        self._gpu_build = False
        if self.language == "ja" and ".en" in self.model_path.name:
            self._warn(f"STT_LANGUAGE=ja with the English-only model {self.model_path.name}: it cannot "
                       "transcribe Japanese; use a multilingual model such as ggml-base.bin")

    @classmethod
    def from_settings(cls, settings: Settings) -> WhisperCppSTT:
        vad, vad_error = None, None
        try:
            vad = find_vad_model(settings)
        except Exception as exc:  # raised when streaming is used; transcribe() works without VAD
            vad_error = exc
        stt = cls(settings.model_path("stt"), language=settings.stt_language, n_threads=settings.stt_threads,
                  vad_model=vad, vad_threshold=settings.stt_vad_threshold,
                  partial_interval_ms=settings.stt_partial_interval_ms, silence_ms=settings.stt_silence_ms,
                  max_utterance_s=settings.stt_max_utterance_s, use_gpu=settings.backend == "cuda",
                  endpoint=settings.stt_endpoint, final_ctx=settings.stt_final_ctx,
                  final_ctx_margin_s=settings.stt_final_ctx_margin_s)
        stt._vad_error = vad_error
        if settings.stt_turn_detection != "off":
            def end_of_turn() -> EndOfTurn | None:
                from ...turn import build_end_of_turn

                return build_end_of_turn(settings)
            stt.end_of_turn = end_of_turn
        return stt

    # ------------------------------------------------------------- lifecycle
    def _warn(self, msg: str) -> None:
        if msg not in self._warnings:
            self._warnings.append(msg)
            log.warning(msg)

    def warnings(self) -> list[str]:
        return list(self._warnings)

    @property
    def endpoint(self) -> str:
        return self._endpoint_override or f"inproc:whisper_cpp:{self.model_path}@{self.device}"

    @property
    def device(self) -> str:
        return "cuda" if self.use_gpu and self._gpu_build else "cpu"

    def _load(self) -> None:
        if not self.model_path.is_file():
            raise ModelNotFound(f"STT_MODEL: {self.model_path} does not exist; run `spark-voice models prepare "
                                "--small` (dev models) or put a whisper.cpp ggml file there")
        omp = check_omp_policy()
        if omp:
            self._warn(omp)
        pw, Model = import_pywhispercpp()
        self._pw = pw
        self._check_language(self.language)  # STT_LANGUAGE: a code whisper knows, or auto
        self._gpu_build = has_cuda(pw)
        if self.use_gpu and not self._gpu_build:
            self._warn("BACKEND=cuda but this pywhispercpp build has no CUDA: whisper runs on the CPU")
        problem = check_ggml_file(self.model_path)
        if problem:
            raise ModelNotFound(f"STT_MODEL: {self.model_path} is not a usable whisper.cpp model: {problem}")
        with capture_log() as errors:
            try:
                # the path exists, so pywhispercpp never treats it as a model name to download
                model = Model(str(self.model_path.resolve()),
                              context_params={"use_gpu": self.use_gpu, "flash_attn": FLASH_ATTN},
                              **self._full_params(self.language))
            except Exception as exc:
                raise ModelNotFound(f"STT_MODEL: {self.model_path} is not a loadable whisper.cpp model "
                                    f"({type(exc).__name__}: {exc})") from None
        # pywhispercpp wraps a NULL context when whisper.cpp fails to load (using it would crash):
        # whisper.cpp says so in its log
        errs = [e[2:] for e in errors if e.startswith("4:")]
        if any("failed to" in e for e in errs) or getattr(model, "_ctx", None) is None:
            raise ModelNotFound(f"STT_MODEL: {self.model_path} is not a loadable whisper.cpp model "
                                f"({'; '.join(errs) or 'no context'})")
        if self._gpu_build and self.use_gpu and any("no GPU found" in e for e in errors):
            self._gpu_build = False
            self._warn("BACKEND=cuda but whisper.cpp found no GPU: whisper runs on the CPU")
        self._model = model
        try:
            self._multilingual = bool(pw.whisper_is_multilingual(model._ctx))
        except Exception:
            self._multilingual = None
        if self._multilingual is False and self.language not in ("en", "auto"):
            self._warn(f"STT_LANGUAGE={self.language} but {self.model_path.name} is English-only: "
                       "it cannot transcribe that language")
        log.info("whisper.cpp model loaded", extra={"role": "stt", "model": str(self.model_path),
                                                      "language": self.language, "n_threads": self.n_threads})

    def _probe(self) -> None:
        # a real (tiny) inference: 1.1 s of faint noise, decoded through the engine
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(int(1.1 * SR)) * 0.01).astype(np.float32)
        self.decode(noise, self.language, partial=True)

    def close(self) -> None:
        with self._infer_lock:
            model, self._model = self._model, None
            if model is not None and getattr(model, "_ctx", None) is not None and self._pw is not None:
                try:
                    self._pw.whisper_free(model._ctx)
                finally:
                    model._ctx = None
        super().close()

    # ------------------------------------------------------------- decoding
    def _full_params(self, language: str) -> dict[str, Any]:
        """whisper_full_params of a whole-file / final decode (set on every call: they persist)."""
        return dict(n_threads=self.n_threads, language="" if language == "auto" else language,
                    translate=False, no_context=True, single_segment=False, no_timestamps=False,
                    audio_ctx=0, max_tokens=0, temperature=0.0, temperature_inc=0.2,
                    print_progress=False, print_realtime=False, print_timestamps=False, print_special=False)

    def fitted_ctx(self, seconds: float, margin_s: float | None = None) -> int:
        """Encoder frames (20 ms each) for a final of `seconds`: the audio plus a margin, rounded up to
        CTX_STEP, at least FINAL_MIN_CTX, at most 1500 (whisper's whole window)."""
        margin = self.final_ctx_margin_s if margin_s is None else margin_s
        return final_frames(seconds + margin)

    def _final_params(self, language: str, seconds: float) -> dict[str, Any]:
        """A whole-file / final decode: full context, or (STT_FINAL_CTX=fitted) an encoder context
        fitted to the audio and one segment (with a short context whisper.cpp otherwise seeks on
        and may write a second, hallucinated segment such as "Thank you." over the tail)."""
        p = self._full_params(language)
        if self.final_ctx == "fitted" and seconds <= WINDOW_S:
            p.update(audio_ctx=self.fitted_ctx(seconds), single_segment=True)
        return p

    def _partial_params(self, language: str, seconds: float) -> dict[str, Any]:
        ctx = partial_frames(seconds)
        p = self._full_params(language)
        p.update(single_segment=True, no_timestamps=True, audio_ctx=ctx, temperature_inc=0.0,
                 max_tokens=int(seconds * 12) + 16)
        return p

    def _check_language(self, language: str) -> str:
        language = (language or "auto").strip().lower()
        if language != "auto" and self._pw is not None and self._pw.whisper_lang_id(language) < 0:
            raise ConfigError(f"unknown STT language {language!r}; use a whisper language code such as "
                              "ja, en, zh, de, or auto")
        return language

    def decode(self, samples: np.ndarray, language: str, *, partial: bool = False,
               offset: float = 0.0, n_threads: int | None = None) -> tuple[list[Segment], str]:
        """One whisper_full call on 16 kHz mono samples -> (segments with absolute times, language).

        `partial`: the cheap parameters of a streaming partial (shortened encoder context, one
        segment, no timestamps, a token cap) and decode loops trimmed; else those of
        :meth:`transcribe`. `offset`: seconds added to the segment times. `n_threads`: instead of STT_THREADS."""
        self.load()
        n_real = len(samples)
        if len(samples) < int(PAD_TO_S * SR):  # whisper.cpp returns nothing for input under 1 s
            samples = np.concatenate([samples, np.zeros(int(PAD_TO_S * SR) - len(samples), np.float32)])
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        params = (self._partial_params(language, len(samples) / SR) if partial
                  else self._final_params(language, len(samples) / SR))
        params["n_threads"] = max(1, int(n_threads)) if n_threads else self.n_threads
        with self._infer_lock:
            model = self._model
            if model is None or self._pw is None:
                raise ModelNotFound(f"{self.model_path}: the model was closed")
            raw = model.transcribe(samples, **params)
            try:
                lang = self._pw.whisper_lang_str(self._pw.whisper_full_lang_id(model._ctx)) or ""
            except Exception:
                lang = ""
        if language != "auto":
            lang = language
        segs = []
        limit = offset + n_real / SR  # whisper may stamp the last segment past the audio
        for s in raw:
            text = drop_markers(s.text)
            if partial:
                text = trim_repeats(text)
            if text:  # t0 / t1 are in centiseconds
                start, end = min(offset + s.t0 / 100.0, limit), min(offset + s.t1 / 100.0, limit)
                segs.append(Segment(round(start, 2), round(max(start, end), 2), text))
        return segs, lang

    def transcribe(self, audio: AudioInput, language: str | None = None, *,
                   sample_rate: int | None = None) -> Transcript:
        """Transcribe Audio (or a path / encoded bytes / numpy array with `sample_rate`).

        language: a code such as "ja", "en", or "auto"; default STT_LANGUAGE.
        """
        t_start = time.perf_counter()
        audio = as_audio(audio, sample_rate)
        self.load()
        lang = self._check_language(language or self.language)
        t0 = time.perf_counter()
        samples = resample(audio, SR).samples
        timings = {"resample": time.perf_counter() - t0}
        if not np.all(np.isfinite(samples)):
            raise AudioError("audio contains NaN or infinite samples")
        if is_silent(samples):
            timings["decode"] = 0.0
            timings["total"] = time.perf_counter() - t_start
            return Transcript("", [], "" if lang == "auto" else lang, timings)
        windows = [(0, len(samples))]
        if len(samples) > WINDOW_S * SR:
            t0 = time.perf_counter()
            windows = self.plan_windows(samples)
            timings["vad"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        segments: list[Segment] = []
        langs: list[str] = []
        for s, e in windows:
            segs, detected = self.decode(samples[s:e], lang, offset=s / SR)
            segments += segs
            if segs and detected:
                langs.append(detected)
        timings["decode"] = time.perf_counter() - t0
        out_lang = max(set(langs), key=langs.count) if langs else ("" if lang == "auto" else lang)
        text = join_texts([s.text for s in segments], out_lang)
        if text and is_hallucination(text) and not self._has_speech(samples):
            log.debug("dropped %r: no speech found by the VAD", text)
            text, segments = "", []
        timings["total"] = time.perf_counter() - t_start
        return Transcript(text, segments, out_lang, timings)

    def _has_speech(self, samples: np.ndarray) -> bool:
        """True when the VAD finds speech (or cannot tell: no VAD installed)."""
        try:
            probs = self.load_vad().probs(samples)
        except Exception:
            return True
        return bool(len(probs)) and float(probs.max()) >= self.vad_threshold

    def plan_windows(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """Windows of at most 30 s of 16 kHz `samples`, cut at pauses found by the VAD (or, without
        a VAD, at low energy); spans without speech are left out."""
        probs = None
        try:
            probs = self.load_vad().probs(samples)
        except Exception as exc:  # no VAD: cut at the quietest frames instead
            log.debug("no VAD for windowing (%s); cutting at low energy", exc)
        return plan_windows(samples, probs, self.vad_threshold)

    # ------------------------------------------------------------- benchmark hook
    def raw_transcribe(self, audio: Audio, language: str) -> Callable[[], object]:
        """The bare engine call behind :meth:`transcribe`, for ``spark-voice bench``'s STT floor.

        Loads the model and prepares, outside the returned call, the final-decode parameters for
        `language` ("" or "auto": detect) and a contiguous float32 copy of `audio` (16 kHz mono
        expected; not resampled). The returned callable runs pywhispercpp's ``Model.transcribe``
        once on them -- no resampling, silence check, windowing, lock or text clean-up -- and
        returns its raw segments. The parameters are passed on every call because whisper keeps
        them on the model. :attr:`raw_label` says what it calls.
        """
        self.load()
        model = self._model
        if model is None:
            raise ModelNotFound(f"{self.model_path}: the model was closed")
        samples = np.ascontiguousarray(audio.samples, dtype=np.float32)
        params = self._final_params(language or "auto", len(samples) / SR)
        return lambda: model.transcribe(samples, **params)

    # ------------------------------------------------------------- streaming
    def load_vad(self) -> SileroVAD:
        """The silero VAD session (loaded on first use); raises MissingDependency / ModelNotFound."""
        if self._vad is None:
            if self._vad_error is not None:
                raise self._vad_error
            path = self.vad_model or find_vad_model()
            self._vad = load_vad(path, threads=1)
        return self._vad

    def stream(self, language: str | None = None, *, partial_interval_ms: int | None = None,
               silence_ms: int | None = None, max_utterance_s: float | None = None,
               vad_threshold: float | None = None, prefix_padding_ms: int | None = None,
               end_of_turn: Callable[[], EndOfTurn | None] | None = None) -> WhisperCppStream:
        """A streaming recogniser (VAD + partials + finals); raises MissingDependency without VAD. Keywords override
        STT_PARTIAL_INTERVAL_MS / STT_SILENCE_MS (then no end-of-turn model) / STT_MAX_UTTERANCE_S /
        STT_VAD_THRESHOLD / the 300 ms kept before speech / the end-of-turn factory, for this stream only."""
        self.load()
        eot = end_of_turn() if end_of_turn is not None else None
        if end_of_turn is None and self.end_of_turn is not None and not silence_ms:
            try:
                eot = self.end_of_turn()
            except Exception as exc:  # no model: the fixed silence still ends turns
                self._warn(f"end-of-turn detection off ({exc}); turns end after STT_SILENCE_MS of silence")
        return WhisperCppStream(self, self._check_language(language or self.language),
                                partial_interval_ms=partial_interval_ms or self.partial_interval_ms,
                                silence_ms=silence_ms or self.silence_ms,
                                max_utterance_s=max_utterance_s or self.max_utterance_s, end_of_turn=eot,
                                vad_threshold=vad_threshold, prefix_padding_ms=prefix_padding_ms)
