"""Speech to text in-process on whisper.cpp through pywhispercpp, with silero VAD streaming.

    stt = WhisperCppSTT.from_settings(settings)         # STT_MODEL, STT_LANGUAGE, STT_THREADS ...
    tr = stt.transcribe(load_audio("question.wav"))     # Transcript(text, segments, language, timings)
    s = stt.stream()                                    # live: feed 20-32 ms frames
    for frame in frames: events = s.feed(frame)         # speech_start, partial, speech_end, final
    events = s.flush()                                  # end of input: finalise the utterance

Model: STT_MODEL is always resolved to an existing local ggml file (a bare name such as "base"
would make pywhispercpp download it); a missing file raises ModelNotFound naming
``spark-voice models prepare --small``. STT_LANGUAGE is ``ja`` by default; ``auto`` lets whisper
detect the language per call (reported in ``Transcript.language``). An ``.en`` model with a
non-English language is reported in ``warnings()`` (an English-only model cannot write Japanese).

Decoding (settings map 1:1 to whisper_full_params): ``n_threads`` = STT_THREADS, ``language``,
greedy decoding, ``no_context=True`` (no text carried between calls, so a result depends only on
its audio). Audio is resampled to 16 kHz mono with soxr; whisper's non-speech markers
([BLANK_AUDIO], (music) ...) are dropped, and so is a transcript that is only one of whisper's
well-known non-speech hallucinations ("ご視聴ありがとうございました", "Thanks for watching") when
the VAD finds no speech in the audio. Audio shorter than 0.1 s or digitally silent is not sent
to whisper (empty transcript). Audio up to 30 s is decoded in one call; longer audio is cut into
windows of at most 30 s at pauses found by the VAD (non-speech windows are skipped), so whisper's
working memory stays that of one window. Calls into the model are serialised by a lock (one
whisper context per backend); the binding releases the GIL while it runs.

Streaming (:class:`WhisperCppStream`): silero VAD (see :mod:`spark_voice.audio.vad`) on 32 ms
frames, start at STT_VAD_THRESHOLD, end after STT_SILENCE_MS below ``threshold - 0.15``.
``speech_start`` is reported on the frame that crosses the threshold (the pipeline uses it for
barge-in). While speech goes on, a partial transcript of the current utterance only (plus 0.3 s
pre-roll) is decoded every STT_PARTIAL_INTERVAL_MS of new audio (or, when a partial decode took
longer than half that interval, after twice its wall time in audio, so that partials never
occupy more than about half of real time on a slow machine); partials use a shortened encoder
context (``audio_ctx``), one segment, no timestamps, no temperature fallback and a token cap, so
their cost grows with the utterance, not with 30 s. An utterance reaching STT_MAX_UTTERANCE_S is
finalised there and a new one continues. At the end of speech come ``speech_end`` and ``final``;
the final is decoded with exactly the parameters of :meth:`WhisperCppSTT.transcribe`, so a
streamed clip and the whole clip give the same text. Those are STT_FINAL_CTX=fitted by default:
audio up to 30 s is decoded with an encoder context fitted to it (the audio plus
STT_FINAL_CTX_MARGIN_S, at least 512 frames = 10.24 s) as one segment, instead of whisper's full
30 s window (``full``); the encoder cost scales with the context.

End of turn: with an end-of-turn model (STT_TURN_DETECTION=on, :mod:`spark_voice.turn`) the VAD
reports pauses of STT_TURN_SHORT_SILENCE_MS; the model hears the utterance and either ends the
turn there (``speech_end`` ``reason="complete"``) or the stream keeps listening: speech continues
the same utterance, and STT_TURN_LONG_SILENCE_MS of silence ends it (``reason="timeout"``).
Without it the turn ends after STT_SILENCE_MS (``reason="silence"``). ``speech_end`` carries the
silence waited after the voice stopped (``silence_ms``). An utterance whose final text is empty
(noise) gives ``speech_end`` without ``final``. ``audio_time`` of an event is the seconds of input
consumed when it was detected.

Threads: whisper.cpp runs its matrix work on OpenMP (the wheel bundles libgomp). By default idle
OpenMP workers *spin* for a while after each parallel region; with 2 cores and llama.cpp in the
same process those spinning threads steal the LLM's cores (we measured ~10x slower token
generation). ``OMP_WAIT_POLICY=passive`` makes them sleep. libgomp reads it once, when the library
loads, so it must be in the environment before pywhispercpp is imported: ``import spark_voice``
sets it (setdefault; an explicit value wins), tests/conftest.py does too, and loading this backend
sets it if pywhispercpp is not loaded yet. If pywhispercpp was imported before spark_voice and the
variable was not in the process environment, :meth:`WhisperCppSTT.warnings` says so (also logged).
The VAD's onnxruntime session uses 1 intra-op thread without spinning.
whisper.cpp's own log lines go to the ``spark_voice.whisper_cpp`` logger at DEBUG level (errors at
WARNING) instead of stderr; progress printing is off.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioError, ConfigError, MissingDependency, ModelNotFound
from ..text import drop_markers
from ..types import SAMPLE_RATE_STT, Audio, Segment, SttEvent, Transcript
from .base import BaseBackend

log = logging.getLogger("spark_voice.stt")
_wlog = logging.getLogger("spark_voice.whisper_cpp")

SR = SAMPLE_RATE_STT
MIN_SECONDS = 0.1          # shorter input is not decoded
SILENT_PEAK = 1e-4         # peak below this (-80 dBFS) counts as digital silence
WINDOW_S = 30.0            # whisper's window; longer input is cut into windows at pauses
PAD_TO_S = 1.05            # whisper.cpp skips input shorter than 1 s: pad short input with zeros
PREROLL_S = 0.3            # audio kept before the VAD start of an utterance
PARTIAL_MIN_CTX = 384      # encoder frames (20 ms each) for partial decodes, at least ...
PARTIAL_MARGIN_S = 1.0     # ... the utterance plus this margin, rounded up to 64 frames
FRAME_MS = 32.0            # one VAD frame (512 samples at 16 kHz)
# Fitted finals: at least 512 encoder frames (10.24 s). Measured on 12 clips of our voices (6 en, 6 ja,
# 1.3-5 s): 384 frames raised the Japanese CER from 0.049 to 0.107 (駅まで -> エキマで), 512 and more
# matched the full 1500-frame decode (WER en 0.062, CER ja 0.049); see README Performance.
FINAL_MIN_CTX = 512


def _initial_env(name: str) -> bool | None:
    """Whether `name` was in the environment the process started with (None: cannot tell)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            return any(item.split(b"=", 1)[0] == name.encode() for item in f.read().split(b"\0"))
    except OSError:
        return None


