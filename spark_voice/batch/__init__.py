"""Batch jobs: a folder of audio -> transcripts, answers and spoken answers, resumable.

    spark-voice batch IN_DIR OUT_DIR [--stages stt|stt,llm|all] [--ray [ADDRESS]] [--actors N]

    from spark_voice.batch import run_batch
    result = run_batch("questions/", "answers/", stages="stt,llm")
    print(result.summary.lines())

One process (:class:`~spark_voice.batch.runner.LocalExecutor`) or a Ray cluster
(:mod:`spark_voice.batch.ray_exec`, extra ``spark-voice[ray]``; Ray is imported only there).
Outputs per file are written atomically by the worker that made them; the manifest
(OUT_DIR/manifest.jsonl) is appended by the driver alone, once per file, and is what a rerun
resumes from: files are known by the SHA-256 of their content.
"""

from __future__ import annotations

from .inputs import AUDIO_EXTS, Task, file_sha256, iter_inputs
from .manifest import MANIFEST, BatchError, Manifest
from .report import Summary
from .runner import SUMMARY, BatchResult, LocalExecutor, run_batch
from .worker import STAGES, BatchWorker, JobSpec, parse_stages

__all__ = ["AUDIO_EXTS", "MANIFEST", "STAGES", "SUMMARY", "BatchError", "BatchResult", "BatchWorker", "JobSpec",
           "LocalExecutor", "Manifest", "Summary", "Task", "file_sha256", "iter_inputs", "parse_stages", "run_batch"]
