"""Prometheus metrics: values, bounded labels, and the one outcome per flow they count (cfgw.metrics)."""

from __future__ import annotations

import dataclasses
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.connection import ConnectionState
from mitmproxy.test import tflow, tutils
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

from cfgw import summary
from cfgw.flowinfo import FlowInfo
from cfgw.metrics import BUCKETS, MAX_MODELS, MODEL_RE, OTHER, Metrics, error_reason
from cfgw.routes import FAMILY_NAMES, Destination
from cfgw.summary import FlowRecord
from tests.flows import reverse_flow

MODEL = "openai/gpt-4o-mini"
OK = FlowRecord(
    method="POST",
    path="/v1/chat/completions",
    family="chat",
    route="compat",
    upstream="https://gateway.ai.cloudflare.com/v1/acc/gw/compat/chat/completions",
    status=200,
    outcome="ok",
    model=MODEL,
    stream=False,
    duration_ms=1200,
    ttfb_ms=300,
    bytes=100,
    cache=None,
    log_id=None,
    prompt_tokens=11,
    completion_tokens=7,
    total_tokens=18,
    cached_tokens=None,
    cache_creation_tokens=None,
    reasoning_tokens=None,
    gateway_code=None,
    error=None,
)
NO_TOKENS = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}


def record(**changes) -> FlowRecord:
    """A flow record as summary.flow_record makes it: a chat 200 with usage by default."""
    return dataclasses.replace(OK, **changes)


def scrape(m: Metrics) -> dict[tuple[str, frozenset], float]:
    """Every sample in the exposition, keyed by (sample name, labels)."""
    text = m.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def label_values(samples, label: str) -> set[str]:
    return {dict(labels)[label] for _, labels in samples if label in dict(labels)}


def test_counters_and_histograms_after_known_traffic():
    m = Metrics()
    for _ in range(3):
        m.observe(record())
    m.observe(record(status=429, **NO_TOKENS))
    m.observe(record(status=502, outcome="upstream_failed", ttfb_ms=None, error="server closed connection"))
    s = scrape(m)
    assert value(s, "cf_gateway_requests_total", family="chat", model=MODEL, status="200") == 3
    assert value(s, "cf_gateway_requests_total", family="chat", model=MODEL, status="429") == 1
    assert value(s, "cf_gateway_requests_total", family="chat", model=MODEL, status="502") == 1
    assert total(s, "cf_gateway_requests_total") == 5
    assert value(s, "cf_gateway_tokens_total", model=MODEL, kind="prompt") == 4 * 11
    assert value(s, "cf_gateway_tokens_total", model=MODEL, kind="completion") == 4 * 7
    assert value(s, "cf_gateway_upstream_errors_total", reason="upstream_closed") == 1
    assert total(s, "cf_gateway_client_disconnects_total") == 0
    assert value(s, "cf_gateway_request_duration_seconds_count", model=MODEL) == 5
    assert value(s, "cf_gateway_request_duration_seconds_sum", model=MODEL) == pytest.approx(6.0)
    assert value(s, "cf_gateway_request_duration_seconds_bucket", model=MODEL, le="1.0") == 0
    assert value(s, "cf_gateway_request_duration_seconds_bucket", model=MODEL, le="2.5") == 5
    # time to first byte only for flows that got an answer from upstream
    assert value(s, "cf_gateway_time_to_first_byte_seconds_count", model=MODEL) == 4
    assert value(s, "cf_gateway_time_to_first_byte_seconds_sum", model=MODEL) == pytest.approx(1.2)
    assert value(s, "cf_gateway_streams_in_flight") == 0


def test_token_kinds_of_every_family():
    m = Metrics()
    m.observe(record(family="messages", model="claude-4-5", cached_tokens=100, cache_creation_tokens=50))
    m.observe(record(family="responses", model="gpt-5", cached_tokens=64, reasoning_tokens=20))
    s = scrape(m)
    assert value(s, "cf_gateway_tokens_total", model="claude-4-5", kind="cached") == 100
    assert value(s, "cf_gateway_tokens_total", model="claude-4-5", kind="cache_creation") == 50
    assert value(s, "cf_gateway_tokens_total", model="gpt-5", kind="cached") == 64
    assert value(s, "cf_gateway_requests_total", family="messages", model="claude-4-5", status="200") == 1
    assert value(s, "cf_gateway_requests_total", family="responses", model="gpt-5", status="200") == 1
    assert label_values(s, "kind") == {"prompt", "completion", "cached", "cache_creation"}


