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
from typing import Any, Iterator

from ..backends.base import SAMPLE_RATE_STT, Audio, Transcript
from ..fsutil import atomic_write_text
from .inputs import Task, file_sha256

log = logging.getLogger("spark_voice.batch")

STAGES = ("stt", "rag", "llm", "tts")
TRANSCRIPT_PREVIEW = 1000  # characters of the transcript kept in the manifest record


def parse_stages(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'stt' | 'stt,llm' | 'stt,rag,llm' | 'stt,llm,tts' | 'all' -> stages in pipeline order.

    The stages must be a prefix of stt -> rag -> llm -> tts, where rag may be left out (the LLM
    stage then retrieves only when RAG_ENABLED says so; naming rag requires an index)."""
    from ..errors import ConfigError

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

    def settings(self):
        from ..config import Settings

        return Settings.load(self.root_dir, environ={}, use_dotenv=False, **self.settings_env)


class _Timed:
    """A backend seen through a stopwatch: adds the time spent inside its work calls."""

    def __init__(self, backend: Any, worker: "BatchWorker", stage: str) -> None:
        self._b, self._w, self._stage = backend, worker, stage

    def __getattr__(self, name: str) -> Any:
        return getattr(self._b, name)

    def transcribe(self, audio: Audio, language: str | None = None) -> Transcript:
        self._w.stage = "stt"
        t0 = time.perf_counter()
        tr = self._b.transcribe(audio, language)
        self._w.add("stt", time.perf_counter() - t0)
        self._w.transcript = tr
        return tr

    def stream_chat(self, *args: Any, **kwargs: Any) -> Iterator:
        self._w.stage = "llm"
        return self._timed(self._b.stream_chat(*args, **kwargs), "llm")

    def synthesize(self, *args: Any, **kwargs: Any) -> Iterator:
        return self._timed(self._b.synthesize(*args, **kwargs), "tts")

    def _timed(self, it: Iterator, stage: str) -> Iterator:
        try:
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    self._w.add(stage, time.perf_counter() - t0)
                    return
                self._w.add(stage, time.perf_counter() - t0)
                yield item
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()


class BatchWorker:
    """Holds one engine set (models loaded once) and processes files one at a time."""

    def __init__(self, spec: JobSpec, settings: Any = None) -> None:
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
            from ..errors import ConfigError

            raise ConfigError("--stages names rag, but no usable index: "
                              + ("; ".join(self.pipe.warnings) or f"RAG_INDEX_PATH={self.settings.rag_index_path}"))
        self.pipe.stt = _Timed(self.pipe.stt, self, "stt")
        self.pipe.llm = _Timed(self.pipe.llm, self, "llm") if self.pipe.llm is not None else None
        self.pipe.tts = _Timed(self.pipe.tts, self, "tts") if self.pipe.tts is not None else None
        needed = [self.pipe.stt]
        if "llm" in self.stages:
            needed += [self.pipe.llm, self.pipe.embedder]
        if "tts" in self.stages:
            needed.append(self.pipe.tts)
        for b in needed:
            if b is not None and hasattr(b, "load"):
                b.load()
        if spec.voice and "tts" in self.stages:
            names = [v.name for v in self.pipe.tts.voices()]
            if spec.voice not in names:
                from ..errors import VoiceError

                raise VoiceError(f"unknown voice {spec.voice!r}; available voices: {', '.join(names)}")
        self.load_seconds = time.perf_counter() - t0
        self.seconds: dict[str, float] = {}
        self.stage = ""
        self.transcript: Transcript | None = None

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

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
        self.seconds, self.stage, self.transcript = {}, "read", None
        rec: dict[str, Any] = {"file": task.rel, "sha256": task.sha256, "size": task.size, "mtime_ns": task.mtime_ns}
        try:
            t0 = time.perf_counter()
            if task.sha256 is None:
                rec["sha256"] = file_sha256(task.path)  # the decode below reads it from the page cache
            self.stage = "decode"
            audio = load_audio(Path(task.path), SAMPLE_RATE_STT)
            self.add("decode", time.perf_counter() - t0)
            rec["audio_s"] = round(audio.duration, 3)
            outputs, extra = self._stages(task, audio)
            rec.update(status="ok", **extra, outputs=outputs)
        except Exception as exc:  # a bad file is recorded and the job goes on
            rec.update(status="error", stage=self.stage, error_type=type(exc).__name__,
                       error=f"{type(exc).__name__}: {exc}")
        rec["seconds"] = {k: round(v, 4) for k, v in self.seconds.items()}
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
            tr = self.transcript or Transcript(turn.transcript, [], turn.language)
            for ev in turn.events:
                if ev.stage == "rag.hits" and "ms" in ev.data:
                    self.add("rag", float(ev.data["ms"]) / 1000.0)
                    extra["rag_sources"] = [h["source"] for h in ev.data.get("hits", [])]
            language = turn.language
        else:
            lang = pipe.language
            tr = pipe.stt.transcribe(audio, None if lang == "auto" else lang)
            language = lang if lang != "auto" else tr.language
        self.stage = "write"
        t0 = time.perf_counter()
        base = self.out_dir / task.rel
        outputs: dict[str, str] = {}
        doc = {"file": task.rel, "language": language or tr.language, "text": tr.text,
               "duration_s": round(audio.duration, 3),
               "segments": [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text} for s in tr.segments],
               "stt": pipe.stt.info().provider}
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