def _check_omp_policy() -> str:
    """'' when whisper's OpenMP threads sleep when idle, else a warning text.

    libgomp reads OMP_WAIT_POLICY once, when pywhispercpp loads it. Not loaded yet: make sure the
    variable is set. Loaded already: fine if the variable was set at process start or pywhispercpp
    came after spark_voice (whose import sets it); else it may have loaded without it.
    """
    if "_pywhispercpp" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
        return ""
    hint = "import spark_voice before pywhispercpp, or export OMP_WAIT_POLICY=passive"
    if not os.environ.get("OMP_WAIT_POLICY"):
        return f"OMP_WAIT_POLICY is unset and pywhispercpp is loaded: OpenMP threads busy-wait; {hint}"
    order = list(sys.modules)
    if ("spark_voice" in sys.modules and order.index("_pywhispercpp") < order.index("spark_voice")
            and _initial_env("OMP_WAIT_POLICY") is False):
        return (f"pywhispercpp was imported before spark_voice set OMP_WAIT_POLICY: OpenMP threads may "
                f"busy-wait and slow the other engines; {hint}")
    return ""


# ----------------------------------------------------------------- whisper.cpp logging
_LOG_INSTALLED = False
_LOG_LOCK = threading.Lock()


_CAPTURE: list[str] | None = None  # "level:text" log lines of the model load in progress (_INIT_LOCK)
_INIT_LOCK = threading.Lock()
GGML_MAGIC = b"lmgg"  # 0x67676d6c little endian: whisper.cpp's ggml model files


