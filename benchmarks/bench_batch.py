"""Batch throughput: one process vs Ray with 1 actor vs Ray with 2 actors, same files, one run.

    python benchmarks/bench_batch.py [--profile dev] [-n 8] [--stages stt,llm] [--actors 1,2]
                                     [--language en] [--set NAME=VALUE ...] [--json results.json]

The input set: the bundled speech clips (examples/audio/question_en.wav, or question_ja.wav with
--language ja), each copy with a different lead-in of silence so that every file has its own
content hash. Every mode processes the same set into its own fresh OUT_DIR with the same settings
(engine threads as configured; Ray actors get the cluster's CPUs shared out between them, so one
actor runs with the configured threads and two actors on a 2-core box run with one thread each).

Reported per mode: wall time (includes loading the models; Ray's own start-up is timed apart),
files per minute over the whole run and after start-up, the job's real-time factor (wall time /
seconds of audio), the per-stage RTF (engine time summed over workers / seconds of audio), and
the ratios of files per minute against the single process. Timings only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_set(folder: Path, n: int, language: str) -> float:
    import numpy as np
    import soundfile as sf

    a, sr = sf.read(str(ROOT / "examples" / "audio" / f"question_{language}.wav"), dtype="float32")
    folder.mkdir(parents=True, exist_ok=True)
    total = 0.0
    for i in range(n):
        x = np.concatenate([np.zeros(int(sr * 0.04 * i), np.float32), a])
        sf.write(folder / f"q{i:03d}.wav", x, sr)
        total += len(x) / sr
    return total


def run_mode(label: str, inp: Path, work: Path, settings, stages: str, language: str, ray: bool,
             actors: int | None) -> dict:
    from spark_voice.batch import run_batch

    out = work / f"out-{label}"
    shutil.rmtree(out, ignore_errors=True)
    res = run_batch(inp, out, settings, stages=stages, language=language, ray=ray, actors=actors,
                    progress=False, echo=None)
    s = res.summary
    steady = s.wall_s - s.startup_s
    return {"mode": label, "workers": s.workers, "files": s.processed, "ok": s.ok, "failed": s.failed,
            "wall_s": round(s.wall_s, 2), "startup_s": round(s.startup_s, 2),
            "files_per_min": round(s.files_per_minute, 2),
            "steady_files_per_min": round(60.0 * s.processed / steady, 2) if steady > 0 else 0.0,
            "audio_s": round(s.audio_s, 2), "rtf": {k: round(v, 4) for k, v in s.rtf().items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="dev", choices=["prod", "dev", "mock"])
    p.add_argument("-n", type=int, default=8, help="files in the set")
    p.add_argument("--stages", default="stt,llm")
    p.add_argument("--actors", default="1,2", help="Ray actor counts to compare")
    p.add_argument("--language", default="en", choices=["en", "ja"])
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--no-local", action="store_true", help="skip the single-process mode")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    from spark_voice.config import Settings

    over = {"profile": args.profile, "LLM_TEMPERATURE": "0", "LLM_SEED": "0", "RAG_ENABLED": "off",
            "STT_LANGUAGE": args.language}
    for item in args.set:
        k, _, v = item.partition("=")
        over[k.strip().upper()] = v
    settings = Settings.load(ROOT, **over)
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    inp = work / "in"
    audio_s = make_set(inp, args.n, args.language)
    cores = os.cpu_count()
    print(f"{args.n} files, {audio_s:.1f} s of audio; profile {args.profile}, stages {args.stages}; "
          f"{cores} CPUs; threads llm {settings.llm_threads} stt {settings.stt_threads} tts {settings.tts_threads}")
    rows = []
    if not args.no_local:
        rows.append(run_mode("local", inp, work, settings, args.stages, args.language, False, None))
        print(f"  local done in {rows[-1]['wall_s']} s", flush=True)
    ray_init_s = None
    counts = [int(x) for x in args.actors.split(",") if x.strip()]
    if counts:
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING",
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        ray_init_s = time.perf_counter() - t0
        try:
            for n in counts:
                rows.append(run_mode(f"ray-{n}", inp, work, settings, args.stages, args.language, True, n))
                print(f"  ray {n} actor(s) done in {rows[-1]['wall_s']} s", flush=True)
        finally:
            ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    base = rows[0]
    stages = [k for k in ("decode", "stt", "rag", "llm", "tts") if any(k in r["rtf"] for r in rows)]
    head = (f"{'mode':<8} {'workers':>7} {'files':>5} {'wall s':>7} {'start s':>7} {'files/min':>9} "
            f"{'steady':>7} {'job RTF':>7} " + " ".join(f"{k + ' RTF':>9}" for k in stages)
            + f" {'x files/min':>11} {'x steady':>8}")
    print()
    print(head)
    for r in rows:
        ratio = r["files_per_min"] / base["files_per_min"] if base["files_per_min"] else 0.0
        sratio = r["steady_files_per_min"] / base["steady_files_per_min"] if base["steady_files_per_min"] else 0.0
        r["ratio_files_per_min"], r["ratio_steady"] = round(ratio, 3), round(sratio, 3)
        print(f"{r['mode']:<8} {r['workers']:>7} {r['files']:>5} {r['wall_s']:>7.1f} {r['startup_s']:>7.1f} "
              f"{r['files_per_min']:>9.1f} {r['steady_files_per_min']:>7.1f} {r['rtf'].get('job', 0):>7.3f} "
              + " ".join(f"{r['rtf'].get(k, 0):>9.3f}" for k in stages) + f" {ratio:>10.2f}x {sratio:>7.2f}x")
    if ray_init_s is not None:
        print(f"(ray.init of the local cluster: {ray_init_s:.1f} s, not included; ratios against {base['mode']})")
    if args.json:
        args.json.write_text(json.dumps({"files": args.n, "audio_s": audio_s, "stages": args.stages,
                                         "profile": args.profile, "cpus": cores, "ray_init_s": ray_init_s,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
