"""`spark-voice bench`: voice-turn latency over N replayed clips, component floors, overhead ratios.

What one run does, with the configured profile (mock, dev or prod):

1. Replays N samples (default 15, cycling through ``examples/audio/question_*.wav`` or the audio
   files of ``--samples DIR``) through :class:`~spark_voice.pipeline.VoicePipeline` in *streaming*
   mode: 20 ms frames go through the streaming recogniser, as fast as possible or, with
   ``--realtime``, paced at real time like a live microphone. Every turn has its own request id.
   The latencies come from the turn's events through :func:`spark_voice.events.turn_latencies`
   (the pipeline's only latency bookkeeping): partial, final, first_token, tts_start, end_to_end,
   plus ``first_audio`` = final + tts_start (end of speech -> first audio out).
2. Unless ``--no-floors``: the component floors on the same clips and prompts -- the raw engines
   called directly (pywhispercpp transcription of the clip, llama.cpp generation up to the first
   sentence, the TTS engine's first chunk; for mock backends, the mocks called directly) -- and
   the *sequential* path (wait for the whole answer, then synthesise it) that streaming replaces.
3. Prints a table (p50 / p95 / max per stage), the overhead of the pipeline over the floors
   (goal <= 3 %) and streaming first audio / sequential first audio (goal <= 0.5), and writes
   ``bench.json``, ``turns.csv`` and ``latency.png`` under ``<out>/<YYYYmmdd-HHMMSS>-<commit>/``.

Sampling is made deterministic for the run (LLM_TEMPERATURE=0, LLM_SEED=0 unless given with
--set) and the conversation history is off, so the pipeline and the raw engine answer the same
prompt with the same words; the LLM context cache is cleared before every measured generation.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audio.io import atomic_write_bytes, load_audio
from .errors import AudioError, SparkVoiceError
from .events import METRICS, LatencyRecorder
from .text import SentenceChunker
from .types import SAMPLE_RATE_STT, Audio

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
BUNDLED = Path(__file__).resolve().parent.parent / "examples" / "audio"
# per-turn pipeline metrics (events.METRICS + the derived end-of-speech -> first audio)
TURN_METRICS = (*METRICS, "first_audio")
MEANING = {
    "partial": "first stt.partial after the first audio frame",
    "final": "stt.final after stt.speech_end (the end of turn: Smart Turn at a short pause, else the long silence)",
    "first_token": "first final-channel llm.token after stt.final",
    "tts_start": "first tts.chunk after stt.final",
    "end_to_end": "turn.done after the first audio frame (whole answer spoken)",
    "first_audio": "final + tts_start: end of speech -> first audio (derived)",
}
FLOOR_MEANING = {
    "stt": "raw transcription of the whole clip",
    "llm_first_token": "raw generation: prompt -> first token",
    "llm_first_sentence": "raw generation: prompt -> first complete sentence",
    "tts_first_chunk": "raw TTS of that first sentence: -> first audio chunk",
    "floors_sum": "stt + llm_first_sentence + tts_first_chunk (raw voice to voice)",
    "seq_llm_full": "sequential path: the whole answer (our LLM backend)",
    "seq_tts_full": "sequential path: synthesis of the whole answer (our TTS backend)",
    "seq_first_audio": "sequential path: transcript -> audio ready (llm full + tts full)",
    "seq_first_chunk": "sequential path with a streaming TTS: llm full + first chunk",
}


# --------------------------------------------------------------------------------- CLI
def add_parser(subparsers, common) -> None:
    p = common(subparsers.add_parser(
        "bench", help="latency benchmark: streaming turns over N clips, floors, table, JSON/CSV/PNG",
        description=__doc__.split("\n\n")[0]))
    p.add_argument("-n", type=int, default=15, help="number of turns (cycling through the clips; default 15)")
    p.add_argument("--samples", type=Path, metavar="DIR",
                   help="folder (or file) of audio clips (default: the bundled examples/audio/question_*.wav)")
    p.add_argument("--realtime", action="store_true",
                   help="feed the 20 ms frames at real-time pace (default: as fast as possible)")
    p.add_argument("--out", type=Path, default=Path("results"), help="results folder (default ./results)")
    p.add_argument("--no-floors", action="store_true", help="skip the raw-engine floors and the sequential path")
    p.add_argument("--language", choices=["ja", "en", "auto"],
                   help="STT language for every clip (default: from the file name, *_ja / *_en, "
                        "else STT_LANGUAGE)")
    p.add_argument("--warmup", type=int, default=2, help="un-recorded warm-up turns first (default 2)")
    p.add_argument("--no-plot", action="store_true", help="do not write latency.png")
    p.add_argument("--compare", action="store_true",
                   help="also compare turn-taking side by side: today's path vs the new one (end of speech -> "
                        "first audio, Japanese first audio, pause and back-channel clips) and the STT final "
                        "decode (full vs fitted context vs faster-whisper int8); see spark_voice/bench_turn.py")
    p.add_argument("--compare-rounds", type=int, default=3, help="rounds of the --compare turns (default 3)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from .cli_common import settings_from_args, setup_logs

    given = {s.split("=", 1)[0].strip().upper() for s in (args.set or []) if "=" in s}
    args.set = list(args.set or [])
    for name, value in (("LLM_TEMPERATURE", "0"), ("LLM_SEED", "0")):
        if name not in given:
            args.set.append(f"{name}={value}")
    s = settings_from_args(args)
    setup_logs(args, s)
    if not args.verbose:  # one INFO line per turn would bury the table; the JSON has every turn
        logging.getLogger("spark_voice.pipeline").setLevel(logging.WARNING)
    if args.n < 1:
        raise SparkVoiceError("-n must be at least 1")
    report = run_bench(s, n=args.n, samples=args.samples, realtime=args.realtime, out=args.out,
                       floors=not args.no_floors, language=args.language, warmup=max(0, args.warmup),
                       plot=not args.no_plot, compare=args.compare, compare_rounds=max(1, args.compare_rounds))
    return 1 if report["errors"] == report["n"] else 0


# --------------------------------------------------------------------------------- clips
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
    return m.group(1) if m and m.group(1) in ("ja", "en", "zh", "ko", "de", "fr", "es", "it") else default


def find_clips(samples: Path | None, language: str | None, default_language: str) -> list[Clip]:
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


# --------------------------------------------------------------------------------- real-time pacing
class PacedSTT:
    """Wraps a speech-to-text backend so that its streams receive audio no faster than real time:
    frame k (ending at audio time T) is handed over at stream start + T, as a live source would.
    The pipeline itself is untouched; a recogniser slower than real time simply falls behind.

    After the first final transcript the rest of the file is fed without pacing: in a live
    session (VoiceSession) the turn starts at the final, while `VoicePipeline.run` drains the
    file first -- pacing the trailing silence would add its duration to first_token/tts_start."""

    def __init__(self, stt: Any) -> None:
        self._stt = stt

    def stream(self, language: str | None = None) -> PacedStream:
        return PacedStream(self._stt.stream(language))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stt, name)


class PacedStream:
    def __init__(self, inner: Any) -> None:
        self.inner, self.t0, self.fed, self.final_seen = inner, None, 0.0, False

    def feed(self, audio: Audio):
        if self.t0 is None:
            self.t0 = time.perf_counter()
        self.fed += audio.duration
        delay = self.t0 + self.fed - time.perf_counter()
        if delay > 0 and not self.final_seen:
            time.sleep(delay)
        events = self.inner.feed(audio)
        self.final_seen = self.final_seen or any(e.kind == "final" for e in events)
        return events

    def flush(self):
        return self.inner.flush()


# --------------------------------------------------------------------------------- floors
def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def _unwrap(backend: Any) -> Any:
    """The engine backend behind a Fallback (its active one) or a PacedSTT wrapper."""
    if isinstance(backend, PacedSTT):
        backend = backend._stt
    if hasattr(backend, "backends") and hasattr(backend, "fallback_count"):
        backend = getattr(backend, "active", None) or backend.backends[0]
    return backend


@dataclass
class Floors:
    """Raw engine calls; each returns milliseconds. `labels` says what each one really calls."""

    stt: Callable[[Audio, str], float] | None = None
    llm: Callable[[list[dict]], dict] | None = None  # first_token_ms, first_sentence_ms, first_sentence
    tts: Callable[[str, str], float] | None = None
    reset_llm: Callable[[], None] = lambda: None
    labels: dict[str, str] = field(default_factory=dict)


def _time_llm_stream(pieces: Iterable[str], t0: float, settings: Any = None) -> dict:
    """Consume a raw text stream until the first sentence the pipeline's chunker would release."""
    chunker = SentenceChunker.from_settings(settings)
    out: dict[str, Any] = {"first_token_ms": None, "first_sentence_ms": None, "first_sentence": ""}
    text = []
    for piece in pieces:
        if not piece:
            continue
        if out["first_token_ms"] is None:
            out["first_token_ms"] = _ms(t0)
        text.append(piece)
        done = chunker.push(piece)
        if done:
            out["first_sentence_ms"], out["first_sentence"] = _ms(t0), done[0]
            break
    else:
        rest = chunker.flush()
        if rest:
            out["first_sentence_ms"], out["first_sentence"] = _ms(t0), rest[0]
    return out


