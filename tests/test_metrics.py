"""Prometheus metrics: counts from the same record as the log line, with bounded model labels."""

from __future__ import annotations

from cfgw import metrics
from cfgw.metrics import Metrics


def record(**fields) -> dict:
    base = {"family": "chat", "status": 200, "duration_ms": 250, "outcome": "ok", "model": None,
            "answer_model": None}  # fmt: skip
    return {**base, **fields}


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_request_is_counted_with_its_tokens():
    m = Metrics()
    m.observe(record(answer_model="gpt-4o", input_tokens=10, output_tokens=5, cached_tokens=3))
    assert value(m, "cf_gateway_requests_total", family="chat", model="gpt-4o", status="200") == 1
    assert value(m, "cf_gateway_tokens_total", model="gpt-4o", kind="input") == 10
    assert value(m, "cf_gateway_tokens_total", model="gpt-4o", kind="cached") == 3
    assert value(m, "cf_gateway_request_duration_seconds_sum", model="gpt-4o") == 0.25


def test_models_come_only_from_answers():
    m = Metrics()
    m.observe(record(model="whatever-the-client-typed", status=404, outcome="local"))
    assert b"whatever-the-client-typed" not in m.text()
    assert value(m, "cf_gateway_requests_total", family="chat", model="none", status="404") == 1


def test_junk_models_cannot_take_more_than_max_models_labels():
    m = Metrics()
    for i in range(metrics.MAX_MODELS * 3):
        m.observe(record(answer_model=f"junk-{i}"))
    assert len(m.models) == metrics.MAX_MODELS
    assert (
        value(m, "cf_gateway_requests_total", family="chat", model="other", status="200")
        == 2 * metrics.MAX_MODELS
    )
    assert f'model="junk-{metrics.MAX_MODELS}"'.encode() not in m.text()


def test_a_known_model_keeps_its_label_when_the_slots_are_full():
    m = Metrics()
    for i in range(metrics.MAX_MODELS):
        m.observe(record(answer_model=f"model-{i}"))
    m.observe(record(answer_model="model-0"))
    assert value(m, "cf_gateway_requests_total", family="chat", model="model-0", status="200") == 2


def test_failures_and_disconnects_are_counted_by_family():
    m = Metrics()
    m.observe(record(family="messages", status=None, outcome="upstream_failed"))
    m.observe(record(family="responses", status=None, outcome="client_closed"))
    assert value(m, "cf_gateway_upstream_errors_total", family="messages") == 1
    assert value(m, "cf_gateway_client_disconnects_total", family="responses") == 1
    assert value(m, "cf_gateway_requests_total", family="messages", model="none", status="none") == 1


def test_text_is_prometheus_exposition():
    text = Metrics().text().decode()
    assert "# TYPE cf_gateway_requests_total counter" in text
    assert "cf_gateway_streams_in_flight 0.0" in text
    assert metrics.CONTENT_TYPE.startswith("text/plain")
