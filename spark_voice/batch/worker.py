"""One engine set processing files: STT -> (RAG) -> LLM -> TTS through a VoicePipeline.

A :class:`BatchWorker` loads the models of the stages it runs once, then turns each
:class:`~spark_voice.batch.inputs.Task` into outputs under OUT_DIR (each written atomically) and
returns a small record for the manifest. It never raises for a bad file: the record says what
failed. The same class runs in the single-process mode and inside each Ray actor.

Outputs of ``IN_DIR/sub/q.wav``:

* ``OUT_DIR/sub/q.wav.transcript.json``: text, language, duration, segments (start, end, text);
* ``OUT_DIR/sub/q.wav.answer.txt``: the answer (stage llm);
* ``OUT_DIR/sub/q.wav.answer.ogg`` (or .wav/.flac/.pcm): the spoken answer (stage tts).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ConfigError, VoiceError
from ..fsutil import atomic_write_text
from ..types import SAMPLE_RATE_STT, Audio, Stage, Transcript
from .inputs import Task, file_sha256
from .timing import Stopwatch, TimedLlm, TimedStt, TimedTts

log = logging.getLogger("spark_voice.batch")

STAGES = ("stt", "rag", "llm", "tts")
TRANSCRIPT_PREVIEW = 1000  # characters of the transcript kept in the manifest record


def parse_stages(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'stt' | 'stt,llm' | 'stt,rag,llm' | 'stt,llm,tts' | 'all' -> stages in pipeline order.

    The stages must be a prefix of stt -> rag -> llm -> tts, where rag may be left out (the LLM
    stage then retrieves only when RAG_ENABLED says so; naming rag requires an index)."""
    items = [v.strip().lower() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if items == ["all"]:
        return ("stt", "llm", "tts")
    order = [s for s in STAGES if s in items]
    unknown = [s for s in items if s not in STAGES]
    if unknown or not items:
        raise ConfigError(f"--stages: unknown stage {unknown[0] if unknown else ''!r}; accepted: "
                          "stt, stt,llm, stt,rag,llm, stt,llm,tts or all")
    full = [s for s in STAGES if s != "rag" or "rag" in order]
    if order != full[: len(order)] or items != order:
        raise ConfigError(f"--stages {','.join(items)}: the stages must be a prefix of stt,rag,llm,tts in this "
                          "order (rag optional), e.g. stt, stt,llm or stt,llm,tts")
    return tuple(order)


@dataclass
class JobSpec:
    """What every worker needs to know. Small and picklable (it is sent to each Ray actor)."""

    out_dir: str
    stages: tuple[str, ...]
    settings_env: dict[str, str]  # effective settings as VARIABLE -> value (Settings.as_env)
    root_dir: str
    language: str | None = None
    voice: str | None = None
    audio_format: str = "opus"
    sample_rate: int = 44100
    # test hooks: {"sleep_s": float} slows every file down, {"crash_on": "name"} kills the worker
    # process (like a native crash) when it starts a file whose name contains that text
    debug: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> Settings:
        return Settings.load(self.root_dir, environ={}, use_dotenv=False, **self.settings_env)


class BatchWorker:
    """Holds one engine set (models loaded once) and processes files one at a time."""

    def __init__(self, spec: JobSpec, settings: Settings | None = None) -> None:
        from ..pipeline import VoicePipeline

        t0 = time.perf_counter()
        self.spec = spec
        self.settings = settings if settings is not None else spec.settings()
        self.out_dir = Path(spec.out_dir)
        self.stages = tuple(spec.stages)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.pipe = VoicePipeline.from_settings(self.settings)
        self.pipe.history_turns = 0  # every file is its own question
        if spec.language:
            self.pipe.language = spec.language
        if spec.voice:
            self.pipe.voice = spec.voice
        if "rag" in self.stages and self.pipe.retriever is None:
            raise ConfigError("--stages names rag, but no usable index: "
                              + ("; ".join(self.pipe.warnings) or f"RAG_INDEX_PATH={self.settings.rag_index_path}"))
        self.watch = Stopwatch()
        if self.pipe.stt is None:
            raise ConfigError("a batch job needs a speech-to-text backend (STT_PROVIDER)")
        self.stt = TimedStt(self.pipe.stt, "stt", self.watch)
        self.pipe.stt = self.stt
        if self.pipe.llm is not None:
            self.pipe.llm = TimedLlm(self.pipe.llm, "llm", self.watch)
        if self.pipe.tts is not None:
            self.pipe.tts = TimedTts(self.pipe.tts, "tts", self.watch)
        needed: list[Any] = [self.stt]
        if "llm" in self.stages:
            needed += [self.pipe.llm, self.pipe.embedder]
        if "tts" in self.stages:
            needed.append(self.pipe.tts)
        for b in needed:
            if b is not None:
                b.load()
        if spec.voice and "tts" in self.stages and self.pipe.tts is not None:
            names = [v.name for v in self.pipe.tts.voices()]
            if spec.voice not in names:
                raise VoiceError(f"unknown voice {spec.voice!r}; available voices: {', '.join(names)}")
        self.load_seconds = time.perf_counter() - t0

    def add(self, stage: str, seconds: float) -> None:
        self.watch.add(stage, seconds)

    def providers(self) -> dict[str, str]:
        return {k: b.info().provider for k, b in self.pipe.backends().items()}

    def close(self) -> None:
        self.pipe.close()

    # ------------------------------------------------------------------ one file
    def process(self, task: Task) -> dict[str, Any]:
        from ..audio.io import load_audio

        debug = self.spec.debug or {}
        if debug.get("crash_on") and debug["crash_on"] in task.rel:
            os._exit(3)  # test hook: die like a native crash, no cleanup
        if debug.get("sleep_s"):
            time.sleep(float(debug["sleep_s"]))
        t_start = time.perf_counter()
        watch = self.watch
        watch.reset()
        watch.stage = "read"
        rec: dict[str, Any] = {"file": task.rel, "sha256": task.sha256, "size": task.size, "mtime_ns": task.mtime_ns}
        try:
            t0 = time.perf_counter()
            if task.sha256 is None:
                rec["sha256"] = file_sha256(task.path)  # the decode below reads it from the page cache
            watch.stage = "decode"
            audio = load_audio(Path(task.path), SAMPLE_RATE_STT)
            self.add("decode", time.perf_counter() - t0)
            rec["audio_s"] = round(audio.duration, 3)
            outputs, extra = self._stages(task, audio)
            rec.update(status="ok", **extra, outputs=outputs)
        except Exception as exc:  # a bad file is recorded and the job goes on
            rec.update(status="error", stage=watch.stage, error_type=type(exc).__name__,
                       error=f"{type(exc).__name__}: {exc}")
        rec["seconds"] = {k: round(v, 4) for k, v in watch.seconds.items()}
        rec["seconds"]["total"] = round(time.perf_counter() - t_start, 4)
        rec.update(stages=list(self.stages), attempts=task.attempt, worker=self.name,
                   finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        return rec

    def _stages(self, task: Task, audio: Audio) -> tuple[dict[str, str], dict[str, Any]]:
        pipe, stages = self.pipe, self.stages
        extra: dict[str, Any] = {}
        turn = None
        if "llm" in stages:
            turn = pipe.run(audio, speak="tts" in stages)  # STT inside, through the timed backend
            tr = self.watch.transcript or Transcript(turn.transcript, [], turn.language)
            for ev in turn.events:
                if ev.stage == Stage.RAG_HITS and "ms" in ev.data:
                    self.add("rag", float(ev.data["ms"]) / 1000.0)
                    extra["rag_sources"] = [h["source"] for h in ev.data.get("hits", [])]
            language = turn.language
        else:
            lang = pipe.language
            tr = self.stt.transcribe(audio, None if lang == "auto" else lang)
            language = lang if lang != "auto" else tr.language
        self.watch.stage = "write"
        t0 = time.perf_counter()
        base = self.out_dir / task.rel
        outputs: dict[str, str] = {}
        doc = {"file": task.rel, "language": language or tr.language, "text": tr.text,
               "duration_s": round(audio.duration, 3),
               "segments": [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text} for s in tr.segments],
               "stt": self.stt.info().provider}
        atomic_write_text(_with_suffix(base, ".transcript.json"), json.dumps(doc, ensure_ascii=False, indent=1))
        outputs["transcript"] = task.rel + ".transcript.json"
        extra.update(language=doc["language"], transcript=tr.text[:TRANSCRIPT_PREVIEW], segments=len(tr.segments))
        if turn is not None:
            atomic_write_text(_with_suffix(base, ".answer.txt"), turn.answer + "\n")
            outputs["answer"] = task.rel + ".answer.txt"
            extra["answer"] = turn.answer
            if turn.audio is not None and len(turn.audio.samples):
                from ..audio.io import EXTENSIONS, write_audio

                name = task.rel + ".answer" + EXTENSIONS[self.spec.audio_format]
                _, rate = write_audio(self.out_dir / name, turn.audio, self.spec.audio_format, self.spec.sample_rate)
                outputs["audio"] = name
                extra.update(answer_audio_s=round(turn.audio.duration, 3), answer_audio_rate=rate)
        self.add("write", time.perf_counter() - t0)
        return outputs, extra


def _with_suffix(base: Path, suffix: str) -> Path:
    return base.with_name(base.name + suffix)
