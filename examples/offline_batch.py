#!/usr/bin/env python
"""Offline batch: a folder of audio files -> transcripts, answers and spoken answers (.ogg).

    python examples/offline_batch.py questions/ --out answers/            # configured profile
    python examples/offline_batch.py questions/ --out answers/ --profile mock --language en

For every audio file under the input folder (wav, flac, ogg, opus, mp3; sorted, recursive) it runs
one voice turn and writes ``<out>/<relative path>.answer.ogg`` (OGG/Opus) plus one JSON line in
``<out>/manifest.jsonl``:

    {"file": "sub/q1.wav", "status": "ok", "request_id": ..., "transcript": ..., "answer": ...,
     "language": ..., "audio": "sub/q1.wav.answer.ogg", "audio_seconds": ..., "latency_ms": {...}}

A file that cannot be processed (undecodable audio, an engine error) gets a record with
``"status": "error"`` and the error message, and the run goes on with the next file.

Resuming: the manifest is the run's memory. Every record is appended with one write() and
fsync'ed before the next file starts, and a spoken answer is written atomically (temp file +
rename) before its record, so after a crash, Ctrl-C or power loss a rerun skips every file that
has a record and redoes only the one that was in flight. A half-written last line (a crash in the
middle of the append) is cut off on resume. Files that failed are not retried unless
``--retry-errors`` is given. Exit status: 0 when every file of this run succeeded, 1 when some
failed (see the manifest), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

AUDIO_EXTS = {".wav", ".flac", ".ogg", ".opus", ".mp3"}
MANIFEST = "manifest.jsonl"
# Test hook: after this many records written in this run, exit abruptly (like a kill -9).
CRASH_AFTER_ENV = "SPARK_VOICE_BATCH_CRASH_AFTER"


def find_inputs(folder: Path, out: Path) -> list[Path]:
    out = out.resolve()
    files = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in AUDIO_EXTS and out not in p.resolve().parents:
            files.append(p)
    return files


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """file -> its last record. Cuts off a half-written last line (crash during an append)."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        print(f"manifest: dropping a half-written last line ({len(data) - keep} bytes)", file=sys.stderr)
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        data = data[:keep]
    records: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            records[rec["file"]] = rec
        except (ValueError, KeyError, TypeError):
            print(f"manifest line {n} is not a record; ignored", file=sys.stderr)
    return records


def append_record(path: Path, record: dict[str, Any]) -> None:
    """One line, one write() on an O_APPEND descriptor, fsync before returning."""
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def progress(items: list, desc: str) -> Iterable:
    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is optional (pip install 'spark-voice[bench]')
        return items
    return tqdm(items, desc=desc, unit="file", dynamic_ncols=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path, help="folder of audio files")
    p.add_argument("--out", type=Path, help="output folder (default: <input>-answers)")
    p.add_argument("--profile", choices=["prod", "dev", "mock"], help="settings profile (default: configured)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a setting")
    p.add_argument("--language", help="STT language (ja, en, auto); default STT_LANGUAGE")
    p.add_argument("--voice", help="TTS voice")
    p.add_argument("--no-speak", action="store_true", help="transcripts and answers only, no .ogg")
    p.add_argument("--retry-errors", action="store_true", help="redo files whose record is an error")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from spark_voice import Settings, SparkVoiceError, VoicePipeline
    from spark_voice.audio.io import write_audio

    if not args.input.is_dir():
        print(f"error: {args.input} is not a folder", file=sys.stderr)
        return 2
    out = args.out or args.input.with_name(args.input.name + "-answers")
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    done = read_manifest(manifest)
    inputs = find_inputs(args.input, out)
    todo = [p for p in inputs if (rec := done.get(p.relative_to(args.input).as_posix())) is None
            or (args.retry_errors and rec.get("status") != "ok")]
    print(f"{len(inputs)} audio files, {len(inputs) - len(todo)} already in {manifest}, {len(todo)} to do")
    if not todo:
        return 0

    overrides: dict[str, str] = {}
    if args.profile:
        overrides["profile"] = args.profile
    for item in args.set:
        k, _, v = item.partition("=")
        overrides[k.strip().upper()] = v
    try:
        settings = Settings.load(**overrides)
        pipe = VoicePipeline.from_settings(settings)
        if args.language:
            pipe.language = args.language
        if args.voice:
            pipe.voice = args.voice
        pipe.history_turns = 0  # every file is its own question
    except SparkVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    crash_after = int(os.environ.get(CRASH_AFTER_ENV, "0") or 0)
    written = failed = 0
    try:
        for path in progress(todo, "batch"):
            rel = path.relative_to(args.input).as_posix()
            t0 = time.perf_counter()
            record: dict[str, Any] = {"file": rel}
            try:
                turn = pipe.run(path, speak=not args.no_speak)
                record.update(status="ok", request_id=turn.request_id, language=turn.language,
                              transcript=turn.transcript, answer=turn.answer, latency_ms=turn.latencies)
                if turn.audio is not None and len(turn.audio.samples):
                    audio_rel = rel + ".answer.ogg"
                    _, rate = write_audio(out / audio_rel, turn.audio, "opus", settings.tts_sample_rate)
                    record.update(audio=audio_rel, audio_seconds=round(turn.audio.duration, 3), audio_rate=rate)
            except Exception as exc:  # a bad file is recorded and the run goes on
                failed += 1
                record.update(status="error", error=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
            record["seconds"] = round(time.perf_counter() - t0, 3)
            record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            append_record(manifest, record)
            written += 1
            if crash_after and written >= crash_after:
                os._exit(75)  # test hook: die without any cleanup
    except KeyboardInterrupt:
        print(f"\ninterrupted after {written} file(s); run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        pipe.close()
    print(f"done: {written - failed} ok, {failed} failed this run; manifest {manifest}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
