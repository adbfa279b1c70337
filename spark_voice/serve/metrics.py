"""Prometheus metrics (prometheus-client, imported when the app is built) and the metered latency
recorder that feeds per-stage histograms from the same numbers /v1/latency reports."""

from __future__ import annotations

from typing import Any, Callable

from ..events import LatencyRecorder

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)


class MeteredLatencyRecorder(LatencyRecorder):
    """A LatencyRecorder that also reports every recorded turn to a callback (histograms)."""

    def __init__(self, window: int, on_record: Callable[[dict[str, float]], None] | None = None) -> None:
        super().__init__(window)
        self.on_record = on_record

    def record(self, request_id: str, latencies: dict[str, float]) -> None:
        super().record(request_id, latencies)
        if self.on_record is not None:
            try:
                self.on_record(latencies)
            except Exception:  # metrics never break a turn
                pass


class Metrics:
    """Counters/histograms in a registry of their own (several apps may live in one process)."""

    def __init__(self, state: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("spark_voice_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram("spark_voice_request_duration_seconds",
                                         "HTTP request time until the response ends", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage_latency = Histogram("spark_voice_latency_seconds",
                                       "Turn latencies (partial, final, first_token, tts_start, end_to_end)",
                                       ["source", "metric"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ws_sessions = Counter("spark_voice_ws_sessions", "Websocket voice sessions opened",
                                   registry=self.registry)
        self.registry.register(_StateCollector(state))

    def observer(self, source: str) -> Callable[[dict[str, float]], None]:
        def observe(lat: dict[str, float]) -> None:
            for metric, ms in lat.items():
                self.stage_latency.labels(source, metric).observe(ms / 1000.0)
        return observe

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StateCollector:
    """Gauges read at scrape time: queue depth, running calls, refusals, fallbacks, readiness."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        depth = GaugeMetricFamily("spark_voice_queue_depth", "Requests waiting for an engine", labels=["engine"])
        active = GaugeMetricFamily("spark_voice_engine_active", "Calls running on an engine", labels=["engine"])
        rejected = CounterMetricFamily("spark_voice_engine_rejected", "Requests refused (429) per engine",
                                       labels=["engine"])
        for name, gate in self.state.gates.items():
            depth.add_metric([name], gate.waiting)
            active.add_metric([name], gate.active)
            rejected.add_metric([name], gate.rejected)
        fallbacks = CounterMetricFamily("spark_voice_fallbacks", "Times a provider fell back", labels=["role"])
        ready = GaugeMetricFamily("spark_voice_provider_ready", "1 when the provider passed its probe",
                                  labels=["role", "provider"])
        mock = GaugeMetricFamily("spark_voice_provider_mock", "1 when the provider is a mock",
                                 labels=["role", "provider"])
        for role, backend in self.state.backends.items():
            try:
                inf = backend.info()
            except Exception:
                continue
            fallbacks.add_metric([role], inf.fallback_count)
            ready.add_metric([role, inf.provider], 1.0 if self.state.role_ready(role) else 0.0)
            mock.add_metric([role, inf.provider], 1.0 if inf.is_mock else 0.0)
        sessions = GaugeMetricFamily("spark_voice_ws_sessions_open", "Open websocket voice sessions")
        sessions.add_metric([], len(self.state.sessions))
        yield from (depth, active, rejected, fallbacks, ready, mock, sessions)
