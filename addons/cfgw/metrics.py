"""Prometheus metrics (``prometheus_client``) with bounded labels.

A model gets a label of its own only when an answer names it, and at most
MAX_MODELS do; the rest count as ``other``, so no client can grow memory with names.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MAX_MODELS = 100
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.models: set[str] = set()
        r = self.registry
        self.requests = Counter(
            "cf_gateway_requests",
            "Requests, by family, model and status",
            ["family", "model", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "cf_gateway_request_duration_seconds", "Request start to last byte", ["model"], registry=r
        )
        self.tokens = Counter(
            "cf_gateway_tokens", "Tokens reported by answers", ["model", "kind"], registry=r
        )
        self.upstream_errors = Counter(
            "cf_gateway_upstream_errors", "Requests that failed upstream", ["family"], registry=r
        )
        self.client_disconnects = Counter(
            "cf_gateway_client_disconnects", "Clients that left before their answer", ["family"], registry=r
        )
        self.streams = Gauge("cf_gateway_streams_in_flight", "Event streams being relayed", registry=r)
        self.connections = Gauge("cf_gateway_client_connections", "Open client connections", registry=r)
        self.refused_connections = Counter(
            "cf_gateway_refused_connections", "Connections refused over cf_max_connections", registry=r
        )

    def label(self, model: str | None) -> str:
        if not model:
            return "none"
        if model in self.models or len(self.models) < MAX_MODELS:
            self.models.add(model)
            return model
        return "other"

    def observe(self, record: dict) -> None:
        """Count one finished request (the same record as its log line)."""
        model = self.label(record.get("answer_model"))
        self.requests.labels(record["family"], model, str(record["status"] or "none")).inc()
        self.duration.labels(model).observe(record["duration_ms"] / 1000)
        for kind in ("input", "output", "cached", "cache_creation"):
            if f"{kind}_tokens" in record:
                self.tokens.labels(model, kind).inc(record[f"{kind}_tokens"])
        failures = {"upstream_failed": self.upstream_errors, "client_closed": self.client_disconnects}
        if record["outcome"] in failures:
            failures[record["outcome"]].labels(record["family"]).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