def _whisper_log(level: int, text: str) -> None:  # called from native code: never raise
    try:
        text = (text or "").rstrip()
        if text:
            _wlog.log(logging.WARNING if level == 4 else logging.DEBUG, text)
            if _CAPTURE is not None:
                _CAPTURE.append(f"{level}:{text}")
    except Exception:
        pass


def _restore_whisper_log() -> None:
    # At interpreter shutdown a Python log callback would run without a thread state: put the
    # default logger back before that (whisper contexts freed later then log to stderr, if at all).
    try:
        import _pywhispercpp as pw

        pw.whisper_log_set(None)
    except Exception:
        pass


def _install_whisper_log(pw) -> None:
    global _LOG_INSTALLED
    with _LOG_LOCK:
        if _LOG_INSTALLED or not hasattr(pw, "whisper_log_set"):
            return
        pw.whisper_log_set(_whisper_log)
        atexit.register(_restore_whisper_log)
        _LOG_INSTALLED = True


# ggml tensor types: (elements per block, bytes per block)
_GGML_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
                9: (32, 36), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210),
                15: (256, 292), 30: (1, 2)}


def check_ggml_file(path: str | os.PathLike) -> str:
    """'' when a whisper.cpp ggml file is complete, else why not (bad magic, truncated, no tensors).

    whisper.cpp accepts a file cut after its vocabulary as an "empty model for testing", and
    pywhispercpp turns a failed load into a context that crashes when used: check first.
    """
    import struct

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        def ints(n: int) -> tuple[int, ...]:
            b = f.read(4 * n)
            if len(b) != 4 * n:
                raise EOFError
            return struct.unpack(f"<{n}i", b)

        try:
            if f.read(4) != GGML_MAGIC:
                return "bad magic (not a whisper.cpp ggml file)"
            ints(11)  # hparams
            n_mel, n_fft = ints(2)
            f.seek(4 * n_mel * n_fft, 1)
            (n_tokens,) = ints(1)
            for _ in range(n_tokens):
                f.seek(ints(1)[0], 1)
            n_tensors = 0
            while f.tell() < size:
                n_dims, name_len, ttype = ints(3)
                if not (0 < n_dims <= 4 and 0 < name_len < 512):
                    return f"corrupt tensor header at byte {f.tell() - 12}"
                ne = ints(n_dims)
                f.seek(name_len, 1)
                if ttype not in _GGML_BLOCKS:
                    return ""  # a type we do not know: leave the check to whisper.cpp
                per, nbytes = _GGML_BLOCKS[ttype]
                n = 1
                for d in ne:
                    n *= d
                f.seek(n // per * nbytes, 1)
                n_tensors += 1
            end = f.tell()
        except EOFError:
            return f"truncated ({size} bytes)"
    if n_tensors == 0:
        return f"no tensors (truncated at {size} bytes?)"
    return "" if end == size else f"truncated ({size} bytes, tensor data runs past the end)"


# ----------------------------------------------------------------- helpers
_REPEAT_RE = re.compile(r"(.{1,20}?)(?:\s*\1){3,}", re.DOTALL)


def _trim_repeats(text: str) -> str:
    """Collapse a phrase repeated 4+ times in a row (a short-context decode loop) to one copy."""
    return _REPEAT_RE.sub(r"\1", text)


def _join(texts: list[str], language: str) -> str:
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        return ""
    if language in ("ja", "zh", "ko") or all(_is_cjk(t[-1]) or _is_cjk(t[0]) for t in texts):
        return "".join(texts)
    return " ".join(texts)


# What whisper writes on non-speech (noise, room tone) learnt from video subtitles. A transcript that
# is only one of these is kept only if the VAD finds speech in the audio.
_HALLUCINATIONS = {
    "ご視聴ありがとうございました", "ご清聴ありがとうございました", "チャンネル登録よろしくお願いします",
    "チャンネル登録お願いします", "最後までご視聴いただきありがとうございます", "おやすみなさい",
    "thankyouforwatching", "thanksforwatching", "thankyou", "you", "bye",
    "subtitlesbytheamaraorgcommunity", "pleasesubscribe",
}


def _hallucination_key(text: str) -> str:
    return re.sub(r"[\W_]+", "", text.lower())


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return 0x3000 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0xFF00 <= o <= 0xFFEF


def _is_silent(samples: np.ndarray) -> bool:
    return len(samples) < int(MIN_SECONDS * SR) or float(np.max(np.abs(samples))) < SILENT_PEAK


def _as_audio(audio: Any, sample_rate: int | None) -> Audio:
    if isinstance(audio, Audio):
        return audio
    from ..audio.io import load_audio

    return load_audio(audio, source_rate=sample_rate)


# ----------------------------------------------------------------- backend
class WhisperCppSTT(BaseBackend):
    """whisper.cpp (pywhispercpp) speech to text; see the module docstring."""

    provider = "whisper_cpp"
    role = "stt"

    def __init__(self, model_path: str | os.PathLike, *, language: str = "ja", n_threads: int = 2,
                 vad_model: str | os.PathLike | None = None, vad_threshold: float = 0.5,
                 partial_interval_ms: int = 500, silence_ms: int = 500, max_utterance_s: float = 30.0,
                 use_gpu: bool = False, endpoint: str = "", final_ctx: str = "full",
                 final_ctx_margin_s: float = 1.0, end_of_turn=None) -> None:
        super().__init__()
        # final decode: "full" = whisper's 30 s encoder window, "fitted" = audio_ctx fitted to the
        # utterance plus final_ctx_margin_s (STT_FINAL_CTX, STT_FINAL_CTX_MARGIN_S)
        self.final_ctx, self.final_ctx_margin_s = final_ctx, float(final_ctx_margin_s)
        # a callable returning a fresh spark_voice.turn.EndOfTurn per stream (None: fixed silence)
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
        self._model = None
        self._pw = None
        self._infer_lock = threading.Lock()
        self._vad = None
        self._vad_error: Exception | None = None
        self._warnings: list[str] = []
        self._multilingual: bool | None = None
        self._gpu_build = False
        if self.language == "ja" and ".en" in self.model_path.name:
            self._warn(f"STT_LANGUAGE=ja with the English-only model {self.model_path.name}: it cannot "
                       "transcribe Japanese; use a multilingual model such as ggml-base.bin")

    @classmethod
    def from_settings(cls, settings) -> WhisperCppSTT:
        from ..audio.vad import find_vad_model

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
            def end_of_turn():
                from ..turn import build_end_of_turn

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
        omp = _check_omp_policy()
        if omp:
            self._warn(omp)
        try:
            import _pywhispercpp as pw
            from pywhispercpp.model import Model
        except ImportError as exc:
            raise MissingDependency("pywhispercpp", "stt", str(exc)) from None
        _install_whisper_log(pw)
        self._pw = pw
        self._check_language(self.language)  # STT_LANGUAGE: a code whisper knows, or auto
        try:
            info = str(pw.whisper_print_system_info() or "")
        except Exception:
            info = ""
        self._gpu_build = bool(re.search(r"\bCUDA\s*:", info))  # "CUDA : ARCHS = ... |" in CUDA builds
        if self.use_gpu and not self._gpu_build:
            self._warn("BACKEND=cuda but this pywhispercpp build has no CUDA: whisper runs on the CPU")
        problem = check_ggml_file(self.model_path)
        if problem:
            raise ModelNotFound(f"STT_MODEL: {self.model_path} is not a usable whisper.cpp model: {problem}")
        global _CAPTURE
        with _INIT_LOCK:
            _CAPTURE = errors = []
            try:
                # the path exists, so pywhispercpp never treats it as a model name to download
                model = Model(str(self.model_path.resolve()), context_params={"use_gpu": self.use_gpu},
                              **self._full_params(self.language))
            except Exception as exc:
                raise ModelNotFound(f"STT_MODEL: {self.model_path} is not a loadable whisper.cpp model "
                                    f"({type(exc).__name__}: {exc})") from None
            finally:
                _CAPTURE = None
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
        log.info("whisper.cpp model loaded", extra={"stage": "stt", "model": str(self.model_path),
                                                      "language": self.language, "n_threads": self.n_threads})

    def _probe(self) -> None:
        # a real (tiny) inference: 1.1 s of faint noise, decoded through the engine
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(int(1.1 * SR)) * 0.01).astype(np.float32)
        self._decode(noise, self.language, partial=True)

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
        64, at least FINAL_MIN_CTX, at most 1500 (whisper's whole window)."""
        margin = self.final_ctx_margin_s if margin_s is None else margin_s
        return min(1500, max(FINAL_MIN_CTX, math.ceil((seconds + margin) * 50 / 64) * 64))

    def _final_params(self, language: str, seconds: float) -> dict[str, Any]:
        """A whole-file / final decode: full context, or (STT_FINAL_CTX=fitted) an encoder context
        fitted to the audio and one segment (with a short context whisper.cpp otherwise seeks on
        and may write a second, hallucinated segment such as "Thank you." over the tail)."""
        p = self._full_params(language)
        if self.final_ctx == "fitted" and seconds <= WINDOW_S:
            p.update(audio_ctx=self.fitted_ctx(seconds), single_segment=True)
        return p

    def _partial_params(self, language: str, seconds: float) -> dict[str, Any]:
        ctx = min(1500, max(PARTIAL_MIN_CTX, math.ceil((seconds + PARTIAL_MARGIN_S) * 50 / 64) * 64))
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

    def _decode(self, samples: np.ndarray, language: str, *, partial: bool = False,
                offset: float = 0.0) -> tuple[list[Segment], str]:
        """One whisper_full call on 16 kHz mono samples -> (segments with absolute times, language)."""
        self.load()
        n_real = len(samples)
        if len(samples) < int(PAD_TO_S * SR):  # whisper.cpp returns nothing for input under 1 s
            samples = np.concatenate([samples, np.zeros(int(PAD_TO_S * SR) - len(samples), np.float32)])
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        params = (self._partial_params(language, len(samples) / SR) if partial
                  else self._final_params(language, len(samples) / SR))
        with self._infer_lock:
            model = self._model
            if model is None:
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
                text = _trim_repeats(text)
            if text:  # t0 / t1 are in centiseconds
                start, end = min(offset + s.t0 / 100.0, limit), min(offset + s.t1 / 100.0, limit)
                segs.append(Segment(round(start, 2), round(max(start, end), 2), text))
        return segs, lang

    def transcribe(self, audio: Audio | Any, language: str | None = None, *,
                   sample_rate: int | None = None) -> Transcript:
        """Transcribe Audio (or a path / encoded bytes / numpy array with `sample_rate`).

        language: a code such as "ja", "en", or "auto"; default STT_LANGUAGE.
        """
        t_start = time.perf_counter()
        audio = _as_audio(audio, sample_rate)
        self.load()
        lang = self._check_language(language or self.language)
        t0 = time.perf_counter()
        from ..audio.io import resample

        samples = resample(audio, SR).samples
        timings = {"resample": time.perf_counter() - t0}
        if not np.all(np.isfinite(samples)):
            raise AudioError("audio contains NaN or infinite samples")
        if _is_silent(samples):
            timings["decode"] = 0.0
            timings["total"] = time.perf_counter() - t_start
            return Transcript("", [], "" if lang == "auto" else lang, timings)
        windows = [(0, len(samples))]
        if len(samples) > WINDOW_S * SR:
            t0 = time.perf_counter()
            windows = self._plan_windows(samples)
            timings["vad"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        segments: list[Segment] = []
        langs: list[str] = []
        for s, e in windows:
            segs, detected = self._decode(samples[s:e], lang, offset=s / SR)
            segments += segs
            if segs and detected:
                langs.append(detected)
        timings["decode"] = time.perf_counter() - t0
        out_lang = max(set(langs), key=langs.count) if langs else ("" if lang == "auto" else lang)
        text = _join([s.text for s in segments], out_lang)
        if text and _hallucination_key(text) in _HALLUCINATIONS and not self._has_speech(samples):
            log.debug("dropped %r: no speech found by the VAD", text)
            text, segments = "", []
        timings["total"] = time.perf_counter() - t_start
        return Transcript(text, segments, out_lang, timings)

    def _has_speech(self, samples: np.ndarray) -> bool:
        """True when the VAD finds speech (or cannot tell: no VAD installed)."""
        try:
            probs = self._get_vad().probs(samples)
        except Exception:
            return True
        return bool(len(probs)) and float(probs.max()) >= self.vad_threshold

    def _plan_windows(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """Windows of at most 30 s, cut at pauses; spans without speech are left out."""
        from ..audio.vad import FRAME, speech_spans

        n = len(samples)
        frames = n // FRAME
        score = None
        try:
            score = self._get_vad().probs(samples)
        except Exception as exc:  # no VAD: cut at the quietest frames instead
            log.debug("no VAD for windowing (%s); cutting at low energy", exc)
        if score is not None:
            spans = speech_spans(score, self.vad_threshold, min_silence_ms=300, pad_ms=200)
            spans = [(s, min(e, n)) for s, e in spans]
            if n > frames * FRAME and spans and spans[-1][1] >= frames * FRAME:
                spans[-1] = (spans[-1][0], n)
        else:
            rms = np.sqrt((samples[:frames * FRAME].reshape(frames, FRAME) ** 2).mean(axis=1))
            score = rms / (float(rms.max()) or 1.0)
            spans = [(0, n)]
        limit = int(WINDOW_S * SR)
        windows: list[tuple[int, int]] = []
        for s, e in spans:
            # split a span longer than a window at its quietest frame in the window's second half
            while e - s > limit:
                lo, hi = (s + limit // 2) // FRAME, (s + limit) // FRAME
                cut = (lo + int(np.argmin(score[lo:hi]))) * FRAME if hi > lo else s + limit
                cut = min(max(cut, s + FRAME), s + limit)
                self._add_window(windows, s, cut, limit)
                s = cut
            self._add_window(windows, s, e, limit)
        return windows

    @staticmethod
    def _add_window(windows: list[tuple[int, int]], s: int, e: int, limit: int) -> None:
        if e <= s:
            return
        if windows and e - windows[-1][0] <= limit:  # pack short spans together (gap included)
            windows[-1] = (windows[-1][0], e)
        else:
            windows.append((s, e))

    # ------------------------------------------------------------- streaming
    def _get_vad(self):
        if self._vad is None:
            from ..audio.vad import find_vad_model, load_vad

            if self._vad_error is not None:
                raise self._vad_error

            path = self.vad_model or find_vad_model()
            self._vad = load_vad(path, threads=1)
        return self._vad

    def stream(self, language: str | None = None, *, partial_interval_ms: int | None = None,
               silence_ms: int | None = None, max_utterance_s: float | None = None) -> WhisperCppStream:
        """A streaming recogniser (VAD + partials + finals); raises MissingDependency without VAD.

        The keyword arguments override STT_PARTIAL_INTERVAL_MS / STT_SILENCE_MS / STT_MAX_UTTERANCE_S
        for this stream only.
        """
        self.load()
        eot = None
        if self.end_of_turn is not None and not silence_ms:
            try:
                eot = self.end_of_turn()
            except Exception as exc:  # no model: the fixed silence still ends turns
                self._warn(f"end-of-turn detection off ({exc}); turns end after STT_SILENCE_MS of silence")
        return WhisperCppStream(self, self._check_language(language or self.language),
                                partial_interval_ms=partial_interval_ms or self.partial_interval_ms,
                                silence_ms=silence_ms or self.silence_ms,
                                max_utterance_s=max_utterance_s or self.max_utterance_s, end_of_turn=eot)


class WhisperCppStream:
    """One live audio stream; see the module docstring. Not thread-safe (one feeder)."""

    def __init__(self, stt: WhisperCppSTT, language: str, *, partial_interval_ms: int, silence_ms: int,
                 max_utterance_s: float, end_of_turn=None) -> None:
        from ..audio.vad import SpeechDetector

        self.stt, self.language = stt, language
        self._vad = stt._get_vad().new_state()
        # with an end-of-turn model the VAD reports short pauses and the model decides (see turn/)
        self.end_of_turn = end_of_turn
        self._silence_ms = end_of_turn.short_ms if end_of_turn is not None else silence_ms
        self._det = SpeechDetector(threshold=stt.vad_threshold, min_silence_ms=self._silence_ms)
        self._pause_at = 0
        self._voiced = 0           # VAD frames at or above the threshold in the current utterance
        self._partial_step = int(partial_interval_ms * SR / 1000)
        self._max_utt = int(max_utterance_s * SR)
        self._preroll = int(PREROLL_S * SR)
        self._resampler = None
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
        from ..audio.vad import FRAME

        events: list[SttEvent] = []
        if len(x):
            self._append(x)
        probs = self._vad.feed(x)
        for p in probs:
            self._frames_end += FRAME
            end = self._frames_end
            ev = self._det.feed(float(p))
            if p >= self.stt.vad_threshold:
                self._voiced += 1
            eot = self.end_of_turn
            if ev == "start" and eot is not None and eot.holding and self._utt_start is not None:
                eot.resume()  # the user went on after a mid-turn pause: the same utterance continues
                continue
            if ev == "end" and eot is not None and self._utt_start is not None:
                self._pause_at = end - self._det._min_silence * FRAME
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
                events.append(SttEvent("speech_start", audio_time=end / SR, language=self._lang_hint()))
            elif ev in ("end", "turn_end"):
                waited = self._det._min_silence * FRAME if eot is None else end - self._pause_at
                reason = "silence" if eot is None else ("complete" if eot.last_probability is not None
                                                        and eot.last_probability >= eot.threshold else "timeout")
                events.append(SttEvent("speech_end", audio_time=end / SR, language=self._lang_hint(),
                                       silence_ms=round(waited * 1000.0 / SR, 1), reason=reason))
                # after a held pause the final hears the speech plus the short pause, not 2 s of silence
                until = self._pause_at + self._det._min_silence * FRAME if reason == "timeout" else None
                events += self._final(end, until)
            elif eot is not None and eot.holding:
                pass  # a held pause: no partials, no utterance cap
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
        lang = self._partial_lang or self.language
        t0 = time.perf_counter()
        segs, detected = self.stt._decode(self._slice(self._utt_start, end), lang, partial=True)
        self.partial_seconds += time.perf_counter() - t0
        self.partial_count += 1
        if self.language == "auto" and detected and not self._partial_lang:
            self._partial_lang = detected  # later partials of this utterance skip detection
        text = _join([s.text for s in segs], detected)
        if not text or text == self._last_partial:
            return []
        self._last_partial = text
        return [SttEvent("partial", text, audio_time=end / SR, language=detected)]

    def _final(self, end: int, until: int | None = None) -> list[SttEvent]:
        """Decode the utterance [start, until or end); `until` leaves out a long held silence."""
        start, self._utt_start = self._utt_start, None
        if start is None:
            return []
        samples = self._slice(start, min(end, until) if until is not None else end).copy()
        self._drop_before(max(self._base, end - self._preroll))
        if _is_silent(samples):
            return []
        segs, lang = self.stt._decode(samples, self.language, offset=start / SR)
        text = _join([s.text for s in segs], lang)
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
            events += self._final(end)
        if self.end_of_turn is not None:
            self.end_of_turn.reset()
        self._det.reset()
        self._vad.reset()
        self._len = 0
        self._base = self._frames_end = end
        # the VAD restarts on a frame grid from `end`
        return events
