"""Fish Speech / OpenAudio S1 mini, in process (the `fish` extra; GPU, or CPU for tests).

Checkpoint folder TTS_MODEL_LOCAL_DIR (openaudio-s1-mini layout)::

    config.json  model.pth  tokenizer.tiktoken  special_tokens.json   the text-to-semantic model
    codec.pth                                                          the codec (TTS_FISH_CODEC_CONFIG)

Reference voices: TTS_REFERENCE_LOCAL_DIR/<voice>/ holds one audio file (wav, flac, mp3, ogg, ...)
and its transcript (`*.txt` or `*.lab`). The folder name is the voice name; TTS_DEFAULT_VOICE picks
one when a request names none. Without references the model speaks in a voice of its own choosing
(voice name `default`). A reference whose audio cannot be decoded is skipped at load with a warning
(in /health) that names the file; if it breaks later, the request fails with an AudioError naming it.

fish-speech is pinned (TTS_FISH_REF, commit d3df505: the last S1-mini-era commit) and must be
installed editable from a source tree: ``fish_speech/models/dac/inference.py`` looks for the tree's
``.project-root`` file at import. We use the package's own in-process engine, as its API server
(tools/server/model_manager.py) builds it::

    llama_queue = launch_thread_safe_queue(checkpoint_path=dir, device=..., precision=..., compile=...)
    decoder     = fish_speech.models.dac.inference.load_model(config_name=TTS_FISH_CODEC_CONFIG,
                                                               checkpoint_path=dir/"codec.pth", device=...)
    engine      = TTSInferenceEngine(llama_queue=..., decoder_model=decoder, precision=..., compile=...)
    for result in engine.inference(ServeTTSRequest(text=..., references=[...], streaming=True, ...)):
        result.code in {"header", "segment", "final", "error"}; result.audio = (sample_rate, ndarray)

What the adapter adds around it:

* a bounded load: ``launch_thread_safe_queue`` waits for its worker thread's init without a timeout,
  so a model that fails to load inside that thread (out of memory, bad checkpoint) would block
  forever. We run the load in a helper thread, watch the worker for an exception and give up after
  TTS_FISH_LOAD_TIMEOUT seconds: :class:`~spark_voice.errors.EngineLoadError` (the worker failed:
  its exception) or :class:`~spark_voice.errors.EngineLoadTimeout`, so the registry's Fallback moves
  to the CPU voices and /health says why;
* streaming requests (``streaming=True``): each segment is yielded as soon as the engine decodes it,
  one request per sentence chunk (spark_voice.text.chunk_text), so the first sentence is heard
  while the next is generated (the pinned engine decodes one segment per request);
* reference audio decoded by us (soundfile + soxr) instead of ``torchaudio.load``: torchaudio >= 2.9
  (the releases with CUDA 13 wheels) removed ``list_audio_backends``, which the pinned engine calls
  in its constructor, and decodes through torchcodec/ffmpeg. :func:`_torchaudio_compat` provides the
  missing function (it reports no backend, so the engine picks "soundfile") and our decoder replaces
  the engine's ``load_audio`` on our engine instance; fish-speech's code is not modified.

Length: one engine adapter; the bounded load and the reference handling only make sense with it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    AudioError,
    BackendUnavailable,
    EngineLoadError,
    EngineLoadTimeout,
    MissingDependency,
    ModelNotFound,
    VoiceError,
)
from ..text import chunk_text, guess_language
from ..types import Audio, Voice
from .base import BaseBackend
from .tts_common import check_voice_name, pick_voice, with_pause

log = logging.getLogger("spark_voice.tts.fish")

CHECKPOINT_FILES = ("config.json", "model.pth", "tokenizer.tiktoken", "special_tokens.json", "codec.pth")
CODEC_FILE = "codec.pth"
CODEC_CONFIG = "modded_dac_vq"
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".wma")
TRANSCRIPT_EXTS = (".txt", ".lab")
DEFAULT_VOICE = "default"
SAMPLE_RATE = 44_100  # the modded DAC codec's rate; the engine reports it with every result
PINNED_COMMIT = "d3df50503b36314a964f66cac1af1e19e95bcfa3"
INSTALL_HINT = (f"pip install -e <fish-speech source tree at {PINNED_COMMIT[:7]}> (editable: its code needs "
                "the tree's .project-root; README 'Running on a DGX Spark')")


def find_reference(folder: Path) -> tuple[Path, Path] | None:
    """(audio, transcript) of a reference-voice folder, or None when one of them is missing."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    audio = next((p for p in files if p.suffix.lower() in AUDIO_EXTS), None)
    if audio is None:
        return None
    same = audio.with_suffix("")
    text = next((p for p in files if p.suffix.lower() in TRANSCRIPT_EXTS and p.with_suffix("") == same), None)
    text = text or next((p for p in files if p.suffix.lower() in TRANSCRIPT_EXTS), None)
    return (audio, text) if text is not None else None