# --- one outcome per flow: who failed is counted where the record says -------------------------------


def test_client_hang_up_is_a_client_disconnect_not_an_upstream_error():
    m = Metrics()
    m.observe(record(status=None, outcome="client_closed", ttfb_ms=None, error="peer closed connection"))
    m.observe(record(family="messages", status=200, outcome="client_closed", error="Client disconnected."))
    s = scrape(m)
    assert value(s, "cf_gateway_client_disconnects_total", family="chat") == 1
    assert value(s, "cf_gateway_client_disconnects_total", family="messages") == 1
    assert total(s, "cf_gateway_upstream_errors_total") == 0
    # a streamed flow the client left keeps the 200 it got; a buffered one got nothing
    assert total(s, "cf_gateway_requests_total") == 1


@pytest.mark.parametrize(
    ("outcome", "status", "disconnects", "upstream_errors"),
    [
        ("ok", 200, 0, 0),
        ("local", 401, 0, 0),
        ("failed", 413, 0, 0),  # the proxy refused the body: nobody upstream failed
        ("failed", 502, 0, 0),
        ("upstream_failed", 502, 0, 1),
        ("upstream_failed", 200, 0, 1),  # mid-stream
        ("client_closed", None, 1, 0),
    ],
)
def test_each_outcome_is_counted_once(outcome, status, disconnects, upstream_errors):
    m = Metrics()
    error = None if outcome in ("ok", "local") else "peer closed"
    m.observe(record(outcome=outcome, status=status, error=error))
    s = scrape(m)
    assert total(s, "cf_gateway_client_disconnects_total") == disconnects
    assert total(s, "cf_gateway_upstream_errors_total") == upstream_errors
    assert total(s, "cf_gateway_requests_total") == (1 if status is not None else 0)
    if status is not None:
        model = OTHER if status >= 300 else MODEL  # only a 2xx makes a model a label
        assert value(s, "cf_gateway_requests_total", family="chat", model=model, status=str(status)) == 1


def flow_with_error(message: str, client: ConnectionState, response: bool = False):
    """A forwarded chat flow at the error hook, as mitmproxy leaves it."""
    f = tflow.tflow(resp=response)
    if f.response is not None:
        f.response.raw_content = None  # the body never arrived whole
    f.error = tflow.terr(message)
    f.client_conn.state, f.server_conn.state = client, ConnectionState.CLOSED
    info = FlowInfo(
        family="chat",
        path="/v1/chat/completions",
        admitted=True,
        destination=Destination("compat", "/compat/chat/completions"),
        upstream="https://gateway.ai.cloudflare.com/v1/acc/gw/compat/chat/completions",
        model=MODEL,
    )
    return f, info


def test_http2_client_hang_up_from_flow_to_metrics():
    """Issue 10, finding 1: HTTP/2's "peer closed connection" was counted as upstream_closed."""
    m = Metrics()
    m.observe(summary.flow_record(*flow_with_error("peer closed connection", ConnectionState.CLOSED)))
    s = scrape(m)
    assert value(s, "cf_gateway_client_disconnects_total", family="chat") == 1
    assert total(s, "cf_gateway_upstream_errors_total") == 0
    assert total(s, "cf_gateway_requests_total") == 0


def test_buffered_body_broken_off_is_counted_as_the_502_the_client_got():
    """Issue 9, item 9: counted as a 200 before, though the client got mitmproxy's 502."""
    m = Metrics()
    msg = "HTTP/1 protocol error: peer closed connection without sending complete message body"
    m.observe(summary.flow_record(*flow_with_error(msg, ConnectionState.OPEN, response=True)))
    s = scrape(m)
    assert value(s, "cf_gateway_requests_total", family="chat", model=OTHER, status="502") == 1
    assert total(s, "cf_gateway_requests_total") == 1
    assert value(s, "cf_gateway_upstream_errors_total", reason="upstream_closed") == 1
    assert total(s, "cf_gateway_client_disconnects_total") == 0


