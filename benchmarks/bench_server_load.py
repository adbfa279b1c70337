"""/health latency of the server while it works: idle vs. under load, in one run.

The server runs as its own process (`python -m spark_voice.serve`, as deployed); the load runs in
a second process so that client work does not share the probe's interpreter: `--speech` clients
(default 4) ask /v1/audio/speech for long answers (minutes of audio, resampled and encoded to
Opus/FLAC) and `--sessions` websocket voice sessions (default 2) stream speech-like audio in real
time. A probe in this process asks /health every 20 ms meanwhile. Loopback only; every loop is
bounded by `--seconds` and an iteration cap. Target (issue 16): p99 under load < 50 ms.

    python benchmarks/bench_server_load.py                   # mock profile (no models)
    python benchmarks/bench_server_load.py --seconds 20 --json results/load.json

Timings only; nothing is asserted. The ratio loaded/idle of one run is the number to compare;
old vs new: SPARK_VOICE_BENCH_TREE=/path/to/other/checkout runs the same load on that tree's code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import multiprocessing  # noqa: E402
import subprocess  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import websockets  # noqa: E402

KEY = "bench-key"
MAX_ITER = 10_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(tree: Path, profile: str, queue: int, sessions: int) -> tuple[subprocess.Popen, str]:
    """`python -m spark_voice.serve` of `tree` on a free loopback port; waits for /ready."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree), "SPARK_VOICE_PROFILE": profile, "SERVE_API_KEY": KEY,
           "SERVE_QUEUE_SIZE": str(queue), "SERVE_MAX_SESSIONS": str(sessions), "LOG_LEVEL": "WARNING",
           "SPARK_VOICE_HOME": str(tree)}
    proc = subprocess.Popen([sys.executable, "-m", "spark_voice.serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not get ready")


def probe(url: str, stop: threading.Event, out: list[float], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as h:
        for _ in range(MAX_ITER):
            if stop.is_set() or time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            h.get("/health")
            out.append((time.perf_counter() - t0) * 1000.0)
            time.sleep(0.02)


def speech_client(url: str, stop: threading.Event, fmt: str, stats: dict) -> None:
    text = "This long answer is read aloud again and again to keep the encoder busy. " * 50
    with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {KEY}"}) as h:
        for _ in range(MAX_ITER):
            if stop.is_set():
                return
            with h.stream("POST", "/v1/audio/speech", json={"input": text[:4000], "response_format": fmt}) as r:
                n = sum(len(b) for b in r.iter_bytes())
            stats["speech_requests"] += 1
            stats["speech_bytes"] += n
            stats.setdefault("speech_status", set()).add(r.status_code)


async def voice_session(url: str, stop: threading.Event, stats: dict) -> None:
    ws_url = url.replace("http://", "ws://") + "/v1/voice"
    sr, frame_s = 16000, 0.02
    t = np.arange(int(sr * 1.2)) / sr
    speech = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    clip = np.concatenate([speech, np.zeros(int(sr * 0.8), np.float32)])
    pcm = (clip * 32767).astype("<i2").tobytes()
    step = int(sr * frame_s) * 2
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {KEY}"},
                                  max_size=None) as ws:

        async def reader() -> None:
            async for msg in ws:
                if isinstance(msg, str) and json.loads(msg).get("type") == "turn.done":
                    stats["turns"] += 1

        rd = asyncio.create_task(reader())
        for _ in range(MAX_ITER):
            for i in range(0, len(pcm), step):
                if stop.is_set():
                    rd.cancel()
                    return
                await ws.send(pcm[i:i + step])
                await asyncio.sleep(frame_s)  # real time, like a microphone
        rd.cancel()


def sessions_thread(url: str, stop: threading.Event, n: int, stats: dict) -> None:
    async def all_sessions() -> None:
        await asyncio.gather(*(voice_session(url, stop, stats) for _ in range(n)))

    asyncio.run(all_sessions())


def load_process(url: str, stop, n_speech: int, n_sessions: int, fmt: str, result) -> None:
    """The load generators, in a process of their own; counts go back through `result`."""
    tstop = threading.Event()
    stats = {"speech_requests": 0, "speech_bytes": 0, "turns": 0}
    workers = [threading.Thread(target=speech_client, args=(url, tstop, fmt, stats), daemon=True)
               for _ in range(n_speech)]
    if n_sessions:
        workers.append(threading.Thread(target=sessions_thread, args=(url, tstop, n_sessions, stats), daemon=True))
    for w in workers:
        w.start()
    stop.wait(3600)
    tstop.set()
    for w in workers:
        w.join(60)
    result.update({k: sorted(v) if isinstance(v, set) else v for k, v in stats.items()})


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100.0 * (len(xs) - 1))))] if xs else float("nan")


def summary(xs: list[float]) -> dict:
    return {"n": len(xs), "p50_ms": round(pct(xs, 50), 2), "p95_ms": round(pct(xs, 95), 2),
            "p99_ms": round(pct(xs, 99), 2), "max_ms": round(max(xs), 2) if xs else None,
            "mean_ms": round(statistics.fmean(xs), 2) if xs else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="mock", choices=["mock", "dev"])
    p.add_argument("--seconds", type=float, default=10.0, help="length of each phase (idle, loaded)")
    p.add_argument("--speech", type=int, default=4, help="concurrent long /v1/audio/speech clients")
    p.add_argument("--sessions", type=int, default=2, help="concurrent websocket voice sessions")
    p.add_argument("--format", default="opus", choices=["opus", "flac", "wav", "pcm"])
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    a = p.parse_args(argv)
    tree = Path(os.environ.get("SPARK_VOICE_BENCH_TREE") or Path(__file__).resolve().parent.parent).resolve()
    proc, url = start(tree, a.profile, max(8, a.speech * 2), max(8, a.sessions))
    mp = multiprocessing.get_context("spawn")
    try:
        idle: list[float] = []
        probe(url, threading.Event(), idle, a.seconds)
        with mp.Manager() as manager:
            stop, stats = manager.Event(), manager.dict()
            loader = mp.Process(target=load_process, args=(url, stop, a.speech, a.sessions, a.format, stats))
            loader.start()
            time.sleep(2.0)  # let the load build up
            loaded: list[float] = []
            probe(url, threading.Event(), loaded, a.seconds)
            stop.set()
            loader.join(120)
            load_stats = dict(stats)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    res = {"tree": str(tree), "profile": a.profile,
           "seconds": a.seconds, "speech_clients": a.speech, "ws_sessions": a.sessions,
           "format": a.format, "idle": summary(idle), "loaded": summary(loaded),
           "p99_ratio_loaded_vs_idle": round(pct(loaded, 99) / max(pct(idle, 99), 1e-9), 2),
           "load": load_stats, "cpus": os.cpu_count()}
    print(f"/health latency, {a.speech} speech encodes ({a.format}) + {a.sessions} websocket sessions, "
          f"{a.seconds:g} s per phase")
    print(f"{'':8} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name in ("idle", "loaded"):
        r = res[name]
        print(f"{name:8} {r['n']:5d} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f} {r['p99_ms']:8.2f} {r['max_ms']:8.2f}")
    print(f"p99 loaded/idle: {res['p99_ratio_loaded_vs_idle']}x   load done: {res['load']}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