def _torchaudio_compat() -> None:
    """torchaudio >= 2.9 has no ``list_audio_backends``; the pinned engine's constructor calls it.
    Provide it (no backend: the engine then names "soundfile", and our decoder does the loading)."""
    import torchaudio

    if not hasattr(torchaudio, "list_audio_backends"):
        torchaudio.list_audio_backends = lambda: []


def _import_fish() -> dict[str, Any]:
    """The fish_speech entry points, or a typed error that says how to install it."""
    try:
        import torch
        from fish_speech.inference_engine import TTSInferenceEngine
        from fish_speech.models.dac.inference import load_model as load_decoder_model
        from fish_speech.models.text2semantic.inference import launch_thread_safe_queue
        from fish_speech.utils import schema
    except ImportError as exc:
        raise MissingDependency("fish_speech", "fish", str(exc), install=INSTALL_HINT) from None
    except Exception as exc:
        # pyrootutils.setup_root(indicator=".project-root") raises FileNotFoundError outside a tree
        if "project-root" in str(exc) or "Project root" in str(exc):
            raise MissingDependency(
                "fish_speech", "fish",
                "fish-speech is installed without its source tree (fish_speech/models/dac/inference.py "
                "needs the .project-root file of a checkout)", install=INSTALL_HINT) from None
        raise BackendUnavailable(f"fish_speech failed to import: {type(exc).__name__}: {exc}") from exc
    return dict(torch=torch, TTSInferenceEngine=TTSInferenceEngine, load_decoder_model=load_decoder_model,
                launch_thread_safe_queue=launch_thread_safe_queue, schema=schema)


