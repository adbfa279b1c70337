"""run_batch: plan (resume), dispatch to workers (one local worker or Ray actors), commit records.

The driver is the only writer of the manifest; workers write their outputs themselves (OUT_DIR
may be a shared filesystem) and return small records. Inputs are streamed: the folder is walked
lazily and at most a bounded number of files are in flight.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..fsutil import atomic_write_text
from .inputs import Task, iter_inputs
from .manifest import BatchError, Manifest, OutDirLock
from .report import Progress, Summary
from .worker import BatchWorker, JobSpec, parse_stages

log = logging.getLogger("spark_voice.batch")

SUMMARY = "summary.json"


@dataclass
class BatchResult:
    summary: Summary
    manifest: Path

    @property
    def exit_code(self) -> int:
        if self.summary.interrupted:
            return 130
        return 1 if self.summary.failed else 0


class LocalExecutor:
    """One BatchWorker in this process: files one after the other."""

    mode = "local"

    def __init__(self, spec: JobSpec, settings: Any) -> None:
        self.spec, self.settings = spec, settings
        self.worker: BatchWorker | None = None
        self.workers = 1

    def run(self, tasks: Iterable[Task]) -> Iterator[dict[str, Any]]:
        for task in tasks:
            if self.worker is None:  # models load only when there is something to do
                self.worker = BatchWorker(self.spec, self.settings)
                self.ready()
            yield self.worker.process(task)

    def ready(self) -> None:  # replaced by run_batch to time the start-up
        pass

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()


def make_spec(settings: Any, out_dir: Path, stages: tuple[str, ...], *, language: str | None = None,
              voice: str | None = None, audio_format: str | None = None, sample_rate: int | None = None,
              debug: dict | None = None) -> JobSpec:
    from ..audio.io import FORMATS
    from ..errors import ConfigError

    fmt = audio_format or settings.tts_output_format
    if fmt not in FORMATS:
        raise ConfigError(f"--format: invalid value {fmt!r}; accepted values: {', '.join(FORMATS)}")
    return JobSpec(out_dir=str(Path(out_dir).resolve()), stages=stages,
                   settings_env=settings.as_env(mask_secrets=False), root_dir=str(settings.root_dir),
                   language=language, voice=voice, audio_format=fmt,
                   sample_rate=int(sample_rate or settings.tts_sample_rate), debug=dict(debug or {}))


def run_batch(in_dir: str | os.PathLike, out_dir: str | os.PathLike, settings: Any = None, *,
              stages: str | tuple[str, ...] = "stt,llm,tts", language: str | None = None, voice: str | None = None,
              audio_format: str | None = None, sample_rate: int | None = None, retry_errors: bool = False,
              ray: bool = False, ray_address: str | None = None, actors: int | None = None,
              progress: bool = True, echo: Callable[[str], None] | None = print,
              on_record: Callable[[dict[str, Any], Any], None] | None = None, exit_after: int = 0,
              debug: dict | None = None) -> BatchResult:
    """Process every audio file under `in_dir` into `out_dir` (see the package docstring).

    ray: run on a Ray cluster (`ray_address`, or a local one), `actors` engine sets.
    on_record(record, executor): called after each record is committed (tests, progress hooks).
    exit_after: test hook, the process dies abruptly (os._exit(75)) after that many records.
    """
    from ..config import Settings
    from ..errors import ConfigError

    t_start = time.perf_counter()
    settings = settings if settings is not None else Settings.load()
    stages = parse_stages(stages)
    if language:  # the backends built from the settings see it too (e.g. the mock recogniser)
        try:
            settings = settings.model_copy(update={"stt_language": Settings._v_lang(language)})
        except ValueError as exc:
            raise ConfigError(f"--language: invalid value {language!r}; {exc}") from None
    if "rag" in stages and settings.rag_enabled != "on":  # naming the stage requires an index
        settings = settings.model_copy(update={"rag_enabled": "on"})
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise BatchError(f"{in_dir}: not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    say = echo or (lambda _msg: None)
    summary = Summary(mode="ray" if ray else "local")
    with OutDirLock(out_dir):
        manifest = Manifest.open(out_dir)
        if manifest.dropped_bytes:
            log.warning("manifest: dropped a half-written last line (%d bytes)", manifest.dropped_bytes)
            say(f"manifest: dropped a half-written last line ({manifest.dropped_bytes} bytes)")

        want = frozenset(stages)
        # pass 1: count (no reads) for the progress bar
        maybe, cheap = 0, {"done": 0, "failed": 0}
        for rel, _path, st in iter_inputs(in_dir, out_dir):
            summary.inputs += 1
            kind = _skipped(manifest.cheap_status(rel, st, want), retry_errors)
            if kind is None:
                maybe += 1
            else:
                cheap[kind] += 1
        say(f"{summary.inputs} audio files, {summary.inputs - maybe} already in {manifest.path}, "
            f"{maybe} new or changed; stages {','.join(stages)}")
        if maybe == 0:
            summary.done_before, summary.failed_before = cheap["done"], cheap["failed"]
            summary.wall_s = time.perf_counter() - t_start
            return BatchResult(summary, manifest.path)

        spec = make_spec(settings, out_dir, stages, language=language, voice=voice,
                         audio_format=audio_format, sample_rate=sample_rate, debug=debug)
        if ray:
            from .ray_exec import RayExecutor

            executor: Any = RayExecutor(spec, settings, address=ray_address, actors=actors, echo=say)
        else:
            executor = LocalExecutor(spec, settings)

        bar = Progress(maybe, enabled=progress)

        def started() -> None:
            if not summary.startup_s:
                summary.startup_s = time.perf_counter() - t_start

        executor.ready = started

        def tasks() -> Iterator[Task]:  # pass 2: the plan, streamed
            for rel, path, st in iter_inputs(in_dir, out_dir):
                cheap = _skipped(manifest.cheap_status(rel, st, want), retry_errors)
                kind, task = manifest.plan(rel, path, st, retry_errors, want)
                if task is not None:  # kind == "todo"
                    yield task
                    continue
                if kind == "done":
                    summary.done_before += 1
                elif kind == "renamed":
                    summary.renamed += 1
                else:
                    summary.failed_before += 1
                if cheap is None:
                    bar.not_needed()

        committed: set[str] = set()
        try:
            for rec in executor.run(tasks()):
                if rec["file"] in committed:  # never two records of one file from one run
                    summary.duplicates += 1
                    continue
                manifest.append(rec)
                committed.add(rec["file"])
                summary.add(rec)
                bar.update(rec)
                if on_record is not None:
                    on_record(rec, executor)
                if exit_after and summary.processed >= exit_after:
                    os._exit(75)  # test hook: die without any cleanup, like kill -9
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            bar.close()
            summary.workers = executor.workers
            summary.resent = int(getattr(executor, "retried", 0))
            try:
                executor.close()
            except KeyboardInterrupt:
                summary.interrupted = True
            summary.wall_s = time.perf_counter() - t_start
            atomic_write_text(out_dir / SUMMARY, json.dumps(summary.as_dict(), ensure_ascii=False, indent=1))
    return BatchResult(summary, manifest.path)


def _skipped(status: str | None, retry_errors: bool) -> str | None:
    if status == "ok":
        return "done"
    if status is not None and not retry_errors:
        return "failed"
    return None