def test_the_addon_counts_a_client_hang_up_once(addon):
    """Through the hooks: the error hook's record is what the metrics count."""
    f = reverse_flow(content=b'{"model": "openai/gpt-4o-mini", "messages": []}')
    addon.requestheaders(f)
    addon.request(f)
    assert f.response is None  # forwarded
    f.response = tutils.tresp(headers=[(b"content-type", b"text/event-stream")], content=b"")
    addon.responseheaders(f)
    record = f.response.stream
    assert callable(record)  # recording
    record(b"data: {}\n\n")
    f.error = tflow.terr("peer closed connection")
    f.client_conn.state, f.server_conn.state = ConnectionState.CLOSED, ConnectionState.CLOSED
    addon.error(f)
    s = scrape(addon.metrics)
    assert value(s, "cf_gateway_client_disconnects_total", family="chat") == 1
    assert total(s, "cf_gateway_upstream_errors_total") == 0
    assert value(s, "cf_gateway_requests_total", family="chat", model=MODEL, status="200") == 1
    assert total(s, "cf_gateway_requests_total") == 1
    assert value(s, "cf_gateway_streams_in_flight") == 0


# --- bounded labels --------------------------------------------------------------------------------


def test_streams_in_flight_gauge():
    m = Metrics()
    m.streams.inc()
    m.streams.inc()
    m.streams.dec()
    assert value(scrape(m), "cf_gateway_streams_in_flight") == 1


def test_no_created_series_and_text_format():
    m = Metrics()
    m.observe(record())
    text = m.render().decode()
    assert "_created" not in text
    assert m.content_type.startswith("text/plain")
    assert "# HELP cf_gateway_requests_total" in text and "# TYPE cf_gateway_requests_total counter" in text
    assert "# TYPE cf_gateway_client_disconnects_total counter" in text


def test_instances_do_not_share_counts():
    a, b = Metrics(), Metrics()
    a.observe(record())
    assert value(scrape(a), "cf_gateway_requests_total", family="chat", model=MODEL, status="200") == 1
    assert value(scrape(b), "cf_gateway_requests_total", family="chat", model=MODEL, status="200") == 0


@pytest.mark.parametrize(
    ("family", "label"),
    [
        ("chat", "chat"),
        ("messages", "messages"),
        ("responses", "responses"),
        ("other", "other"),
        ("gemini", OTHER),  # a family not in the fixed set never becomes a label
        ("chat\n", OTHER),
        ("", OTHER),
    ],
)
def test_family_label_comes_from_the_fixed_set(family, label):
    m = Metrics()
    m.observe(record(family=family))
    m.observe(record(family=family, status=None, outcome="client_closed", error="x"))
    s = scrape(m)
    assert value(s, "cf_gateway_requests_total", family=label, model=MODEL, status="200") == 1
    assert value(s, "cf_gateway_client_disconnects_total", family=label) == 1
    assert label_values(s, "family") == {label}
    assert label_values(s, "family") <= set(FAMILY_NAMES)


@pytest.mark.parametrize(
    ("model", "status", "label"),
    [
        (MODEL, 200, MODEL),
        ("workers-ai/@cf/meta/llama-3.1-8b-instruct", 200, "workers-ai/@cf/meta/llama-3.1-8b-instruct"),
        (None, 200, OTHER),
        ("", 200, OTHER),
        ("openai/never-answered", 404, OTHER),
        ("openai/failed", None, OTHER),
        ("openai/" + "x" * 74, 200, OTHER),  # 81 characters: one too many
        ("openai/" + "x" * 73, 200, "openai/" + "x" * 73),
        ("openai/with space", 200, OTHER),
        ('openai/"quoted"', 200, OTHER),
        ("openai/ünïcode", 200, OTHER),
        ("openai/new\nline", 200, OTHER),
    ],
)
def test_model_label(model, status, label):
    assert Metrics().model_label(model, status) == label


def test_a_model_known_from_a_success_keeps_its_label_on_errors():
    m = Metrics()
    assert m.model_label(MODEL, 500) == OTHER
    assert m.model_label(MODEL, 200) == MODEL
    assert m.model_label(MODEL, 500) == MODEL
    assert m.model_label(MODEL, None) == MODEL


