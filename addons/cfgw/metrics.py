"""Prometheus metrics, kept in a registry of our own and served at GET /metrics.

Label values are bounded so a client cannot grow memory by sending random
model names: a model gets its own label only once the gateway has answered it
with a 2xx, only while it is short and plain, and only up to MAX_MODELS;
everything else counts as "other".

Counting is plain arithmetic on dicts, not prometheus_client's Counter and
Histogram: observe() runs once per flow on mitmproxy's event loop, and their
locks and value objects cost several microseconds a flow. /metrics is rendered
on that same thread, so nothing here needs a lock; a collector turns the
dicts into metric families (no *_created series) when scraped.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from cfgw.routes import FAMILY_NAMES
from cfgw.summary import FlowRecord

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


_BOUNDS = tuple(float(b) for b in BUCKETS)
_LE = (*(floatToGoString(b) for b in _BOUNDS), "+Inf")
_SUM = len(_LE)
"""A histogram is a list: one count per bucket of _LE (not cumulative), then the sum of what it saw."""


class StreamsInFlight:
    """A gauge with inc() and dec() like prometheus_client's, minus the lock the event loop never needs."""

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


def _count(counts: dict[tuple[str, ...], float], labels: tuple[str, ...], n: float = 1) -> None:
    counts[labels] = counts.get(labels, 0.0) + n


def _observe(histograms: dict[str, list[float]], model: str, seconds: float) -> None:
    counts = histograms.get(model)
    if counts is None:
        counts = histograms[model] = [0.0] * (_SUM + 1)
    counts[bisect_left(_BOUNDS, seconds)] += 1  # the first bucket with seconds <= its bound
    counts[_SUM] += seconds


def _counter_family(
    name: str, documentation: str, labels: list[str], counts: dict[tuple[str, ...], float]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, n in counts.items():
        family.add_metric(values, n)
    return family


def _histogram_family(
    name: str, documentation: str, histograms: dict[str, list[float]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["model"])
    for model, counts in histograms.items():
        cumulative, seen = [], 0.0
        for le, n in zip(_LE, counts[:_SUM], strict=True):
            seen += n
            cumulative.append((le, seen))
        family.add_metric([model], cumulative, counts[_SUM])
    return family


class Metrics:
    """The proxy's counters; one instance per addon, observed once per finished flow.

    It is its own prometheus_client collector: render() asks the registry, the
    registry asks collect(), and collect() reads the counts as they are.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.models: set[str] = set()
        self.requests: dict[tuple[str, ...], float] = {}  # (family, model, status)
        self.tokens: dict[tuple[str, ...], float] = {}  # (model, kind)
        self.upstream_errors: dict[tuple[str, ...], float] = {}  # (reason,)
        self.client_disconnects: dict[tuple[str, ...], float] = {}  # (family,)
        self.duration: dict[str, list[float]] = {}  # model -> histogram
        self.ttfb: dict[str, list[float]] = {}
        self.streams = StreamsInFlight()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

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

    def observe(self, r: FlowRecord) -> None:
        model = self.model_label(r.model, r.status)
        family = r.family if r.family in FAMILY_NAMES else OTHER
        if r.status is not None:
            _count(self.requests, (family, model, str(r.status)))
        if r.outcome == "upstream_failed" and r.error:
            _count(self.upstream_errors, (error_reason(r.error),))
        elif r.outcome == "client_closed":
            _count(self.client_disconnects, (family,))
        if r.duration_ms is not None:
            _observe(self.duration, model, r.duration_ms / 1000)
        if r.ttfb_ms is not None and r.status is not None:
            _observe(self.ttfb, model, r.ttfb_ms / 1000)
        for kind, n in (
            ("prompt", r.prompt_tokens),
            ("completion", r.completion_tokens),
            ("cached", r.cached_tokens),
            ("cache_creation", r.cache_creation_tokens),
        ):
            if n:
                _count(self.tokens, (model, kind), n)

    def collect(self) -> Iterator[Metric]:
        """The metric families in a fixed order; a labelled one has no series before its first count."""
        yield _counter_family(
            "cf_gateway_requests",
            "Requests answered, by API family, model and the HTTP status the client got.",
            ["family", "model", "status"],
            self.requests,
        )
        yield _histogram_family(
            "cf_gateway_request_duration_seconds",
            "Time from request start to last response byte.",
            self.duration,
        )
        yield _histogram_family(
            "cf_gateway_time_to_first_byte_seconds",
            "Time from the request being read to the first response (body) byte from upstream.",
            self.ttfb,
        )
        yield _counter_family(
            "cf_gateway_tokens",
            "Tokens reported in responses' usage, by model and kind.",
            ["model", "kind"],
            self.tokens,
        )
        yield _counter_family(
            "cf_gateway_upstream_errors",
            "Flows whose upstream (the gateway) failed, by reason.",
            ["reason"],
            self.upstream_errors,
        )
        yield _counter_family(
            "cf_gateway_client_disconnects",
            "Flows the client hung up on before its answer was complete, by API family.",
            ["family"],
            self.client_disconnects,
        )
        yield GaugeMetricFamily(
            "cf_gateway_streams_in_flight", "Event streams being relayed right now.", value=self.streams.value
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