def _stt_floor(pipe) -> tuple[Callable[[Audio, str], float] | None, str]:
    b = _unwrap(pipe.stt)
    if b is None:
        return None, ""
    if getattr(b, "provider", "") == "whisper_cpp" and not getattr(b, "is_mock", False):
        b.load()
        model = getattr(b, "_model", None)
        if model is not None and hasattr(model, "transcribe") and hasattr(b, "_full_params"):
            def stt(audio: Audio, language: str) -> float:
                # whisper params persist on the model: pass the backend's final-decode params every call
                params = b._full_params(language or "auto")
                samples = np.ascontiguousarray(audio.samples, dtype=np.float32)
                t0 = time.perf_counter()
                model.transcribe(samples, **params)
                return _ms(t0)
            return stt, ("pywhispercpp Model.transcribe(whole clip, 16 kHz float32) on the backend's model, "
                         "with its final-decode parameters")

    def direct(audio: Audio, language: str) -> float:
        t0 = time.perf_counter()
        b.transcribe(audio, None if language in ("", "auto") else language)
        return _ms(t0)
    what = "mock backend called directly" if getattr(b, "is_mock", False) else "backend called directly (no raw handle)"
    return direct, f"{type(b).__name__}.transcribe(whole clip) -- {what}"


def _llm_floor(pipe) -> tuple[Callable[[list[dict]], dict] | None, Callable[[], None], str]:
    b = _unwrap(pipe.llm)
    if b is None:
        return None, lambda: None, ""
    if getattr(b, "provider", "") == "llama_cpp" and not getattr(b, "is_mock", False):
        b.load()
        if getattr(b, "llm", None) is not None and hasattr(b, "render"):
            return _llama_floor(b, pipe.settings)

    def direct(messages: list[dict]) -> dict:
        t0 = time.perf_counter()
        gen = b.stream_chat(messages)
        try:
            return _time_llm_stream((d.text for d in gen if d.channel == "final"), t0, pipe.settings)
        finally:
            if hasattr(gen, "close"):
                gen.close()
    what = "mock backend called directly" if getattr(b, "is_mock", False) else "backend called directly (no raw handle)"
    return direct, lambda: None, f"{type(b).__name__}.stream_chat until the first sentence -- {what}"