def random_name(rng: random.Random) -> str:
    """Half plausible ('provider/model'), half hostile (long, quotes, spaces, newlines, non-ASCII)."""
    if rng.random() < 0.5:
        plain = string.ascii_lowercase + string.digits + "-._"
        return (
            "".join(rng.choice(plain) for _ in range(rng.randint(1, 20)))
            + "/"
            + "".join(rng.choice(plain) for _ in range(rng.randint(1, 40)))
        )
    hostile = string.ascii_letters + string.digits + "-_./@: \"'\\{}é\n"
    return "".join(rng.choice(hostile) for _ in range(rng.randint(1, 300)))


@pytest.mark.parametrize("status", [200, 400, 404, None])
def test_labels_stay_bounded_after_a_thousand_random_models_and_families(status):
    m = Metrics()
    rng = random.Random(status or 0)
    for _ in range(1000):
        outcome = "ok" if status else "upstream_failed"
        m.observe(
            record(
                model=random_name(rng),
                family=random_name(rng) if rng.random() < 0.5 else rng.choice(FAMILY_NAMES),
                status=status,
                outcome=outcome,
                error=None if status else "timed out",
            )
        )
    s = scrape(m)
    models = label_values(s, "model")
    if status == 200:
        assert len(models) == MAX_MODELS + 1 and OTHER in models
    else:
        assert models == {OTHER}  # nothing the gateway did not answer successfully gets a label
    assert all(len(label) <= 80 for label in models)
    assert label_values(s, "family") <= set(FAMILY_NAMES)
    assert label_values(s, "reason") <= {"timeout"}
    assert len(m.render()) < 1_000_000
    # folded, not dropped: every flow is still counted
    assert total(s, "cf_gateway_requests_total") == (1000 if status else 0)
    assert total(s, "cf_gateway_request_duration_seconds_count") == 1000
    assert total(s, "cf_gateway_upstream_errors_total") == (0 if status else 1000)


def test_status_label_is_the_number():
    m = Metrics()
    m.observe(record(status=599))
    assert value(scrape(m), "cf_gateway_requests_total", family="chat", model=OTHER, status="599") == 1


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        # what mitmproxy 12 puts in flow.error.msg when the upstream fails
        ("[Errno 111] Connect call failed ('127.0.0.1', 1)", "connect"),
        ("Multiple exceptions: [Errno 111] Connect call failed ('::1', 1, 0, 0)", "connect"),
        ("[Errno -2] Name or service not known", "connect"),
        ("[Errno -3] Temporary failure in name resolution", "connect"),
        ("[Errno 113] No route to host", "connect"),
        ("Connection killed: refused by policy", "connect"),
        ("[Errno 110] Connection timed out", "timeout"),
        ("TLS handshake failed: certificate verify failed", "tls"),
        ("server closed connection", "upstream_closed"),
        (
            "HTTP/1 protocol error: peer closed connection without sending complete message body: "
            "incomplete chunked read",
            "upstream_closed",
        ),
        ("peer closed connection", "upstream_closed"),
        ("[Errno 104] Connection reset by peer", "upstream_closed"),
        ("Cannot parse HTTP response: bad status line", OTHER),
        ("something new", OTHER),
    ],
)
def test_error_reasons_fold_into_a_few_values(message, reason):
    assert error_reason(message) == reason


# --- the same exposition as prometheus_client's own Counter and Histogram ------------------------------


def test_a_fresh_instance_shows_every_family_and_only_the_gauge_has_a_sample():
    families = exposition(Metrics())
    assert [(name, kind) for name, kind, _, _ in families] == [
        ("cf_gateway_requests", "counter"),
        ("cf_gateway_request_duration_seconds", "histogram"),
        ("cf_gateway_time_to_first_byte_seconds", "histogram"),
        ("cf_gateway_tokens", "counter"),
        ("cf_gateway_upstream_errors", "counter"),
        ("cf_gateway_client_disconnects", "counter"),
        ("cf_gateway_streams_in_flight", "gauge"),
    ]
    assert [samples for *_, samples in families] == [[]] * 6 + [[("cf_gateway_streams_in_flight", {}, 0.0)]]
    assert b"\ncf_gateway_streams_in_flight 0.0\n" in Metrics().render()


