"""The one record per finished flow, its outcome, and the flow comment."""

from __future__ import annotations

import time

import pytest
from mitmproxy import flow

from cfgw import summary
from tests.flows import json_response, reverse_flow

URL = "https://gateway.ai.cloudflare.com/v1/acct/gw/compat/chat/completions"


def forwarded(**meta) -> tuple:
    f = reverse_flow("/v1/chat/completions?api-key=secret")
    f.response = json_response({"ok": True}, **{"cf-aig-cache-status": "HIT", "cf-aig-log-id": "log-1"})
    return f, {"start": time.time(), "target": f.request.path, "family": "chat", "api": "gateway",
               "url": URL, "model": "openai/gpt-4o", **meta}  # fmt: skip


def test_record_of_a_forwarded_flow():
    f, meta = forwarded(usage={"input": 10, "output": 5}, answer_model="gpt-4o-2024")
    record = summary.record(f, meta)
    assert record | {"duration_ms": 0} == {
        "method": "POST", "path": "/v1/chat/completions", "family": "chat", "api": "gateway",
        "upstream": URL, "status": 200, "outcome": "ok", "model": "openai/gpt-4o", "stream": False,
        "duration_ms": 0, "bytes": len(f.response.raw_content), "cache": "HIT", "log_id": "log-1",
        "input_tokens": 10, "output_tokens": 5, "total_tokens": 15, "answer_model": "gpt-4o-2024",
    }  # fmt: skip


def test_path_never_carries_the_query():
    f, meta = forwarded()
    assert "secret" not in str(summary.record(f, meta))


def test_local_answer():
    f = reverse_flow("/v1/v1/models", method="GET")
    f.response = json_response({"error": {}}, 404)
    record = summary.record(f, {"start": time.time()})
    assert (record["outcome"], record["status"], record["upstream"], record["family"]) == (
        "local",
        404,
        None,
        "other",
    )


def test_a_stream_past_the_record_limit_went_through_whole():
    """The client got every byte; only the flow's copy is cut (and marked for the recording)."""
    f, meta = forwarded(stream=True, truncated=True, bytes=12345)
    record = summary.record(f, meta)
    assert (record["outcome"], record["bytes"], record["stream"]) == ("ok", 12345, True)


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        ("Client disconnected.", "client_closed"),
        (flow.Error.KILLED_MESSAGE, "killed"),
        ("Connection refused", "upstream_failed"),
    ],
)
def test_failed_flows(message, outcome):
    f, meta = forwarded()
    f.response = None
    f.error = flow.Error(message)
    record = summary.record(f, meta)
    assert (record["outcome"], record["status"], record["error"]) == (outcome, None, message)


def test_gateway_code_is_kept():
    f, meta = forwarded(gateway_code=2008)
    assert summary.record(f, meta)["gateway_code"] == 2008


def test_anthropic_total_counts_the_cache():
    fields = summary.token_fields({"input": 1, "output": 2, "cached": 30, "cache_creation": 400}, "messages")
    assert fields["total_tokens"] == 433


@pytest.mark.parametrize(
    ("record", "comment"),
    [
        (
            {"model": "gpt-4o", "family": "chat", "total_tokens": 15, "duration_ms": 250},
            "gpt-4o · 15 tok · 250 ms",
        ),
        ({"model": None, "family": "messages", "duration_ms": 1540}, "messages · 1.5 s"),
    ],
)
def test_comment(record, comment):
    assert summary.comment(record) == comment
