"""Fish Speech / OpenAudio S1 mini, in process (the `fish` extra; GPU).

Checkpoint folder TTS_MODEL_LOCAL_DIR (openaudio-s1-mini layout)::

    config.json  model.pth  tokenizer.tiktoken  special_tokens.json   the text-to-semantic model
    codec.pth                                                          the codec (config `modded_dac_vq`)

Reference voices: TTS_REFERENCE_LOCAL_DIR/<voice>/ holds one audio file (wav, flac, mp3, ogg, ...)
and its transcript (`*.txt` or `*.lab`). The folder name is the voice name; TTS_DEFAULT_VOICE picks
one when a request names none. Without references the model speaks in a voice of its own choosing
(voice name `default`).

We use the package's own in-process engine, exactly as its API server (tools/server/model_manager.py)
builds it::

    llama_queue = launch_thread_safe_queue(checkpoint_path=dir, device=..., precision=..., compile=...)
    decoder     = fish_speech.models.dac.inference.load_model(config_name="modded_dac_vq",
                                                               checkpoint_path=dir/"codec.pth", device=...)
    engine      = TTSInferenceEngine(llama_queue=..., decoder_model=decoder, precision=..., compile=...)
    for result in engine.inference(ServeTTSRequest(text=..., references=[ServeReferenceAudio(...)], ...)):
        result.code in {"header", "segment", "final", "error"}; result.audio = (sample_rate, ndarray)

One request per sentence chunk (spark_voice.text.chunk_text), so the first sentence is heard while
the next is generated. References are passed as ServeReferenceAudio (audio bytes + text) with
use_memory_cache="on": the engine encodes each reference once and keeps its codes.

Install (a DGX Spark / CUDA box only: fish-speech pins old numpy/pydantic and pulls CUDA torch and
gradio, so it never goes into the CPU environment or CI)::

    git clone https://github.com/fishaudio/fish-speech && pip install -e ./fish-speech
    huggingface-cli download fishaudio/openaudio-s1-mini --local-dir models/tts/openaudio-s1-mini
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, MissingDependency, ModelNotFound, VoiceError
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


class FishTTS(BaseBackend):
    provider = "fish"
    role = "tts"

    def __init__(self, checkpoint_dir: str | Path, *, device: str = "cuda",
                 reference_dir: str | Path | None = None, default_voice: str = "", threads: int = 2,
                 half: bool = False, compile: bool = False, max_new_tokens: int = 1024,
                 chunk_length: int = 200, top_p: float = 0.7, repetition_penalty: float = 1.2,
                 temperature: float = 0.7, seed: int | None = None) -> None:
        super().__init__()
        self.checkpoint_dir = Path(checkpoint_dir)
        self.requested_device = device
        self._device = device
        self.reference_dir = Path(reference_dir) if reference_dir else None
        self.default_voice = default_voice
        self.threads = int(threads)
        self.half, self.compile = half, compile
        self.gen = dict(max_new_tokens=max_new_tokens, chunk_length=chunk_length, top_p=top_p,
                        repetition_penalty=repetition_penalty, temperature=temperature)
        self.seed = seed
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
                   default_voice=settings.tts_default_voice, threads=settings.tts_threads)

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
        try:
            import torch
            from fish_speech.inference_engine import TTSInferenceEngine
            from fish_speech.models.dac.inference import (
                load_model as load_decoder_model,
            )
            from fish_speech.models.text2semantic.inference import (
                launch_thread_safe_queue,
            )
            from fish_speech.utils import schema
        except ImportError as exc:
            raise MissingDependency("fish_speech", "fish", str(exc)) from None

        device = self.requested_device
        if device == "cuda" and not torch.cuda.is_available():
            device = "cpu"
            self._warnings.append("tts: TTS_BACKEND=cuda but CUDA is not available; Fish Speech runs on the CPU")
            log.warning(self._warnings[-1])
        if device == "cpu":
            torch.set_num_threads(self.threads)
        self._device = device
        precision = torch.half if self.half else torch.bfloat16
        try:
            self._llama_queue = launch_thread_safe_queue(checkpoint_path=str(self.checkpoint_dir), device=device,
                                                         precision=precision, compile=self.compile)
            decoder = load_decoder_model(config_name=CODEC_CONFIG,
                                         checkpoint_path=str(self.checkpoint_dir / CODEC_FILE), device=device)
            self._engine = TTSInferenceEngine(llama_queue=self._llama_queue, decoder_model=decoder,
                                              precision=precision, compile=self.compile)
        except Exception as exc:
            self._stop_worker()
            raise BackendUnavailable(f"Fish Speech cannot load {self.checkpoint_dir} on {device}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        self.sample_rate = int(getattr(decoder, "sample_rate", SAMPLE_RATE) or SAMPLE_RATE)
        self._schema = schema
        self._scan_references()

    def _scan_references(self) -> None:
        self._refs, voices = {}, []
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
                self._refs[sub.name] = found
                try:
                    lang = guess_language(found[1].read_text(encoding="utf-8", errors="replace"))
                except OSError:
                    lang = "ja"
                voices.append(Voice(sub.name, lang, self.provider, self.sample_rate, f"Fish Speech reference {sub}"))
        voices.append(Voice(DEFAULT_VOICE, "ja", self.provider, self.sample_rate,
                            "Fish Speech without a reference (multilingual; the model picks the voice)"))
        self._voices = voices

    def _reference(self, name: str) -> list:
        if name not in self._refs:
            return []
        ref = self._ref_cache.get(name)
        if ref is None:
            audio, text = self._refs[name]
            ref = self._schema.ServeReferenceAudio(audio=audio.read_bytes(),
                                                   text=text.read_text(encoding="utf-8").strip())
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

    def _request(self, text: str, voice: str):
        return self._schema.ServeTTSRequest(text=text, references=self._reference(voice), reference_id=None,
                                            format="wav", streaming=False, use_memory_cache="on",
                                            seed=self.seed, **self.gen)

    def _generate(self, text: str, voice: str, cancel: threading.Event | None) -> Iterator[Audio]:
        if not text.strip():
            return
        for chunk in chunk_text(text):
            if cancel is not None and cancel.is_set():
                return
            with self._infer_lock:
                parts = list(self._run(self._request(chunk, voice), cancel))
            for a in parts:
                yield a

    def _run(self, req, cancel: threading.Event | None) -> Iterator[Audio]:
        """One engine request: segments as they come (streaming engines), else the final audio."""
        segments = 0
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
                segments += 1
                yield Audio(samples, int(sr))
            elif code == "final":
                if not segments and len(samples):
                    yield with_pause(samples, int(sr))
                return
            if cancel is not None and cancel.is_set():
                return

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
            import sys

            torch = sys.modules.get("torch")
            if torch is not None and self._device == "cuda" and torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
        super().close()
