"""What one server instance holds: settings, the pipeline and its backends, one gate per engine,
the background loader, open sessions, and the /health and /ready bodies built from them."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..backends.base import Embedder
from ..backends.registry import build
from ..config import Settings
from ..events import LatencyRecorder
from ..pipeline import VoicePipeline
from ..types import Role, Voice
from .engines import EngineGate, Gated, Runner
from .metrics import MeteredLatencyRecorder, Metrics

if TYPE_CHECKING:
    from .voice_ws import WsVoiceSession

log = logging.getLogger("spark_voice.serve")

HTTP_LATENCY_SOURCES = ("chat", "speech", "transcription")


class ServerState:
    def __init__(self, settings: Settings, pipeline: VoicePipeline, *, embedder: Embedder | None = None,
                 own_pipeline: bool = False) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.own_pipeline = own_pipeline
        self.started = time.time()
        self._embedding_error = ""
        emb = embedder if embedder is not None else pipeline.embedder
        if emb is None:
            try:
                emb = build("embedding", settings)
            except Exception as exc:  # an unknown provider etc.: /health says why
                log.warning("embedding backend not built", extra={"error": str(exc)})
                self._embedding_error = f"{type(exc).__name__}: {exc}"
        # Each role's engine, typed by the Protocol routes rely on (a role may be absent).
        self.backends: dict[Role, Any] = {**pipeline.backends(), **({"embedding": emb} if emb else {})}
        q = settings.serve_queue_size
        timeout = float(settings.serve_queue_timeout_s)
        self.gates = {role: EngineGate(role, q, 1, timeout) for role in self.backends}
        self.status: dict[Role, dict[str, Any]] = {s: {"state": "pending", "error": "", "load_seconds": None,
                                                       "probe_seconds": None} for s in self.backends}
        self.runtime_errors: dict[Role, str] = {}
        self.sessions: set[WsVoiceSession] = set()
        self.runner = Runner(max_workers=len(self.gates) * (q + 1) + 16)
        self.metrics: Metrics | None = None
        self.http_latency: dict[str, MeteredLatencyRecorder] = {
            s: MeteredLatencyRecorder(settings.serve_latency_window) for s in HTTP_LATENCY_SOURCES}
        self._loader: threading.Thread | None = None
        self._closed = threading.Event()

    # ------------------------------------------------------------------ metrics wiring
    def attach_metrics(self) -> None:
        """Prometheus metrics (when prometheus-client is installed) fed by every latency recorder."""
        try:
            metrics: Metrics | None = Metrics(self)
        except ImportError:
            log.warning("prometheus-client is not installed; /metrics is disabled (pip install 'spark-voice[serve]')")
            metrics = None
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
        for role, backend in self.backends.items():
            if self._closed.is_set():
                return
            st = self.status[role]
            try:
                st["state"] = "loading"
                t0 = time.perf_counter()
                backend.load()
                st["load_seconds"] = round(time.perf_counter() - t0, 3)
                st["state"] = "probing"
                t0 = time.perf_counter()
                with self.gates[role].hold(bounded=False):
                    backend.probe()
                st["probe_seconds"] = round(time.perf_counter() - t0, 3)
                st["state"], st["error"] = "ready", ""
                log.info("provider ready", extra={"role": role, "provider": backend.info().provider,
                                                  "load_s": st["load_seconds"], "probe_s": st["probe_seconds"]})
            except Exception as exc:
                st["state"], st["error"] = "failed", f"{type(exc).__name__}: {exc}"
                log.error("provider failed to load", extra={"role": role, "error": st["error"]})

    def wait_loaded(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.ready()

    def role_ready(self, role: Role) -> bool:
        return self.status.get(role, {}).get("state") == "ready"

    def ready(self) -> bool:
        return bool(self.backends) and all(self.role_ready(s) for s in self.backends)

    def loading(self, role: Role) -> bool:
        return self.status.get(role, {}).get("state") in ("pending", "loading")

    # ------------------------------------------------------------------ sessions
    def voices(self) -> list[Voice]:
        """The TTS voices, or [] when there is no TTS or it cannot list them (blocking: may load)."""
        tts = self.backends.get("tts")
        try:
            return list(tts.voices()) if tts is not None else []
        except Exception:
            return []

    def session_pipeline(self) -> VoicePipeline:
        """A pipeline for one websocket session: its own history, the shared (gated) engines and
        the shared latency recorder."""
        p = self.pipeline
        g: dict[Role, Any] = {k: Gated(b, self.gates[k]) for k, b in self.backends.items()}
        sp = VoicePipeline(g.get("stt"), g.get("llm"), g.get("tts"), retriever=p.retriever,
                           embedder=g.get("embedding"), settings=p.settings, system_prompt=p.system_prompt,
                           language=p.language, voice=p.voice, history_turns=p.history_turns, top_k=p.top_k,
                           tools=p.tools, tool_choice=p.tool_choice)
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
    def _endpoint(self, role: Role, default: str) -> str:
        override = {"llm": "llm_endpoint", "stt": "stt_endpoint", "embedding": "embedding_endpoint"}.get(role)
        val = getattr(self.settings, override, "") if override else ""
        return val or default

    def provider_info(self, role: Role) -> dict[str, Any]:
        b = self.backends[role]
        st = self.status[role]
        try:
            inf = b.info()
            d = dataclasses.asdict(inf)
        except Exception as exc:
            d = {"provider": getattr(b, "provider", "?"), "endpoint": "", "is_mock": False, "loaded": False,
                 "ready": False, "fallback_count": 0, "last_error": f"info() failed: {exc}", "device": "?",
                 "warnings": []}
        d["endpoint"] = self._endpoint(role, d.get("endpoint", ""))
        d["ready"] = st["state"] == "ready"
        d["state"] = st["state"]
        d["last_error"] = d.get("last_error") or st["error"] or self.runtime_errors.get(role, "")
        d["load_seconds"] = st["load_seconds"]
        d["probe_seconds"] = st["probe_seconds"]
        d["queue"] = self.gates[role].snapshot()
        return d

    def rag_info(self) -> dict[str, Any]:
        s = self.settings
        path = Path(s.path(s.rag_index_path))
        r = self.pipeline.retriever
        chunks = len(r) if r is not None else None
        return {"enabled": s.rag_enabled, "index_path": str(path), "present": path.exists(),
                "active": r is not None, "chunks": chunks, "top_k": s.rag_top_k}

    def body(self) -> dict[str, Any]:
        providers = {role: self.provider_info(role) for role in self.backends}
        warnings: list[str] = []
        s = self.settings
        for role, p in providers.items():
            own = p.pop("warnings", []) or []
            if p.get("is_mock"):
                warnings.append(f"{role}: mock provider in use (profile {s.profile}); answers are not real")
            warnings.extend(w if w.startswith(f"{role}") else f"{role}: {w}" for w in own)
            asked = s.tts_backend if role == "tts" else s.backend
            if (asked == "cuda" and not p.get("is_mock") and p.get("loaded") and str(p.get("device", "")) == "cpu"
                    and not any("cpu" in w.lower() for w in own)):
                warnings.append(f"{role}: running on CPU although {'TTS_BACKEND' if role == 'tts' else 'BACKEND'}"
                                "=cuda was configured")
            if p["state"] == "failed":
                warnings.append(f"{role}: provider {p['provider']} failed to load: {self.status[role]['error']}")
        if "embedding" not in self.backends and self._embedding_error:
            warnings.append(f"embedding: not available: {self._embedding_error}")
        warnings.extend(self.pipeline.warnings)
        from ..doctor import gpu_warnings  # cached binding probes: no subprocess, cheap

        warnings.extend(gpu_warnings(s))
        return {"status": "ok", "ready": self.ready(), "profile": s.profile,
                "version": __version__, "uptime_s": round(time.time() - self.started, 1),
                "providers": providers, "rag": self.rag_info(), "sessions": len(self.sessions),
                "warnings": list(dict.fromkeys(warnings))}

