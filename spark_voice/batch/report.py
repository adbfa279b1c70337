"""Progress bar (throughput, ETA) and the end-of-job summary (files, audio hours, RTF per stage)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

STAGE_ORDER = ("decode", "stt", "rag", "llm", "tts", "write")


@dataclass
class Summary:
    """What a run did. Real-time factor (RTF) = seconds of work / seconds of input audio: per stage
    it is the engines' time summed over workers; for the job it is the wall time (below 1: faster
    than real time; with N workers the job RTF can be N times below the stage RTFs)."""

    inputs: int = 0  # audio files found
    done_before: int = 0  # finished in an earlier run (same content, same name)
    renamed: int = 0  # content finished in an earlier run under another name
    failed_before: int = 0  # recorded as failed earlier (not retried without --retry-errors)
    processed: int = 0  # records committed in this run
    ok: int = 0
    failed: int = 0
    duplicates: int = 0  # results dropped because the file was already committed in this run
    resent: int = 0  # files sent to a worker again because the one they were on died (Ray)
    audio_s: float = 0.0  # input audio of the files processed ok in this run
    answer_audio_s: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    startup_s: float = 0.0  # from the start of the run to the workers ready (Ray start-up, models loaded)
    workers: int = 0
    mode: str = "local"
    interrupted: bool = False
    failures: list[dict[str, str]] = field(default_factory=list)  # the first few: file, error

    MAX_FAILURES_LISTED = 20

    def add(self, rec: dict[str, Any]) -> None:
        self.processed += 1
        if rec.get("status") == "ok":
            self.ok += 1
            self.audio_s += float(rec.get("audio_s") or 0.0)
            self.answer_audio_s += float(rec.get("answer_audio_s") or 0.0)
            for k, v in (rec.get("seconds") or {}).items():
                if k != "total":
                    self.stage_s[k] = self.stage_s.get(k, 0.0) + float(v)
        else:
            self.failed += 1
            if len(self.failures) < self.MAX_FAILURES_LISTED:
                self.failures.append({"file": rec.get("file", "?"), "error": str(rec.get("error", ""))[:300]})

    @property
    def files_per_minute(self) -> float:
        return 60.0 * self.processed / self.wall_s if self.wall_s > 0 else 0.0

    def rtf(self) -> dict[str, float]:
        if self.audio_s <= 0:
            return {}
        out = {k: self.stage_s[k] / self.audio_s for k in STAGE_ORDER if k in self.stage_s}
        out["job"] = self.wall_s / self.audio_s
        return out

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(files_per_minute=round(self.files_per_minute, 3), audio_hours=round(self.audio_s / 3600, 5),
                 rtf={k: round(v, 5) for k, v in self.rtf().items()},
                 stage_s={k: round(v, 3) for k, v in self.stage_s.items()},
                 audio_s=round(self.audio_s, 3), answer_audio_s=round(self.answer_audio_s, 3),
                 wall_s=round(self.wall_s, 3), startup_s=round(self.startup_s, 3))
        return d

    def lines(self) -> list[str]:
        skipped = self.done_before + self.renamed + self.failed_before
        out = [f"files:      {self.inputs} found, {self.processed} processed ({self.ok} ok, {self.failed} failed), "
               f"{skipped} skipped ({self.done_before} done before, {self.renamed} renamed, "
               f"{self.failed_before} failed before)"]
        out.append(f"audio:      {self.audio_s / 3600:.4f} h in ({self.audio_s:.1f} s), "
                   f"{self.answer_audio_s:.1f} s of spoken answers out")
        out.append(f"time:       {self.wall_s:.1f} s wall ({self.startup_s:.1f} s to start the workers and load "
                   f"the models), {self.files_per_minute:.1f} files/min, {self.mode}, {self.workers} worker(s)")
        if self.resent or self.duplicates:
            out.append(f"recovery:   {self.resent} file(s) sent again after a worker died, "
                       f"{self.duplicates} duplicate result(s) dropped")
        r = self.rtf()
        if r:
            out.append("RTF:        " + ", ".join(f"{k} {v:.3f}" for k, v in r.items())
                       + "   (seconds of work per second of audio)")
        for f in self.failures:
            out.append(f"failed:     {f['file']}: {f['error']}")
        if self.failed > len(self.failures):
            out.append(f"            ... and {self.failed - len(self.failures)} more (see the manifest)")
        if self.interrupted:
            out.append("interrupted: run the same command again to resume")
        return out


class Progress:
    """tqdm when it is installed and enabled (files/s and ETA), else nothing."""

    def __init__(self, total: int, enabled: bool = True, desc: str = "batch") -> None:
        self.bar = None
        self.t0 = time.perf_counter()
        self.audio_s = 0.0
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # the bar is optional (spark-voice[bench] or [rag] bring tqdm)
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, unit="file", dynamic_ncols=True, file=sys.stderr,
                                smoothing=0.1)

    def update(self, rec: dict[str, Any]) -> None:
        self.audio_s += float(rec.get("audio_s") or 0.0)
        if self.bar is not None:
            speed = self.audio_s / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"{self.audio_s / 60:.1f} audio-min, {speed:.1f}x realtime", refresh=False)
            self.bar.update(1)

    def not_needed(self) -> None:
        """A file counted as to-do turned out done (renamed): shrink the total."""
        if self.bar is not None and self.bar.total:
            self.bar.total -= 1
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
