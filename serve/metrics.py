"""Prometheus metrics, one registry per app (no module-level state), labelled by adapter."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        return generate_latest(self.registry)