class _WorkerWatch:
    """Catches an exception that escapes a thread started while the watch is on (fish-speech's
    worker thread dies silently otherwise, leaving launch_thread_safe_queue waiting forever)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._before = {t.ident for t in threading.enumerate()}
        self._prev = threading.excepthook

    def __enter__(self) -> "_WorkerWatch":
        def hook(args: threading.ExceptHookArgs) -> None:
            if args.thread is not None and args.thread.ident not in self._before and self.error is None:
                self.error = args.exc_value
            self._prev(args)

        threading.excepthook = hook
        return self

    def __exit__(self, *exc: object) -> None:
        threading.excepthook = self._prev


class FishTTS(BaseBackend):
    provider = "fish"
    role = "tts"

    def __init__(self, checkpoint_dir: str | Path, *, device: str = "cuda",
                 reference_dir: str | Path | None = None, default_voice: str = "", threads: int = 2,
                 half: bool = False, compile: bool = False, max_new_tokens: int = 1024,
                 chunk_length: int = 200, top_p: float = 0.8, repetition_penalty: float = 1.1,
                 temperature: float = 0.8, seed: int | None = None, load_timeout: float = 600.0,
                 codec_config: str = CODEC_CONFIG) -> None:
        super().__init__()
        self.checkpoint_dir = Path(checkpoint_dir)
        self.requested_device = device
        self._device = device
        self.reference_dir = Path(reference_dir) if reference_dir else None
        self.default_voice = default_voice
        self.threads = int(threads)
        self.half, self.compile = half, compile
        # the defaults are ServeTTSRequest's (tests/test_tts_fish.py compares them with the real one)
        self.gen = dict(max_new_tokens=int(max_new_tokens), chunk_length=int(chunk_length), top_p=float(top_p),
                        repetition_penalty=float(repetition_penalty), temperature=float(temperature))
        self.seed = seed
        self.load_timeout = float(load_timeout)
        self.codec_config = codec_config
        self._engine: Any = None
        self._llama_queue: Any = None
        self._schema: Any = None
        self._voices: list[Voice] = []
        self._refs: dict[str, tuple[Path, Path]] = {}
        self._ref_cache: dict[str, Any] = {}
        self._infer_lock = threading.Lock()  # one request at a time through the shared decoder
        self._warnings: list[str] = []
        self.sample_rate = SAMPLE_RATE

    @classmethod
    def from_settings(cls, settings) -> FishTTS:
        return cls(settings.model_path("tts"), device=settings.tts_backend,
                   reference_dir=settings.path(settings.tts_reference_local_dir),
                   default_voice=settings.tts_default_voice, threads=settings.tts_threads,
                   load_timeout=settings.tts_fish_load_timeout, codec_config=settings.tts_fish_codec_config)

    # ------------------------------------------------------------------ loading
    def missing_files(self) -> list[str]:
        if not self.checkpoint_dir.is_dir():
            return list(CHECKPOINT_FILES)
        return [f for f in CHECKPOINT_FILES if not (self.checkpoint_dir / f).is_file()]

    def _load(self) -> None:
        missing = self.missing_files()
        if missing:
            where = "does not exist" if not self.checkpoint_dir.is_dir() else f"lacks {', '.join(missing)}"
            raise ModelNotFound(f"Fish Speech checkpoint {self.checkpoint_dir} {where} (needs "
                                f"{', '.join(CHECKPOINT_FILES)}; e.g. huggingface-cli download "
                                "fishaudio/openaudio-s1-mini --local-dir <TTS_MODEL_LOCAL_DIR>)")
        fish = _import_fish()
        torch = fish["torch"]
        self._warnings = []
        device = self.requested_device
        if device == "cuda" and not torch.cuda.is_available():
            device = "cpu"
            self._warnings.append("tts: TTS_BACKEND=cuda but CUDA is not available; Fish Speech runs on the CPU")
            log.warning(self._warnings[-1])
        if device == "cpu":
            torch.set_num_threads(self.threads)
        self._device = device
        precision = torch.half if self.half else torch.bfloat16
        decoder = self._bounded_load(fish, device, precision)
        self.sample_rate = int(getattr(decoder, "sample_rate", SAMPLE_RATE) or SAMPLE_RATE)
        self._schema = fish["schema"]
        self._scan_references()

    def _bounded_load(self, fish: dict[str, Any], device: str, precision: Any) -> Any:
        """Model (worker thread), codec and engine, within load_timeout seconds."""
        result: dict[str, Any] = {}
        abandoned = threading.Event()

        def run() -> None:
            try:
                q = fish["launch_thread_safe_queue"](
                    checkpoint_path=str(self.checkpoint_dir), device=device, precision=precision,
                    compile=self.compile)
                if abandoned.is_set():  # we gave up waiting: stop the worker, drop the model
                    q.put(None)
                    return
                result["queue"] = self._llama_queue = q
                result["decoder"] = fish["load_decoder_model"](
                    config_name=self.codec_config, checkpoint_path=str(self.checkpoint_dir / CODEC_FILE),
                    device=device)
                _torchaudio_compat()
                engine = fish["TTSInferenceEngine"](llama_queue=result["queue"], decoder_model=result["decoder"],
                                                    precision=precision, compile=self.compile)
                engine.load_audio = self._load_reference_audio  # our decoder (see the module doc)
                result["engine"] = engine
            except BaseException as exc:  # reported to the waiting thread below
                result["error"] = exc

        what = f"Fish Speech ({self.checkpoint_dir} on {device})"
        t0 = time.monotonic()
        with _WorkerWatch() as watch:
            loader = threading.Thread(target=run, name="fish-load", daemon=True)
            loader.start()
            while loader.is_alive():
                loader.join(0.05)
                if watch.error is not None:
                    err = watch.error
                    abandoned.set()
                    self._stop_worker()
                    raise EngineLoadError(f"{what} failed to load in its worker thread: "
                                          f"{type(err).__name__}: {err}") from err
                if time.monotonic() - t0 > self.load_timeout:
                    abandoned.set()
                    self._stop_worker()
                    raise EngineLoadTimeout(f"{what} did not finish loading within TTS_FISH_LOAD_TIMEOUT="
                                            f"{self.load_timeout:g} s (the load goes on in the background "
                                            "and is dropped)")
        if "error" in result:
            err = result["error"]
            self._stop_worker()
            raise EngineLoadError(f"{what} cannot load: {type(err).__name__}: {err}") from err
        self._engine = result["engine"]
        return result["decoder"]

    def _load_reference_audio(self, reference_audio: bytes | str, sr: int) -> np.ndarray:
        """The engine's ``load_audio``: decode (any libsndfile format), mono, resample to ``sr``."""
        from ..audio.io import load_audio

        name = "reference audio" if not isinstance(reference_audio, str) else reference_audio
        return load_audio(reference_audio, sr, name=name).samples

    def _scan_references(self) -> None:
        from ..audio.io import load_audio

        self._refs, self._ref_cache, voices = {}, {}, []
        folder = self.reference_dir
        if folder is not None and folder.is_dir():
            for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
                try:
                    check_voice_name(sub.name)
                except VoiceError:
                    log.warning("reference voice folder %s skipped: not a valid voice name", sub)
                    continue
                found = find_reference(sub)
                if found is None:
                    log.warning("reference voice %s skipped: needs an audio file and a .txt/.lab transcript", sub)
                    continue
                try:
                    load_audio(found[0])  # decodable? (the engine encodes it on first use)
                    text = found[1].read_text(encoding="utf-8").strip()
                except (AudioError, OSError, UnicodeDecodeError) as exc:
                    self._warnings.append(f"tts: reference voice {sub.name!r} skipped: {exc}")
                    log.warning(self._warnings[-1])
                    continue
                if not text:
                    self._warnings.append(f"tts: reference voice {sub.name!r} skipped: {found[1]} is empty")
                    log.warning(self._warnings[-1])
                    continue
                self._refs[sub.name] = found
                voices.append(Voice(sub.name, guess_language(text), self.provider, self.sample_rate,
                                    f"Fish Speech reference {sub}"))
        voices.append(Voice(DEFAULT_VOICE, "ja", self.provider, self.sample_rate,
                            "Fish Speech without a reference (multilingual; the model picks the voice)"))
        self._voices = voices

    def _reference(self, name: str) -> list:
        if name not in self._refs:
            return []
        ref = self._ref_cache.get(name)
        if ref is None:
            from ..audio.io import load_audio

            audio, text = self._refs[name]
            try:
                data = audio.read_bytes()
                load_audio(data, name=str(audio))  # a clear AudioError naming the file, not a torch trace
                transcript = text.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise AudioError(f"{audio}: reference voice {name!r} cannot be read: {exc}") from None
            ref = self._schema.ServeReferenceAudio(audio=data, text=transcript)
            self._ref_cache[name] = ref
        return [ref]

    def _probe(self) -> None:
        if sum(len(a.samples) for a in self.synthesize("Hello.")) == 0:
            raise BackendUnavailable("Fish Speech produced no audio for a probe sentence")

    # ------------------------------------------------------------------ contract
    @property
    def device(self) -> str:
        return self._device

    @property
    def endpoint(self) -> str:
        return f"inproc:fish_speech:{self.checkpoint_dir}@{self._device}"

    def warnings(self) -> list[str]:
        return list(self._warnings)

    def voices(self) -> list[Voice]:
        self.load()
        return list(self._voices)

    def synthesize(self, text: str, *, voice: str | None = None, language: str | None = None,
                   cancel: threading.Event | None = None) -> Iterator[Audio]:
        if voice:
            check_voice_name(voice)
        self.load()
        v = pick_voice(self._voices, voice, language, self.default_voice)
        return self._generate(text or "", v.name, cancel)

    def request(self, text: str, voice: str) -> Any:
        """The ServeTTSRequest of one sentence chunk (streaming, reference by value, cached codes)."""
        return self._schema.ServeTTSRequest(text=text, references=self._reference(voice), reference_id=None,
                                            format="wav", streaming=True, use_memory_cache="on",
                                            seed=self.seed, **self.gen)

    def _generate(self, text: str, voice: str, cancel: threading.Event | None) -> Iterator[Audio]:
        if not text.strip():
            return
        for chunk in chunk_text(text):
            if cancel is not None and cancel.is_set():
                return
            req = self.request(chunk, voice)
            it = self._run(req, cancel)
            try:
                while True:
                    # the lock covers each step of the engine (its decoder is shared), never a yield:
                    # a caller that stops consuming cannot block the next request
                    with self._infer_lock:
                        try:
                            audio = next(it)
                        except StopIteration:
                            break
                    yield audio
            finally:
                it.close()

    def _run(self, req: Any, cancel: threading.Event | None) -> Generator[Audio, None, None]:
        """One engine request: each segment as soon as it is decoded (the last one with the pause
        between sentences); the engine's final result (all segments again) only if none came."""
        pending: Audio | None = None
        for result in self._engine.inference(req):
            code = getattr(result, "code", None)
            if code == "error":
                err = getattr(result, "error", None)
                raise BackendUnavailable(f"Fish Speech failed: {type(err).__name__ if err else 'error'}: {err}")
            if code == "header" or getattr(result, "audio", None) is None:
                continue
            sr, samples = result.audio
            samples = np.asarray(samples, dtype=np.float32).reshape(-1)
            if code == "segment":
                if pending is not None:
                    yield pending
                pending = Audio(samples, int(sr))
            elif code == "final":
                if pending is not None:
                    yield with_pause(pending.samples, pending.sample_rate)
                elif len(samples):
                    yield with_pause(samples, int(sr))
                return
            if cancel is not None and cancel.is_set():
                return
        if pending is not None:
            yield with_pause(pending.samples, pending.sample_rate)

    # ------------------------------------------------------------------ shutdown
    def _stop_worker(self) -> None:
        q, self._llama_queue = self._llama_queue, None
        if q is not None:
            try:
                q.put(None)  # the worker thread of launch_thread_safe_queue stops on None
            except Exception:
                pass

    def close(self) -> None:
        self._stop_worker()
        self._engine = None
        self._ref_cache.clear()
        try:
            torch = sys.modules.get("torch")
            if torch is not None and self._device == "cuda" and torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
        super().close()
