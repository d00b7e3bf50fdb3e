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

from cfgw.routes import FAMILY_NAMES
from cfgw.summary import FlowRecord

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
    """Fold mitmproxy's error texts for upstream failures into a few stable label values.

    Order matters: "server closed connection" mentions a connection but is not a
    connect failure. Whether the upstream failed at all is summary.outcome_of's call.
    """
    m = message.lower()
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
            "Requests answered, by API family, model and the HTTP status the client got.",
            ["family", "model", "status"],
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
            "Flows whose upstream (the gateway) failed, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.client_disconnects = Counter(
            "cf_gateway_client_disconnects",
            "Flows the client hung up on before its answer was complete, by API family.",
            ["family"],
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

    def observe(self, r: FlowRecord) -> None:
        model = self.model_label(r.model, r.status)
        family = r.family if r.family in FAMILY_NAMES else OTHER
        if r.status is not None:
            self.child(self.requests, family, model, str(r.status)).inc()
        if r.outcome == "upstream_failed" and r.error:
            self.child(self.upstream_errors, error_reason(r.error)).inc()
        elif r.outcome == "client_closed":
            self.child(self.client_disconnects, family).inc()
        if r.duration_ms is not None:
            self.child(self.duration, model).observe(r.duration_ms / 1000)
        if r.ttfb_ms is not None and r.status is not None:
            self.child(self.ttfb, model).observe(r.ttfb_ms / 1000)
        for kind, n in (
            ("prompt", r.prompt_tokens),
            ("completion", r.completion_tokens),
            ("cached", r.cached_tokens),
            ("cache_creation", r.cache_creation_tokens),
        ):
            if n:
                self.child(self.tokens, model, kind).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
