"""What one server instance holds: settings, the pipeline and its backends, one gate per engine,
the background loader, open sessions, and the /health and /ready bodies built from them."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

from ..events import LatencyRecorder
from .engines import EngineGate, Gated, Runner
from .metrics import MeteredLatencyRecorder

log = logging.getLogger("spark_voice.serve")

STAGES = ("stt", "llm", "tts", "embedding")
HTTP_LATENCY_SOURCES = ("chat", "speech", "transcription")


class ServerState:
    def __init__(self, settings: Any, pipeline: Any, *, embedder: Any = None, own_pipeline: bool = False) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.own_pipeline = own_pipeline
        self.started = time.time()
        backends: dict[str, Any] = {"stt": pipeline.stt, "llm": pipeline.llm, "tts": pipeline.tts}
        emb = embedder if embedder is not None else pipeline.embedder
        if emb is None:
            try:
                from ..backends.registry import build

                emb = build("embedding", settings)
            except Exception as exc:  # an unknown provider etc.: /health says why
                log.warning("embedding backend not built", extra={"error": str(exc)})
                self._embedding_error = f"{type(exc).__name__}: {exc}"
        self.backends = {k: v for k, v in {**backends, "embedding": emb}.items() if v is not None}
        q = settings.serve_queue_size
        timeout = float(getattr(settings, "serve_queue_timeout_s", 120.0))
        self.gates = {stage: EngineGate(stage, q, 1, timeout) for stage in self.backends}
        self.status: dict[str, dict[str, Any]] = {s: {"state": "pending", "error": "", "load_seconds": None,
                                                       "probe_seconds": None} for s in self.backends}
        self.runtime_errors: dict[str, str] = {}
        self.sessions: set[Any] = set()
        self.runner = Runner(max_workers=len(self.gates) * (q + 1) + 16)
        self.metrics = None
        self.http_latency: dict[str, LatencyRecorder] = {
            s: MeteredLatencyRecorder(settings.serve_latency_window) for s in HTTP_LATENCY_SOURCES}
        self._loader: threading.Thread | None = None
        self._closed = threading.Event()

    # ------------------------------------------------------------------ metrics wiring
    def attach_metrics(self, metrics: Any) -> None:
        self.metrics = metrics
        old = self.pipeline.latency
        rec = MeteredLatencyRecorder(old.window, metrics.observer("voice") if metrics else None)
        for rid, lat in old.samples():
            LatencyRecorder.record(rec, rid, lat)
        self.pipeline.latency = rec
        for source, r in self.http_latency.items():
            r.on_record = metrics.observer(source) if metrics else None

    # ------------------------------------------------------------------ loading
    def lazy(self) -> None:
        """No start-up loading (--no-load): engines load on first use; /ready stays 503."""
        for st in self.status.values():
            st["state"] = "lazy"

    def start_loading(self) -> None:
        """Load and probe every provider once, in a background thread (the server answers meanwhile)."""
        self._loader = threading.Thread(target=self._load_all, name="spark-voice-loader", daemon=True)
        self._loader.start()

    def _load_all(self) -> None:
        for stage, backend in self.backends.items():
            if self._closed.is_set():
                return
            st = self.status[stage]
            try:
                st["state"] = "loading"
                t0 = time.perf_counter()
                backend.load()
                st["load_seconds"] = round(time.perf_counter() - t0, 3)
                st["state"] = "probing"
                t0 = time.perf_counter()
                with self.gates[stage].hold(bounded=False):
                    backend.probe()
                st["probe_seconds"] = round(time.perf_counter() - t0, 3)
                st["state"], st["error"] = "ready", ""
                log.info("provider ready", extra={"stage": stage, "provider": backend.info().provider,
                                                  "load_s": st["load_seconds"], "probe_s": st["probe_seconds"]})
            except Exception as exc:
                st["state"], st["error"] = "failed", f"{type(exc).__name__}: {exc}"
                log.error("provider failed to load", extra={"stage": stage, "error": st["error"]})

    def wait_loaded(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.ready()

    def stage_ready(self, stage: str) -> bool:
        return self.status.get(stage, {}).get("state") == "ready"

    def ready(self) -> bool:
        return bool(self.backends) and all(self.stage_ready(s) for s in self.backends)

    def loading(self, stage: str) -> bool:
        return self.status.get(stage, {}).get("state") in ("pending", "loading")

    # ------------------------------------------------------------------ sessions
    def session_pipeline(self) -> Any:
        """A pipeline for one websocket session: its own history, the shared (gated) engines and
        the shared latency recorder."""
        from ..pipeline import VoicePipeline

        p = self.pipeline
        g = {k: Gated(b, self.gates[k]) for k, b in self.backends.items()}
        sp = VoicePipeline(g.get("stt"), g.get("llm"), g.get("tts"), retriever=p.retriever,
                           embedder=g.get("embedding"), settings=p.settings, system_prompt=p.system_prompt,
                           language=p.language, voice=p.voice, history_turns=p.history_turns, top_k=p.top_k)
        sp.latency = p.latency
        return sp

    def close(self) -> None:
        self._closed.set()
        for s in list(self.sessions):
            try:
                s.cancel_all()
            except Exception:
                pass
        self.pipeline.cancel()
        self.runner.shutdown()
        if self.own_pipeline:
            for b in self.backends.values():
                try:
                    b.close()
                except Exception:
                    pass

    # ------------------------------------------------------------------ health
    def _endpoint(self, stage: str, default: str) -> str:
        override = {"llm": "llm_endpoint", "stt": "stt_endpoint", "embedding": "embedding_endpoint"}.get(stage)
        val = getattr(self.settings, override, "") if override else ""
        return val or default

    def provider_info(self, stage: str) -> dict[str, Any]:
        b = self.backends[stage]
        st = self.status[stage]
        try:
            inf = b.info()
            d = dataclasses.asdict(inf)
        except Exception as exc:
            d = {"provider": getattr(b, "provider", "?"), "endpoint": "", "is_mock": False, "loaded": False,
                 "ready": False, "fallback_count": 0, "last_error": f"info() failed: {exc}", "device": "?",
                 "warnings": []}
        d["endpoint"] = self._endpoint(stage, d.get("endpoint", ""))
        d["ready"] = st["state"] == "ready"
        d["state"] = st["state"]
        d["last_error"] = d.get("last_error") or st["error"] or self.runtime_errors.get(stage, "")
        d["load_seconds"] = st["load_seconds"]
        d["probe_seconds"] = st["probe_seconds"]
        d["queue"] = self.gates[stage].snapshot()
        return d

    def rag_info(self) -> dict[str, Any]:
        s = self.settings
        path = Path(s.path(s.rag_index_path))
        r = self.pipeline.retriever
        chunks = None
        if r is not None:
            try:
                chunks = len(r)
            except Exception:
                chunks = None
        for attr in (() if chunks is not None else ("chunks", "ntotal", "size", "count")):
            v = getattr(r, attr, None) if r is not None else None
            if callable(v):
                try:
                    v = v()
                except Exception:
                    v = None
            if isinstance(v, int):
                chunks = v
                break
            if isinstance(v, (list, tuple)):
                chunks = len(v)
                break
        return {"enabled": s.rag_enabled, "index_path": str(path), "present": path.exists(),
                "active": r is not None, "chunks": chunks, "top_k": s.rag_top_k}

    def body(self) -> dict[str, Any]:
        providers = {stage: self.provider_info(stage) for stage in self.backends}
        warnings: list[str] = []
        s = self.settings
        for stage, p in providers.items():
            own = p.pop("warnings", []) or []
            if p.get("is_mock"):
                warnings.append(f"{stage}: mock provider in use (profile {s.profile}); answers are not real")
            warnings.extend(w if w.startswith(f"{stage}") else f"{stage}: {w}" for w in own)
            asked = s.tts_backend if stage == "tts" else s.backend
            if (asked == "cuda" and not p.get("is_mock") and p.get("loaded") and str(p.get("device", "")) == "cpu"
                    and not any("cpu" in w.lower() for w in own)):
                warnings.append(f"{stage}: running on CPU although {'TTS_BACKEND' if stage == 'tts' else 'BACKEND'}"
                                "=cuda was configured")
            if p["state"] == "failed":
                warnings.append(f"{stage}: provider {p['provider']} failed to load: {self.status[stage]['error']}")
        if "embedding" not in self.backends and getattr(self, "_embedding_error", ""):
            warnings.append(f"embedding: not available: {self._embedding_error}")
        warnings.extend(self.pipeline.warnings)
        from ..doctor import gpu_warnings  # cached binding probes: no subprocess, cheap

        warnings.extend(gpu_warnings(s))
        return {"status": "ok", "ready": self.ready(), "profile": s.profile,
                "version": _version(), "uptime_s": round(time.time() - self.started, 1),
                "providers": providers, "rag": self.rag_info(), "sessions": len(self.sessions),
                "warnings": list(dict.fromkeys(warnings))}


def _version() -> str:
    try:
        from .. import __version__

        return __version__
    except Exception:
        return "?"