def _llama_floor(b, settings: Any = None) -> tuple[Callable[[list[dict]], dict], Callable[[], None], str]:
    """Raw `Llama.generate` on the backend's own model with its sampling parameters. The prompt is
    rendered and tokenized before the clock starts (that work counts as pipeline overhead)."""
    import codecs

    import llama_cpp

    from .harmony import HarmonyParser

    llama = b.llm
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    control = int(llama_cpp.LLAMA_TOKEN_ATTR_CONTROL)
    harmony = bool(b.is_harmony)

    def reset() -> None:
        llama.reset()  # forget the KV cache: every measured prompt is evaluated in full

    def llm(messages: list[dict]) -> dict:
        prompt = b.tokenize(b.render(messages))
        t0 = time.perf_counter()
        gen = llama.generate(prompt, top_k=b.top_k, top_p=b.top_p, min_p=b.min_p, temp=b.temperature,
                             repeat_penalty=b.repeat_penalty)

        def pieces():
            dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
            parser = HarmonyParser(b.special_ids) if harmony else None
            for n, tok in enumerate(gen):
                if n >= b.max_tokens or llama_cpp.llama_vocab_is_eog(vocab, tok) or (
                        not harmony and llama_cpp.llama_vocab_get_attr(vocab, tok) & control):
                    return
                piece = llama.detokenize([tok], special=False)
                if parser is None:
                    yield dec.decode(piece)
                else:
                    yield "".join(d.text for d in parser.feed(tok, piece) if d.channel == "final" and not d.recipient)
                    if parser.done:
                        return
        try:
            return _time_llm_stream(pieces(), t0, settings)
        finally:
            gen.close()
    return llm, reset, ("llama_cpp Llama.generate on the backend's model (same sampling), detokenized, "
                        + ("harmony final channel " if harmony else "") + "until the first sentence")


def _tts_floor(pipe) -> tuple[Callable[[str, str], float] | None, str]:
    router = pipe.tts
    if router is None:
        return None, ""

    def engine_for(language: str) -> Any:
        b = _unwrap(router)
        if hasattr(b, "pick"):  # TtsRouter: the engine that speaks this language
            b = b.pick(pipe.voice, language)
        return _unwrap(b)

    labels: dict[str, str] = {}

    def tts(text: str, language: str) -> float:
        b = engine_for(language)
        raw = _raw_tts(b, pipe.voice)
        labels[getattr(b, "provider", type(b).__name__)] = raw[1] if raw else (
            f"{type(b).__name__}.synthesize first chunk -- "
            + ("mock backend called directly" if getattr(b, "is_mock", False) else "backend called directly"))
        t0 = time.perf_counter()
        if raw:
            return raw[0](text, language, t0)
        gen = b.synthesize(text, voice=pipe.voice, language=language)
        try:
            next(iter(gen), None)
        finally:
            if hasattr(gen, "close"):
                gen.close()
        return _ms(t0)

    tts.labels = labels  # type: ignore[attr-defined]
    return tts, "first audio chunk of the TTS engine for the turn's language"


