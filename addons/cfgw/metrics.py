"""Prometheus metrics, kept in a registry of our own and served at GET /metrics.

Label values are bounded so a client cannot grow memory by sending random
model names: a model gets its own label only once the gateway has answered it
with a 2xx, only while it is short and plain, and only up to MAX_MODELS;
everything else counts as "other".
"""

from __future__ import annotations

import re

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The *_created series double the output and say nothing a scraper needs.
disable_created_metrics()

MAX_MODELS = 100
MODEL_RE = re.compile(r"[A-Za-z0-9@._:/-]{1,80}")
OTHER = "other"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


_CONNECT_FAILURES = (
    "connect call failed",  # asyncio: [Errno 111] Connect call failed ('127.0.0.1', 1)
    "refused",
    "cannot connect",
    "connection killed",
    "name or service not known",
    "name resolution",
    "nodename nor servname",
    "resolve",
    "no route to host",
    "network is unreachable",
    "cannot assign requested address",
)
_UPSTREAM_CLOSED = ("closed", "reset", "eof", "incomplete", "protocol error", "cancelled", "disconnect")


def error_reason(message: str) -> str:
    """Fold mitmproxy's error texts into a few stable label values.

    Order matters: "server closed connection" mentions a connection but is not a
    connect failure, and "Client disconnected." is not the upstream's fault.
    """
    m = message.lower()
    if m.startswith("client disconnected"):
        return "client_disconnected"
    if "tls" in m or "ssl" in m or "certificate" in m:
        return "tls"
    if "timeout" in m or "timed out" in m:
        return "timeout"
    if any(s in m for s in _CONNECT_FAILURES):
        return "connect"
    if any(s in m for s in _UPSTREAM_CLOSED):
        return "upstream_closed"
    return OTHER


class Metrics:
    """The proxy's counters; one instance per addon, observed once per finished flow."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.models: set[str] = set()
        self._children: dict[tuple, object] = {}  # bounded like the label values themselves
        self.requests = Counter(
            "cf_gateway_requests",
            "Requests answered, by model and HTTP status.",
            ["model", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "cf_gateway_request_duration_seconds",
            "Time from request start to last response byte.",
            ["model"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "cf_gateway_time_to_first_byte_seconds",
            "Time from the request being read to the first response (body) byte from upstream.",
            ["model"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "cf_gateway_tokens",
            "Tokens reported in responses' usage, by model and kind.",
            ["model", "kind"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "cf_gateway_upstream_errors",
            "Flows that failed, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.streams = Gauge(
            "cf_gateway_streams_in_flight",
            "Event streams being relayed right now.",
            registry=self.registry,
        )

    def model_label(self, model: str | None, status: int | None) -> str:
        if not model:
            return OTHER
        if model in self.models:
            return model
        if (
            status is not None
            and 200 <= status < 300
            and len(self.models) < MAX_MODELS
            and MODEL_RE.fullmatch(model)
        ):
            self.models.add(model)
            return model
        return OTHER

    def child(self, metric, *labels: str):
        """metric.labels(*labels), looked up once: labels() validates and locks on every call."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe(self, record: dict) -> None:
        status = record["status"]
        model = self.model_label(record["model"], status)
        if status is not None:
            self.child(self.requests, model, str(status)).inc()
        if record["error"]:
            self.child(self.upstream_errors, error_reason(record["error"])).inc()
        if record["duration_ms"] is not None:
            self.child(self.duration, model).observe(record["duration_ms"] / 1000)
        if record["ttfb_ms"] is not None and status is not None:
            self.child(self.ttfb, model).observe(record["ttfb_ms"] / 1000)
        for kind in ("prompt", "completion"):
            n = record[f"{kind}_tokens"]
            if n:
                self.child(self.tokens, model, kind).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
