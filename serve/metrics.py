"""Prometheus metrics, one registry per app (no module-level state), labelled by adapter."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.replica: str | None = None  # set by a Ray Serve replica: every sample then carries replica="<id>"
        r = self.registry
        self.requests = Counter("loradock_requests", "Inference requests by model and outcome.",
                                ["model", "endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("loradock_prompt_tokens", "Prompt tokens by model.", ["model"], registry=r)
        self.generation_tokens = Counter("loradock_generation_tokens", "Generated tokens by model.", ["model"],
                                         registry=r)
        self.latency = Histogram("loradock_request_latency_seconds", "End-to-end request latency by model.",
                                 ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("loradock_time_to_first_token_seconds", "Time to first token by model.", ["model"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.running = Gauge("loradock_requests_running", "Requests producing tokens.", registry=r)
        self.waiting = Gauge("loradock_requests_waiting", "Admitted requests with no token yet.", registry=r)
        self.rejected = Counter("loradock_requests_rejected", "Requests refused by admission control.",
                                ["reason"], registry=r)
        self.resident = Gauge("loradock_adapters_resident", "Adapters resident in the engine.", registry=r)
        self.adapters = Gauge("loradock_adapters_servable", "Valid adapters in the store.", registry=r)
        self.adapter_loads = Counter("loradock_adapter_loads", "Adapter loads into the engine.", ["model"],
                                     registry=r)
        self.engine_restarts = Counter("loradock_engine_restarts", "Times the engine was rebuilt after its core "
                                       "died.", registry=r)
        self.versions_open = Gauge("loradock_adapter_versions_open", "Adapter versions held by requests or "
                                   "resident (old ones leave once drained).", registry=r)
        self.store_invalid = Gauge("loradock_store_invalid", "Store entries refused by validation.", registry=r)

    def render(self) -> bytes:
        if self.replica is None:
            return generate_latest(self.registry)
        return generate_latest(_Labelled(self.registry, "replica", self.replica))


class _Labelled:
    """A registry's metrics with one more label on every sample."""

    def __init__(self, registry: CollectorRegistry, label: str, value: str) -> None:
        self.registry, self.label, self.value = registry, label, value

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [s._replace(labels={**s.labels, self.label: self.value}) for s in family.samples]
            yield out