def _raw_tts(b: Any, voice: str | None) -> tuple[Callable[[str, str, float], float], str] | None:
    """A raw engine call for piper / kokoro on the backend's own loaded engine."""
    prov = getattr(b, "provider", "")
    if getattr(b, "is_mock", False) or prov not in ("piper", "kokoro"):
        return None
    b.load()
    if prov == "piper" and hasattr(b, "_engine"):
        from piper.config import SynthesisConfig

        from .backends.tts_common import pick_voice

        def piper(text: str, language: str, t0: float) -> float:
            v = pick_voice(b.voices(), voice, language, b.default_voice)
            eng = b._engine(v.name)
            gen = eng.synthesize(text, syn_config=SynthesisConfig(length_scale=b.length_scale))
            t0 = time.perf_counter()  # (voice lookup above is not engine work)
            next(iter(gen), None)
            if hasattr(gen, "close"):
                gen.close()
            return _ms(t0)
        return piper, "piper PiperVoice.synthesize (espeak phonemes + onnxruntime), first chunk"
    if prov == "kokoro" and getattr(b, "_session", None) is not None:
        from .backends.tts_common import pick_voice
        from .backends.tts_kokoro import MAX_TOKENS, _phoneme_pieces

        def kokoro(text: str, language: str, t0: float) -> float:
            v = pick_voice(b.voices(), voice, language, b.default_voice)
            style = b._styles[v.name]
            t0 = time.perf_counter()
            piece = _phoneme_pieces(b.phonemize(text))[0]
            tokens = [b._vocab[c] for c in piece if c in b._vocab][:MAX_TOKENS]
            b._session.run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                                  "style": style[min(len(tokens), len(style)) - 1].reshape(1, -1),
                                  "speed": np.array([b.speed], dtype=np.float32)})
            return _ms(t0)
        return kokoro, "kokoro g2p (pyopenjtalk + misaki) + onnxruntime session.run of the first phoneme piece"
    return None


def llm_cache_reset(pipe) -> Callable[[], None]:
    """Clears the llama.cpp KV cache of the pipeline's LLM (no-op for other engines)."""
    b = _unwrap(pipe.llm)
    llama = getattr(b, "llm", None) if getattr(b, "provider", "") == "llama_cpp" else None
    return llama.reset if llama is not None and hasattr(llama, "reset") else (lambda: None)


def make_floors(pipe) -> Floors:
    stt, stt_label = _stt_floor(pipe)
    llm, reset, llm_label = _llm_floor(pipe)
    tts, tts_label = _tts_floor(pipe)
    return Floors(stt, llm, tts, reset, {"stt": stt_label, "llm": llm_label, "tts": tts_label})


def sequential_path(pipe, messages: list[dict], language: str) -> dict:
    """The path streaming replaces: generate the whole answer, then synthesise the whole answer
    (our LLM and TTS backends, no chunker). Milliseconds from the transcript."""
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    text = "".join(d.text for d in pipe.llm.stream_chat(messages) if d.channel == "final").strip()
    out["seq_llm_full"] = _ms(t0)
    st = getattr(_unwrap(pipe.llm), "last_stats", None) or {}
    n, secs, ttft = st.get("completion_tokens"), st.get("seconds"), st.get("ttft_s")
    if n and n > 1 and secs and ttft is not None and secs > ttft:  # llama.cpp: decode speed after token 1
        out["llm_tokens"], out["llm_decode_tok_s"] = n, round((n - 1) / (secs - ttft), 2)
    if pipe.tts is None or not text:
        return out
    t1 = time.perf_counter()
    first = None
    for _chunk in pipe.tts.synthesize(text, voice=pipe.voice, language=language):
        if first is None:
            first = _ms(t1)
    full = _ms(t1)
    out["seq_tts_full"] = full
    out["seq_first_audio"] = round(out["seq_llm_full"] + full, 3)
    if first is not None:
        out["seq_first_chunk"] = round(out["seq_llm_full"] + first, 3)
    return out


