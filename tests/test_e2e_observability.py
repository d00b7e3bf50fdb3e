"""End to end: the per-request JSON log line, saved flow comments and /metrics through a real mitmdump."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import string
import threading
import time
from typing import Any

import httpx
from mitmproxy import io
from prometheus_client.parser import text_string_to_metric_families

from cfgw import summary
from tests.harness import ACCOUNT_ID, GATEWAY_ID

PREFIX = f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}/compat"
MODEL = "openai/gpt-4o-mini"
# The stand-in counts words: 3 prompt tokens; its reply has 5 words, so 5 completion tokens.
CHAT: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "one two three"}]}
STREAM: dict[str, Any] = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
TOKENS = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
NO_TOKENS = dict.fromkeys(TOKENS)


def json_lines(output: str) -> list[dict]:
    """The JSON request lines of the event log ('[hh:mm:ss.mmm] {...}')."""
    out = []
    for line in output.splitlines():
        _, sep, rest = line.partition("] ")
        if line.startswith("[") and sep and rest.startswith("{"):
            out.append(json.loads(rest))
    return out


def wait_json_lines(proxy, count: int) -> list[dict]:
    """A line can land just after the client got its answer: wait (bounded) until all are there."""
    for _ in range(200):
        lines = json_lines(proxy.output())
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {count} JSON lines:\n{proxy.output()}")


def post(proxy, body, **headers) -> httpx.Response:
    return httpx.post(proxy.url + "/v1/chat/completions?trace=1", json=body, headers=headers)


def streamed(proxy, body, **headers) -> tuple[httpx.Response, bytes]:
    """A streamed call, and the body bytes exactly as they came over the wire (still encoded)."""
    with httpx.stream("POST", proxy.url + "/v1/chat/completions", json=body, headers=headers) as r:
        raw = b"".join(r.iter_raw())
    return r, raw


def test_json_log_lines_and_flow_comments(make_proxy, gw):
    p = make_proxy({"cf_log_format": "json"}, extra_args=["-w", "flows.mitm"])
    plain = post(p, CHAT, **{"accept-encoding": "identity", "x-standin-delay-ms": "200"})
    gzipped = post(p, CHAT, **{"accept-encoding": "gzip"})
    sse, sse_raw = streamed(p, STREAM, **{"x-standin-delay-ms": "50"})
    sse_gz, sse_gz_raw = streamed(p, STREAM, **{"x-standin-encoding": "gzip"})
    _, no_usage_raw = streamed(p, {**CHAT, "stream": True})
    not_found = post(p, CHAT, **{"x-standin-status": "404", "accept-encoding": "identity"})
    closed = post(p, CHAT, **{"x-standin-close": "before-headers"})
    models = httpx.get(p.url + "/v1/models", headers={"accept-encoding": "identity"})
    assert [r.status_code for r in (plain, gzipped, sse, sse_gz, not_found, closed, models)] == [
        200,
        200,
        200,
        200,
        404,
        502,
        200,
    ]
    assert gzipped.headers["content-encoding"] == "gzip" and sse_gz.headers["content-encoding"] == "gzip"

    lines = wait_json_lines(p, 8)
    assert len(lines) == 8
    fields = [f.name for f in dataclasses.fields(summary.FlowRecord)]
    for line in lines:
        assert list(line) == fields  # exact keys, in the documented order
    upstream = f"http://127.0.0.1:{gw.port}{PREFIX}/chat/completions"
    base = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "family": "chat",
        "route": "compat",
        "upstream": upstream,
        "model": MODEL,
    }
    timings = ("duration_ms", "ttfb_ms")

    def check(line, **expected):
        assert {k: line[k] for k in expected} == expected, line
        assert all(isinstance(line[k], int) and line[k] >= 0 for k in timings if line[k] is not None)

    first = lines[0]
    check(
        first,
        **base,
        status=200,
        outcome="ok",
        stream=False,
        bytes=len(plain.content),
        cache="MISS",
        **TOKENS,
        cached_tokens=None,
        cache_creation_tokens=None,
        reasoning_tokens=None,
        gateway_code=None,
        error=None,
    )
    assert first["log_id"] == plain.headers["cf-aig-log-id"]
    assert first["ttfb_ms"] >= 200 and first["duration_ms"] >= first["ttfb_ms"]  # the stand-in waited 200 ms
    check(lines[1], **base, status=200, stream=False, bytes=int(gzipped.headers["content-length"]), **TOKENS)
    assert lines[1]["log_id"] == gzipped.headers["cf-aig-log-id"]
    check(lines[2], **base, status=200, stream=True, bytes=len(sse_raw), cache="MISS", **TOKENS)
    # 50 ms between the 9 events: the first byte came well before the last
    assert lines[2]["duration_ms"] - lines[2]["ttfb_ms"] >= 350
    check(lines[3], **base, status=200, stream=True, bytes=len(sse_gz_raw), **TOKENS)
    check(lines[4], **base, status=200, stream=True, bytes=len(no_usage_raw), **NO_TOKENS)
    check(
        lines[5],
        **base,
        status=404,
        outcome="ok",
        stream=False,
        bytes=len(not_found.content),
        cache=None,
        **NO_TOKENS,
        gateway_code=None,
    )
    # the upstream closed before answering: the client got mitmproxy's 502
    check(
        lines[6],
        **base,
        status=502,
        outcome="upstream_failed",
        stream=False,
        bytes=None,
        ttfb_ms=None,
        cache=None,
        log_id=None,
        error="server closed connection",
    )
    check(
        lines[7],
        method="GET",
        path="/v1/models",
        family="other",
        route="compat",
        upstream=f"http://127.0.0.1:{gw.port}{PREFIX}/models",
        status=200,
        outcome="ok",
        model=None,
        stream=False,
        **NO_TOKENS,
    )

    p.stop()
    with open(p.workdir / "flows.mitm", "rb") as f:
        comments = [fl.comment for fl in io.FlowReader(f).stream()]
    assert len(comments) == 8
    took = r"(\d{1,3} ms|\d+\.\d s)"  # ms below a second
    with_tokens = re.compile(rf"openai/gpt-4o-mini · 8 tok · {took}")
    without = re.compile(rf"openai/gpt-4o-mini · {took}")
    assert all(with_tokens.fullmatch(c) for c in comments[:4]), comments
    assert all(without.fullmatch(c) for c in comments[4:7]), comments
    assert re.fullmatch(rf"/v1/models · {took}", comments[7])


def scrape(proxy) -> dict[tuple[str, frozenset], float]:
    r = httpx.get(proxy.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def model_labels(samples) -> set[str]:
    return {dict(labels)["model"] for _, labels in samples if "model" in dict(labels)}


def random_models(n: int) -> list[tuple[str, dict]]:
    """Model names nobody configured, each with how the stand-in will answer it."""
    rng = random.Random(5)
    word = lambda k: "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(k))  # noqa: E731
    out: list[tuple[str, dict]] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # no provider: the gateway's 400/2008
            out.append((f"rnd-{word(12)}", {}))
        elif kind == 1:  # provider does not know it: 404 model_not_found
            out.append((f"openai/rnd-{word(12)}", {"x-standin-status": "404"}))
        elif kind == 2:  # answered, but far too long for a label
            out.append((f"openai/{word(200)}", {}))
        else:  # answered, but not a plain name
            out.append((f'openai/rnd {word(6)} \u00e9"{word(4)}', {}))
    return out


def test_metrics_after_known_traffic_with_bounded_labels(make_proxy, gw):
    p = make_proxy()
    statuses = []
    for model, headers in random_models(48):
        statuses.append(post(p, {**CHAT, "model": model}, **headers).status_code)
    assert sorted(set(statuses)) == [200, 400, 404]
    s = scrape(p)
    assert model_labels(s) == {"other"}
    assert value(s, "cf_gateway_requests_total", family="chat", model="other", status="400") == 12
    assert value(s, "cf_gateway_requests_total", family="chat", model="other", status="404") == 12
    assert value(s, "cf_gateway_requests_total", family="chat", model="other", status="200") == 24

    # known traffic: 3 answers, 1 stream with usage, 1 provider error, 1 upstream failure
    for _ in range(3):
        assert post(p, CHAT).status_code == 200
    streamed(p, STREAM)
    assert post(p, CHAT, **{"x-standin-status": "404"}).status_code == 404
    assert post(p, CHAT, **{"x-standin-close": "before-headers"}).status_code == 502
    assert httpx.get(p.url + "/healthz").status_code == 200
    assert p.wait_output("error='server closed connection'")
    s = scrape(p)
    assert model_labels(s) == {"other", MODEL}
    assert value(s, "cf_gateway_requests_total", family="chat", model=MODEL, status="200") == 4
    assert value(s, "cf_gateway_requests_total", family="chat", model=MODEL, status="404") == 1
    assert value(s, "cf_gateway_requests_total", family="chat", model=MODEL, status="502") == 1
    assert total(s, "cf_gateway_requests_total") == 48 + 6  # /metrics and /healthz are not counted
    assert value(s, "cf_gateway_tokens_total", model=MODEL, kind="prompt") == 4 * 3
    assert value(s, "cf_gateway_tokens_total", model=MODEL, kind="completion") == 4 * 5
    assert value(s, "cf_gateway_request_duration_seconds_count", model=MODEL) == 6
    assert value(s, "cf_gateway_time_to_first_byte_seconds_count", model=MODEL) == 5
    assert value(s, "cf_gateway_upstream_errors_total", reason="upstream_closed") == 1
    assert total(s, "cf_gateway_upstream_errors_total") == 1
    assert value(s, "cf_gateway_streams_in_flight") == 0

    # a stream held open by the gateway is in flight until it ends
    first_chunk = threading.Event()

    def held_stream():
        headers = {"x-standin-hold": "gauge"}
        with httpx.stream("POST", p.url + "/v1/chat/completions", json=STREAM, headers=headers) as r:
            for _ in r.iter_raw():
                first_chunk.set()

    t = threading.Thread(target=held_stream)
    t.start()
    try:
        assert first_chunk.wait(10)  # the client has the first event: the proxy is relaying the stream
        assert value(scrape(p), "cf_gateway_streams_in_flight") == 1
    finally:
        gw.release("gauge")
        t.join(20)
    for _ in range(100):  # the gauge drops in the response hook, just after the client got the end
        s = scrape(p)
        if value(s, "cf_gateway_streams_in_flight") == 0:
            break
        time.sleep(0.05)
    assert value(s, "cf_gateway_streams_in_flight") == 0
    assert value(s, "cf_gateway_tokens_total", model=MODEL, kind="prompt") == 5 * 3
    head = httpx.head(p.url + "/metrics")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    assert not [r for r in gw.requests if "metrics" in r.path or "healthz" in r.path]


def test_metrics_off_answers_404_and_forwards_nothing(make_proxy, gw):
    """With cf_metrics=off the proxy still claims /metrics (never the gateway's business): a JSON 404."""
    p = make_proxy({"cf_metrics": "off"})
    r = httpx.get(p.url + "/metrics")
    assert (r.status_code, r.headers["content-type"]) == (404, "application/json")
    assert r.json()["error"]["code"] == "not_found"
    assert r.json()["error"]["message"] == "Metrics are off (cf_metrics=off)."
    assert gw.requests == []
