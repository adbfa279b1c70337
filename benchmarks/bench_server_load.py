"""/health latency of the server while it works: idle vs. under load, in one run.

Load = `--speech` clients (default 4) asking /v1/audio/speech for long answers (minutes of audio,
resampled and encoded to Opus/FLAC) and `--sessions` websocket voice sessions (default 2) streaming
speech-like audio in real time. A probe asks /health every 20 ms meanwhile. Loopback only; every
loop is bounded by `--seconds` and an iteration cap. Target (issue 16): p99 under load < 50 ms.

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
if os.environ.get("SPARK_VOICE_BENCH_TREE"):  # another checkout's spark_voice (e.g. main), for old vs new
    sys.path.insert(0, os.environ["SPARK_VOICE_BENCH_TREE"])
else:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import uvicorn  # noqa: E402
import websockets  # noqa: E402

from spark_voice.config import Settings  # noqa: E402
from spark_voice.serve.app import create_app  # noqa: E402

try:
    from spark_voice.serve.limits import uvicorn_options  # noqa: E402
except ImportError:  # a tree from before issue 16
    def uvicorn_options() -> dict:
        return {"ws_max_size": 16 * 1024 * 1024}

KEY = "bench-key"
MAX_ITER = 10_000


def start(settings: Settings) -> tuple[uvicorn.Server, str, threading.Thread]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                           **uvicorn_options()))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("server did not start")
        time.sleep(0.02)
    app.state.sv.wait_loaded(300)
    return server, url, t


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
    extra = {"SERVE_MAX_SESSIONS": str(max(8, a.sessions))} if "serve_max_sessions" in Settings.model_fields else {}
    s = Settings.load(profile=a.profile, SERVE_API_KEY=KEY, SERVE_QUEUE_SIZE=str(max(8, a.speech * 2)), **extra)
    server, url, thread = start(s)
    try:
        idle: list[float] = []
        probe(url, threading.Event(), idle, a.seconds)
        stop = threading.Event()
        stats = {"speech_requests": 0, "speech_bytes": 0, "turns": 0}
        workers = [threading.Thread(target=speech_client, args=(url, stop, a.format, stats), daemon=True)
                   for _ in range(a.speech)]
        if a.sessions:
            workers.append(threading.Thread(target=sessions_thread, args=(url, stop, a.sessions, stats),
                                            daemon=True))
        for w in workers:
            w.start()
        time.sleep(1.0)  # let the load build up
        loaded: list[float] = []
        probe(url, threading.Event(), loaded, a.seconds)
        stop.set()
        for w in workers:
            w.join(60)
    finally:
        server.should_exit = True
        thread.join(10)
    import spark_voice

    res = {"tree": str(Path(spark_voice.__file__).resolve().parent.parent), "profile": a.profile,
           "seconds": a.seconds, "speech_clients": a.speech, "ws_sessions": a.sessions,
           "format": a.format, "idle": summary(idle), "loaded": summary(loaded),
           "p99_ratio_loaded_vs_idle": round(pct(loaded, 99) / max(pct(idle, 99), 1e-9), 2),
           "load": {k: sorted(v) if isinstance(v, set) else v for k, v in stats.items()}, "cpus": os.cpu_count()}
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