@pytest.mark.parametrize(
    ("duration_ms", "le"),
    [
        (0, "0.005"),
        (5, "0.005"),
        (6, "0.01"),
        (1000, "1.0"),
        (1001, "2.5"),
        (120_000, "120.0"),
        (120_001, "+Inf"),
    ],
)
def test_a_duration_on_a_bucket_bound_counts_in_that_bucket(duration_ms, le):
    m = Metrics()
    m.observe(record(duration_ms=duration_ms))
    buckets = {
        dict(labels)["le"]: v
        for (name, labels), v in scrape(m).items()
        if name == "cf_gateway_request_duration_seconds_bucket"
    }
    assert " ".join(buckets) == "0.005 0.01 0.025 0.05 0.1 0.25 0.5 1.0 2.5 5.0 10.0 30.0 60.0 120.0 +Inf"
    first = list(buckets).index(le)
    assert list(buckets.values()) == [0.0] * first + [1.0] * (len(buckets) - first)
    assert value(scrape(m), "cf_gateway_request_duration_seconds_sum", model=MODEL) == duration_ms / 1000


def test_counts_print_as_floats():
    m = Metrics()
    m.observe(record())
    m.streams.inc()
    text = m.render().decode()
    assert 'cf_gateway_requests_total{family="chat",model="openai/gpt-4o-mini",status="200"} 1.0\n' in text
    assert 'cf_gateway_tokens_total{kind="prompt",model="openai/gpt-4o-mini"} 11.0\n' in text
    assert 'cf_gateway_request_duration_seconds_count{model="openai/gpt-4o-mini"} 1.0\n' in text
    assert "cf_gateway_streams_in_flight 1.0\n" in text


def exposition(m: Metrics | ReferenceMetrics) -> list[tuple[str, str, str, list[tuple[str, dict, float]]]]:
    """The families in order, each with its type, help and samples (name, labels, value) in order."""
    return [
        (f.name, f.type, f.documentation, [(s.name, s.labels, s.value) for s in f.samples])
        for f in text_string_to_metric_families(m.render().decode())
    ]


ON_BOUNDS_MS = [round(b * 1000) + d for b in BUCKETS for d in (-1, 0, 1)]
"""Durations on, just under and just over every bucket bound."""


MODELS = [MODEL, "claude-4-5", "gpt-5", "openai/" + "x" * 73, "openai/" + "x" * 74]
MODELS += ["a b", 'q"', "ü", "\n", ""]  # never labels
ERRORS = ["server closed connection", "[Errno 110] Connection timed out", "TLS handshake failed", "refused"]
millis = st.one_of(st.none(), st.sampled_from(ON_BOUNDS_MS), st.integers(0, 10**7))
tokens = st.one_of(st.none(), st.just(0), st.integers(0, 2**40))
records = st.builds(
    record,
    family=st.one_of(st.sampled_from([*FAMILY_NAMES, "gemini", "", "chat\n"]), st.text(max_size=5)),
    model=st.one_of(st.none(), st.sampled_from(MODELS), st.text(max_size=90)),
    status=st.one_of(st.none(), st.sampled_from([200, 204, 299, 300, 400, 429, 502]), st.integers(100, 599)),
    outcome=st.sampled_from(["ok", "local", "failed", "upstream_failed", "client_closed"]),
    error=st.one_of(st.none(), st.just(""), st.sampled_from(ERRORS), st.text(max_size=20)),
    duration_ms=millis,
    ttfb_ms=millis,
    prompt_tokens=tokens,
    completion_tokens=tokens,
    cached_tokens=tokens,
    cache_creation_tokens=tokens,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(records, st.sampled_from(["inc", "dec"])), max_size=40))
def test_exposition_equals_prometheus_clients_own(events):
    m, reference = Metrics(), ReferenceMetrics()
    for event in events:
        for metrics in (m, reference):
            if event == "inc":
                metrics.streams.inc()
            elif event == "dec":
                metrics.streams.dec()
            else:
                metrics.observe(event)
    assert exposition(m) == exposition(reference)
    assert m.render() == reference.render()
    assert m.models == reference.models


# The *_created series double the output and say nothing a scraper needs.
disable_created_metrics()


class ReferenceMetrics:
    """cfgw.metrics.Metrics as it was on prometheus_client's Counter, Histogram and Gauge (issue 13)."""

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