# --------------------------------------------------------------------------------- statistics
def stats(values: Iterable[float | None]) -> dict[str, Any] | None:
    arr = np.array([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return None
    return {"n": int(arr.size), "p50_ms": round(float(np.percentile(arr, 50)), 3),
            "p95_ms": round(float(np.percentile(arr, 95)), 3), "max_ms": round(float(arr.max()), 3)}


def _loadavg() -> float | None:
    """1-minute load average at the end of the run (other processes skew every number)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def git_commit(root: Path | None = None) -> tuple[str, bool]:
    """(short commit, dirty) of the checkout holding spark_voice; ("nogit", False) outside git."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], check=False,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    check=False, capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return "nogit", False
    return (commit or "nogit"), dirty if commit else False


def results_dir(out: Path, commit: str) -> Path:
    base = Path(out) / f"{time.strftime('%Y%m%d-%H%M%S')}-{commit}"
    d, k = base, 1
    while d.exists():
        k += 1
        d = base.with_name(f"{base.name}-{k}")
    d.mkdir(parents=True)
    return d


# --------------------------------------------------------------------------------- the run
def run_bench(settings, *, n: int = 15, samples: Path | None = None, realtime: bool = False,
              out: Path = Path("results"), floors: bool = True, language: str | None = None, warmup: int = 2,
              plot: bool = True, printer: Callable[[str], None] = print, compare: bool = False,
              compare_rounds: int = 3) -> dict[str, Any]:
    """Run the benchmark and write its files; returns the report (also written as bench.json)."""
    from .pipeline import VoicePipeline

    default_lang = settings.stt_language
    clips = find_clips(samples, language, default_lang)
    pipe = VoicePipeline.from_settings(settings)
    pipe.history_turns = 0  # every turn answers the same prompt as its floor
    t_load = time.perf_counter()
    pipe.load()
    load_s = round(time.perf_counter() - t_load, 3)
    providers = {k: {"provider": b.info().provider, "endpoint": b.info().endpoint, "is_mock": b.info().is_mock}
                 for k, b in pipe.backends().items()}
    fl = make_floors(pipe) if floors else None
    reset_llm = llm_cache_reset(pipe)
    printer(f"spark-voice bench: profile {settings.profile}, {n} turns over {len(clips)} clip(s) "
            f"({', '.join(f'{c.name} [{c.language}, {c.audio.duration:.1f} s]' for c in clips)}), "
            f"{'real-time pace' if realtime else 'as fast as possible'}, streaming STT")
    printer("providers: " + ", ".join(f"{k}={v['provider']}{' (mock)' if v['is_mock'] else ''}"
                                      for k, v in providers.items()) + f"; load {load_s} s")

    def turn(clip: Clip, rid: str):
        pipe.language = clip.language
        reset_llm()  # cold prompt every turn: a repeated clip must not hit the KV cache of the last one
        return pipe.run(clip.audio, streaming_stt=True, request_id=rid)

    for i in range(warmup):  # load lazy parts (onnx sessions, caches); not recorded, not paced
        try:
            turn(clips[i % len(clips)], f"warmup-{i + 1}")
        except Exception as exc:
            printer(f"warm-up turn {i + 1} failed: {type(exc).__name__}: {exc}")
    if realtime:
        pipe.stt = PacedSTT(pipe.stt)

    recorder = LatencyRecorder(window=n)
    rows: list[dict[str, Any]] = []
    run_tag = uuid.uuid4().hex[:6]
    interrupted = False
    comparisons: dict[str, Any] = {}
    try:
        for i in range(n):
            clip = clips[i % len(clips)]
            rid = f"bench-{run_tag}-{i + 1:03d}"
            row: dict[str, Any] = {"index": i + 1, "request_id": rid, "clip": clip.name, "language": clip.language,
                                   "audio_s": round(clip.audio.duration, 3)}
            try:
                t = turn(clip, rid)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                printer(f"[{i + 1}/{n}] {rid} {clip.name}: error {row['error']}")
                continue
            lat = dict(t.latencies)
            if "final" in lat and "tts_start" in lat:
                lat["first_audio"] = round(lat["final"] + lat["tts_start"], 3)
            recorder.record(rid, lat)
            row.update({m: lat.get(m) for m in TURN_METRICS})
            row.update(transcript=t.transcript, answer=t.answer,
                       partials=sum(1 for e in t.events if e.stage == "stt.partial"),
                       tts_chunks=sum(1 for e in t.events if e.stage == "tts.chunk"),
                       answer_audio_s=round(t.audio.duration, 3) if t.audio is not None else 0.0)
            if fl is not None:
                row.update(_measure_floors(pipe, fl, clip, t))
            rows.append(row)
            printer(f"[{i + 1}/{n}] {rid} {clip.name}: " + ", ".join(
                f"{m} {lat[m]:.0f}" for m in TURN_METRICS if m in lat) + " ms")
        if compare:
            from .bench_turn import run_compare

            comparisons = run_compare(pipe, settings, rounds=compare_rounds, paced=PacedSTT, printer=printer)
    except KeyboardInterrupt:
        interrupted = True
        printer("interrupted: writing what was measured so far")
    finally:
        pipe.close()

    report = _report(settings, rows, recorder, clips, providers, fl, realtime, load_s, warmup, interrupted)
    if comparisons:
        report["comparisons"] = comparisons
    commit, dirty = git_commit()
    report["run"].update(commit=commit, dirty=dirty)
    dest = results_dir(out, commit)
    report["files"] = _write(dest, report, rows, plot)
    for line in format_report(report):
        printer(line)
    if comparisons:
        from .bench_turn import format_compare

        for line in format_compare(comparisons):
            printer(line)
    return report


def _measure_floors(pipe, fl: Floors, clip: Clip, t) -> dict[str, Any]:
    row: dict[str, Any] = {}
    try:
        if fl.stt is not None:
            row["floor_stt"] = fl.stt(clip.audio, clip.language)
        if t.transcript and fl.llm is not None:
            messages = pipe.messages_for(t.transcript, t.hits)
            fl.reset_llm()
            r = fl.llm(messages)
            row["floor_llm_first_token"] = r["first_token_ms"]
            row["floor_llm_first_sentence"] = r["first_sentence_ms"]
            row["floor_first_sentence"] = r["first_sentence"]
            if fl.tts is not None and r["first_sentence"]:
                row["floor_tts_first_chunk"] = fl.tts(r["first_sentence"], t.language or clip.language)
            parts = [row.get("floor_stt"), row.get("floor_llm_first_sentence"), row.get("floor_tts_first_chunk")]
            if all(p is not None for p in parts):
                row["floors_sum"] = round(sum(parts), 3)
            fl.reset_llm()
            seq = sequential_path(pipe, messages, t.language or clip.language)
            row.update(seq)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        row["floor_error"] = f"{type(exc).__name__}: {exc}"
    return row


def _report(settings, rows, recorder, clips, providers, fl, realtime, load_s, warmup, interrupted) -> dict:
    summary = recorder.summary()["metrics"]
    metrics = {m: {k: v for k, v in summary[m].items() if k != "request_ids"} for m in METRICS if m in summary}
    fa = stats(r.get("first_audio") for r in rows)
    if fa:
        metrics["first_audio"] = fa
    floor_keys = ("floor_stt", "floor_llm_first_token", "floor_llm_first_sentence", "floor_tts_first_chunk",
                  "floors_sum", "seq_llm_full", "seq_tts_full", "seq_first_audio", "seq_first_chunk")
    floor_stats = {k.removeprefix("floor_"): st for k in floor_keys if (st := stats(r.get(k) for r in rows))}
    report: dict[str, Any] = {
        "run": {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "profile": settings.profile,
                "realtime": realtime, "streaming_stt": True, "warmup_turns": warmup, "load_s": load_s,
                "interrupted": interrupted, "python": platform.python_version(), "machine": platform.machine(),
                "cpu_count": os.cpu_count(), "loadavg_1m_end": _loadavg(), "providers": providers,
                "threads": {"llm": settings.llm_threads, "stt": settings.stt_threads, "tts": settings.tts_threads},
                "llm": {"model": str(settings.llm_model), "temperature": settings.llm_temperature,
                        "seed": settings.llm_seed, "max_tokens": settings.llm_max_tokens},
                "stt_model": str(settings.stt_model),
                "clips": [{"file": str(c.path), "language": c.language, "seconds": round(c.audio.duration, 3)}
                          for c in clips]},
        "n": len(rows), "errors": sum(1 for r in rows if r.get("error")),
        "metrics": metrics, "meaning": {**MEANING, **FLOOR_MEANING},
        "floors": floor_stats, "floor_engines": fl.labels if fl else {},
        "turns": rows,
    }
    if fl is not None and getattr(fl.tts, "labels", None):
        report["floor_engines"]["tts_engines"] = dict(fl.tts.labels)
    tok = stats(r.get("llm_decode_tok_s") for r in rows)
    if tok:
        report["llm_decode_tok_s"] = {"n": tok["n"], "p50": tok["p50_ms"], "min": round(min(
            r["llm_decode_tok_s"] for r in rows if r.get("llm_decode_tok_s") is not None), 2)}
    report["by_language"] = {
        lang: {m: st for m in TURN_METRICS if (st := stats(r.get(m) for r in rows if r["language"] == lang))}
        for lang in sorted({r["language"] for r in rows})}
    report["overhead"] = _overhead(metrics, floor_stats, rows)
    report["streaming_vs_sequential"] = _streaming(metrics, floor_stats, rows)
    return report


def paired(rows: list[dict], pipe_key: str, floor_keys: tuple[str, ...]) -> dict | None:
    """Pipeline vs floor on the same turns (same clip, same prompt): p50s, and the medians of the
    per-turn differences and ratios (robust to a mix of short English and long Japanese turns)."""
    pairs = [(r[pipe_key], sum(r[k] for k in floor_keys)) for r in rows
             if r.get(pipe_key) is not None and all(r.get(k) is not None for k in floor_keys)]
    pairs = [(a, f) for a, f in pairs if f > 0]
    if not pairs:
        return None
    by_lang: dict[str, list[float]] = {}
    for r in rows:
        if r.get(pipe_key) is not None and all(r.get(k) is not None for k in floor_keys):
            f = sum(r[k] for k in floor_keys)
            if f > 0:
                by_lang.setdefault(r["language"], []).append(r[pipe_key] / f)
    return {"n": len(pairs),
            "pipeline_p50_ms": stats(a for a, _ in pairs)["p50_ms"],
            "floor_p50_ms": stats(f for _, f in pairs)["p50_ms"],
            "median_diff_ms": round(float(np.median([a - f for a, f in pairs])), 3),
            "median_ratio": round(float(np.median([a / f for a, f in pairs])), 4),
            "median_ratio_by_language": {k: round(float(np.median(v)), 4) for k, v in sorted(by_lang.items())}}


OVERHEAD_PAIRS = {
    "stt": ("final", ("floor_stt",)),
    "first_token": ("first_token", ("floor_llm_first_token",)),
    "answer_to_first_audio": ("tts_start", ("floor_llm_first_sentence", "floor_tts_first_chunk")),
    "first_audio": ("first_audio", ("floors_sum",)),
}


def _overhead(metrics: dict, floors: dict, rows: list[dict]) -> dict:
    """Per stage: median over turns of pipeline / floor - 1 (goal <= 3 %)."""
    out: dict[str, Any] = {"goal": 0.03}
    for name, (pk, fks) in OVERHEAD_PAIRS.items():
        p = paired(rows, pk, fks)
        if p:
            p["overhead_ratio"] = round(p["median_ratio"] - 1.0, 4)
            out[name] = p
    return out


def _streaming(metrics: dict, floors: dict, rows: list[dict] | None = None) -> dict:
    """Median over turns of streaming tts_start / sequential first audio (goal <= 0.5)."""
    out: dict[str, Any] = {"goal": 0.5}
    for key in ("seq_first_audio", "seq_first_chunk"):
        p = paired(rows or [], "tts_start", (key,))
        if p:
            p["ratio"] = p["median_ratio"]
            out[key] = p
    return out


# --------------------------------------------------------------------------------- output
def format_report(report: dict) -> list[str]:
    lines = ["", f"{'stage':<14}{'n':>4}{'p50 ms':>11}{'p95 ms':>11}{'max ms':>11}   meaning"]
    for m in TURN_METRICS:
        st = report["metrics"].get(m)
        if st:
            lines.append(f"{m:<14}{st['n']:>4}{st['p50_ms']:>11.1f}{st['p95_ms']:>11.1f}{st['max_ms']:>11.1f}"
                         f"   {MEANING[m]}")
    by = report.get("by_language", {})
    if len(by) > 1:
        lines.append("per language (p50 ms): " + "; ".join(
            f"{lang}: " + ", ".join(f"{m} {st['p50_ms']:.0f}" for m, st in ms.items()
                                    if m in ("final", "tts_start", "first_audio", "end_to_end"))
            + f" (n={max((st['n'] for st in ms.values()), default=0)})" for lang, ms in by.items()))
    if report["errors"]:
        lines.append(f"errors: {report['errors']} of {report['n']} turns failed (see bench.json)")
    fl = report.get("floors") or {}
    if fl:
        lines += ["", f"{'floor / path':<20}{'n':>4}{'p50 ms':>11}{'p95 ms':>11}{'max ms':>11}   meaning"]
        for k, st in fl.items():
            lines.append(f"{k:<20}{st['n']:>4}{st['p50_ms']:>11.1f}{st['p95_ms']:>11.1f}{st['max_ms']:>11.1f}"
                         f"   {report['meaning'].get(k, report['meaning'].get('floor_' + k, ''))}")
        eng = report.get("floor_engines", {})
        for k in ("stt", "llm"):
            if eng.get(k):
                lines.append(f"  {k} floor calls: {eng[k]}")
        for prov, label in (eng.get("tts_engines") or {}).items():
            lines.append(f"  tts floor calls ({prov}): {label}")
    if report.get("llm_decode_tok_s"):
        v = report["llm_decode_tok_s"]
        lines.append(f"  llm decode speed (sequential path, after the first token): p50 {v['p50']:.1f} tok/s, "
                     f"min {v['min']:.1f} tok/s over {v['n']} answers (Spark target, gpt-oss-20b: >= 80 tok/s)")
    ov = report.get("overhead", {})
    if len(ov) > 1:
        lines += ["", "pipeline overhead over the floors (median over turns of pipeline / floor - 1; goal <= 3 %):"]
        what = {"stt": "STT: stt.final after end of speech vs raw transcription of the clip",
                "first_token": "LLM: first token after stt.final vs raw prompt -> first token",
                "answer_to_first_audio": "LLM+TTS: tts_start vs raw first sentence + raw first chunk",
                "first_audio": "voice to voice: end of speech -> first audio vs the sum of the three floors"}
        for k, v in ov.items():
            if k == "goal":
                continue
            verdict = "meets" if v["overhead_ratio"] <= ov["goal"] else "misses"
            langs = ", ".join(f"{lang} {(r - 1) * 100:+.1f} %" for lang, r in v["median_ratio_by_language"].items())
            lines.append(f"  {what[k]}: p50 {v['pipeline_p50_ms']:.1f} vs {v['floor_p50_ms']:.1f} ms; "
                         f"{v['overhead_ratio'] * 100:+.1f} % ({v['median_diff_ms']:+.1f} ms; {verdict} the goal)"
                         + (f" [{langs}]" if len(v["median_ratio_by_language"]) > 1 else ""))
        lines.append("  note: the STT floor transcribes the whole clip at once, while the streaming recogniser "
                     "finalises the VAD-cut utterance after end of speech; in the pipeline the LLM keeps writing "
                     "while the TTS speaks, so on a box with few cores they compete for CPU, which the floors "
                     "(one engine at a time) do not. Other processes on the box add noise to both sides.")
    sv = report.get("streaming_vs_sequential", {})
    if len(sv) > 1:
        lines += ["", "streaming first audio vs the sequential path (median over turns of the ratio; goal <= 0.5x):"]
        for key, label in (("seq_first_audio", "whole answer, then synthesise all of it"),
                           ("seq_first_chunk", "whole answer, then a streaming TTS's first chunk")):
            if key in sv:
                v = sv[key]
                langs = ", ".join(f"{lang} {r:.2f}x" for lang, r in v["median_ratio_by_language"].items())
                lines.append(f"  streaming tts_start p50 {v['pipeline_p50_ms']:.1f} ms vs sequential ({label}) "
                             f"p50 {v['floor_p50_ms']:.1f} ms -> {v['ratio']:.2f}x"
                             + (f" ({'meets' if v['ratio'] <= sv['goal'] else 'misses'} the goal)"
                                if key == "seq_first_audio" else "")
                             + (f" [{langs}]" if len(v["median_ratio_by_language"]) > 1 else ""))
        lines.append("  note: streaming wins only when the answer has more than one sentence; a one-sentence "
                     "answer is spoken after the same wait either way.")
    if report["run"]["providers"] and all(p["is_mock"] for p in report["run"]["providers"].values()):
        lines.append("  (mock engines cost ~nothing: these ratios only show the pipeline's fixed cost in ms; "
                     "run with --profile dev or prod for meaningful numbers)")
    files = report.get("files", {})
    if files:
        lines += ["", "wrote " + ", ".join(str(v) for v in files.values())]
    return lines


CSV_COLUMNS = ("index", "request_id", "clip", "language", "audio_s", *TURN_METRICS, "partials", "tts_chunks",
               "answer_audio_s", "floor_stt", "floor_llm_first_token", "floor_llm_first_sentence",
               "floor_tts_first_chunk", "floors_sum", "seq_llm_full", "seq_tts_full", "seq_first_audio",
               "seq_first_chunk", "llm_tokens", "llm_decode_tok_s", "transcript", "answer", "floor_first_sentence",
               "error", "floor_error")


def _write(dest: Path, report: dict, rows: list[dict], plot: bool) -> dict[str, str]:
    files: dict[str, str] = {}
    report["files"] = files
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    files["csv"] = str(atomic_write_bytes(dest / "turns.csv", buf.getvalue().encode("utf-8")))
    if plot:
        try:
            files["png"] = str(atomic_write_bytes(dest / "latency.png", plot_png(report, rows)))
        except ImportError as exc:
            print(f"warning: no plot ({exc}); install it with: pip install 'spark-voice[bench]'", file=sys.stderr)
    files["json"] = str(dest / "bench.json")
    atomic_write_bytes(dest / "bench.json",
                       json.dumps(report, ensure_ascii=False, indent=2, default=str).encode("utf-8"))
    return files


def plot_png(report: dict, rows: list[dict]) -> bytes:
    """Per-turn latencies per stage (dots, p50 and p95 ticks) and pipeline vs floors (bars)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    run = report["run"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    names = [m for m in TURN_METRICS if m in report["metrics"]]
    rng = np.random.default_rng(0)
    langs = sorted({r["language"] for r in rows})
    colors = {lang: f"C{i}" for i, lang in enumerate(langs)}
    for x, m in enumerate(names):
        for lang in langs:
            vals = [r[m] for r in rows if r.get(m) is not None and r["language"] == lang]
            ax1.scatter(x + rng.uniform(-0.12, 0.12, len(vals)), vals, s=14, alpha=0.7, color=colors[lang],
                        label=lang if x == 0 else None)
        st = report["metrics"][m]
        ax1.hlines([st["p50_ms"]], x - 0.3, x + 0.3, colors="k", linewidth=2)
        ax1.hlines([st["p95_ms"]], x - 0.3, x + 0.3, colors="r", linewidth=1.5, linestyles="dashed")
    ax1.set_xticks(range(len(names)), names)
    ax1.set_ylabel("ms")
    vals = [r[m] for r in rows for m in names if isinstance(r.get(m), (int, float)) and r[m] > 0]
    if vals and max(vals) / max(min(vals), 1e-3) > 200:
        ax1.set_yscale("log")
    ax1.set_title(f"per-turn latency ({report['n']} turns; black p50, red dashed p95)")
    if len(langs) > 1:
        ax1.legend(title="clip language", fontsize=8)
    ax1.grid(axis="y", alpha=0.3)

    bars: list[tuple[str, float, float]] = []
    ov = report.get("overhead", {})
    for key, label in (("stt", "STT"), ("answer_to_first_audio", "LLM+TTS"), ("first_audio", "voice->voice")):
        if key in ov:
            bars.append((label, ov[key]["pipeline_p50_ms"], ov[key]["floor_p50_ms"]))
    sv = report.get("streaming_vs_sequential", {})
    if "seq_first_audio" in sv:
        bars.append(("first audio:\nstream vs seq", sv["seq_first_audio"]["pipeline_p50_ms"],
                     sv["seq_first_audio"]["floor_p50_ms"]))
    if bars:
        x = np.arange(len(bars))
        ax2.bar(x - 0.2, [b[1] for b in bars], 0.4, label="pipeline (streaming)")
        ax2.bar(x + 0.2, [b[2] for b in bars], 0.4, label="floor / sequential")
        ax2.set_xticks(x, [b[0] for b in bars], fontsize=8)
        ax2.set_ylabel("p50 ms")
        ax2.legend(fontsize=8)
        ax2.set_title("pipeline vs raw floors, streaming vs sequential")
    else:
        ax2.text(0.5, 0.5, "floors not measured (--no-floors)", ha="center", va="center")
        ax2.set_axis_off()
    fig.suptitle(f"spark-voice bench  {run['timestamp']}  commit {run.get('commit', '?')}  profile {run['profile']}"
                 f"  {'real-time' if run['realtime'] else 'fast'}  cpu x{run['cpu_count']}"
                 f"  load {run.get('loadavg_1m_end')}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
