"""Prometheus metrics: values, bounded labels and error reasons (cfgw.metrics)."""

from __future__ import annotations

import random
import string

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cfgw import summary
from cfgw.metrics import MAX_MODELS, OTHER, Metrics, error_reason

MODEL = "openai/gpt-4o-mini"


def record(**changes) -> dict:
    """A flow record as summary.flow_record makes it: a 200 with usage by default."""
    base = dict.fromkeys(summary.FIELDS)
    base.update(
        method="POST",
        path="/v1/chat/completions",
        status=200,
        model=MODEL,
        stream=False,
        duration_ms=1200,
        ttfb_ms=300,
        prompt_tokens=11,
        completion_tokens=7,
        total_tokens=18,
    )
    base.update(changes)
    return base


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


def model_labels(samples) -> set[str]:
    return {dict(labels)["model"] for _, labels in samples if "model" in dict(labels)}


def test_counters_and_histograms_after_known_traffic():
    m = Metrics()
    for _ in range(3):
        m.observe(record())
    m.observe(record(status=429, prompt_tokens=None, completion_tokens=None, total_tokens=None))
    m.observe(record(status=None, ttfb_ms=None, error="server closed connection", prompt_tokens=None))
    s = scrape(m)
    assert value(s, "cf_gateway_requests_total", model=MODEL, status="200") == 3
    assert value(s, "cf_gateway_requests_total", model=MODEL, status="429") == 1
    assert sum(v for (n, _), v in s.items() if n == "cf_gateway_requests_total") == 4  # failed: no status
    assert value(s, "cf_gateway_tokens_total", model=MODEL, kind="prompt") == 33
    assert value(s, "cf_gateway_tokens_total", model=MODEL, kind="completion") == 4 * 7
    assert value(s, "cf_gateway_upstream_errors_total", reason="upstream_closed") == 1
    assert value(s, "cf_gateway_request_duration_seconds_count", model=MODEL) == 5
    assert value(s, "cf_gateway_request_duration_seconds_sum", model=MODEL) == pytest.approx(6.0)
    assert value(s, "cf_gateway_request_duration_seconds_bucket", model=MODEL, le="1.0") == 0
    assert value(s, "cf_gateway_request_duration_seconds_bucket", model=MODEL, le="2.5") == 5
    # time to first byte only for flows that got an answer
    assert value(s, "cf_gateway_time_to_first_byte_seconds_count", model=MODEL) == 4
    assert value(s, "cf_gateway_time_to_first_byte_seconds_sum", model=MODEL) == pytest.approx(1.2)
    assert value(s, "cf_gateway_streams_in_flight") == 0


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


def test_instances_do_not_share_counts():
    a, b = Metrics(), Metrics()
    a.observe(record())
    assert value(scrape(a), "cf_gateway_requests_total", model=MODEL, status="200") == 1
    assert value(scrape(b), "cf_gateway_requests_total", model=MODEL, status="200") == 0


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
def test_labels_stay_bounded_after_a_thousand_random_models(status):
    m = Metrics()
    rng = random.Random(status or 0)
    for _ in range(1000):
        m.observe(record(model=random_name(rng), status=status, error=None if status else "timed out"))
    s = scrape(m)
    labels = model_labels(s)
    if status == 200:
        assert len(labels) == MAX_MODELS + 1 and OTHER in labels
    else:
        assert labels == {OTHER}  # nothing the gateway did not answer successfully gets a label
    assert all(len(label) <= 80 for label in labels)
    assert len(m.render()) < 1_000_000
    # folded, not dropped: every flow is still counted
    counted = sum(v for (n, _), v in s.items() if n == "cf_gateway_requests_total")
    assert counted == (1000 if status else 0)
    durations = sum(v for (n, _), v in s.items() if n == "cf_gateway_request_duration_seconds_count")
    assert durations == 1000


def test_status_label_is_the_number():
    m = Metrics()
    m.observe(record(status=599))
    assert value(scrape(m), "cf_gateway_requests_total", model=OTHER, status="599") == 1


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        # what mitmproxy 12 puts in flow.error.msg
        ("[Errno 111] Connect call failed ('127.0.0.1', 1)", "connect"),
        ("Multiple exceptions: [Errno 111] Connect call failed ('::1', 1, 0, 0)", "connect"),
        ("[Errno -2] Name or service not known", "connect"),
        ("[Errno -3] Temporary failure in name resolution", "connect"),
        ("[Errno 113] No route to host", "connect"),
        ("Connection killed: refused by policy", "connect"),
        ("[Errno 110] Connection timed out", "timeout"),
        ("TLS handshake failed: certificate verify failed", "tls"),
        ("Client disconnected.", "client_disconnected"),
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
