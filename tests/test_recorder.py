"""Recorder: the flow.response.stream callable that relays SSE chunks and keeps a bounded copy."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.net import encoding
from mitmproxy.test import tflow

from cfgw.streaming import Recorder, client_went_away, is_event_stream

USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def sse_body(n_events: int = 3, final_newline: bool = True) -> bytes:
    """An OpenAI-style stream whose last data line carries the usage object."""
    events = [
        b"data: "
        + json.dumps({"model": "m", "choices": [{"delta": {"content": f"w{i}"}}]}).encode()
        + b"\n\n"
        for i in range(n_events)
    ]
    last = b"data: " + json.dumps({"model": "m", "choices": [], "usage": USAGE}).encode()
    return b"".join(events) + last + (b"\n\n" if final_newline else b"")


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text/event-stream", True),
        ("Text/Event-Stream; charset=utf-8", True),
        (" text/event-stream ;charset=utf-8", True),
        ("application/json", False),
        ("text/event-streamx", False),
        ("", False),
        (None, False),
    ],
)
def test_is_event_stream(value, expected):
    assert is_event_stream(value) is expected


def test_chunks_pass_through_unchanged_and_are_counted():
    rec = Recorder(limit=1 << 20)
    body = sse_body()
    out = [rec(c) for c in pieces(body, 7)]
    rec(b"")
    assert b"".join(out) == body
    assert out == pieces(body, 7)
    assert rec.delivered == len(body)
    assert rec.body() == body
    assert rec.dropped == 0
    assert rec.first_chunk_at is not None


def test_nothing_delivered_means_no_first_chunk_time():
    rec = Recorder(limit=10)
    rec(b"")
    assert (rec.delivered, rec.dropped, rec.body(), rec.first_chunk_at) == (0, 0, b"", None)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=0, max_value=300),
    chunks=st.lists(st.binary(min_size=0, max_size=64), max_size=40),
)
def test_kept_never_exceeds_limit(limit, chunks):
    """Memory per stream is bounded: the copy is a prefix of what was delivered, at most limit bytes."""
    rec = Recorder(limit)
    sent = bytearray()
    for chunk in chunks:
        assert rec(chunk) == chunk
        sent += chunk
        assert len(rec.kept) <= limit
        assert rec.delivered == len(sent)
    assert rec.body() == bytes(sent[:limit])
    assert rec.dropped == max(0, len(sent) - limit)


def test_many_large_chunks_stay_within_limit():
    limit = 64 * 1024
    rec = Recorder(limit)
    chunk = b"x" * 10_000
    for _ in range(1000):  # 10 MB through, 64 KiB kept
        rec(chunk)
        assert len(rec.kept) <= limit
    assert rec.delivered == 10_000_000
    assert len(rec.body()) == limit
    assert rec.dropped == 10_000_000 - limit


def test_zero_limit_keeps_nothing_but_counts_everything():
    rec = Recorder(0)
    for c in pieces(sse_body(), 5):
        rec(c)
    rec(b"")
    assert rec.body() == b""
    assert rec.delivered == len(sse_body())
    assert rec.dropped == rec.delivered
    assert rec.scanner.usage is not None  # usage is still counted for the log line


def test_usage_found_when_lines_end_with_newline():
    rec = Recorder(1 << 20)
    for c in pieces(sse_body(), 11):
        rec(c)
    assert rec.scanner.usage is not None and rec.scanner.usage.total == 8


def test_end_of_stream_parses_a_last_line_without_newline():
    rec = Recorder(1 << 20)
    for c in pieces(sse_body(final_newline=False), 11):
        rec(c)
    assert rec.scanner.usage is None  # the last line is still pending
    rec(b"")  # mitmproxy's end-of-stream call
    rec.finish()  # the response hook's
    assert rec.scanner.usage is not None and rec.scanner.usage.total == 8


def test_empty_chunk_mid_stream_does_not_end_the_stream():
    """HTTP/2 upstreams may send empty DATA frames, which mitmproxy passes on as b"" mid-stream."""
    body = sse_body()
    cut = body.index(b'"usage"')  # split the usage line, with an empty chunk in between
    rec = Recorder(1 << 20)
    rec(body[:cut])
    rec(b"")
    rec(body[cut:])
    rec(b"")
    rec.finish()
    assert rec.body() == body
    assert rec.scanner.usage is not None and rec.scanner.usage.total == 8


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd", "deflate"])
def test_encoded_stream_recorded_as_sent_and_decodable(coding):
    """The client gets the encoded bytes untouched; the record decodes with get_content()."""
    plain = sse_body(n_events=20)
    raw = encoding.encode(plain, coding)
    rec = Recorder(1 << 20, coding)
    assert b"".join(rec(c) for c in pieces(raw, 13)) == raw
    rec(b"")
    rec.finish()
    assert rec.body() == raw
    resp = http.Response.make(200, b"", {"content-type": "text/event-stream", "content-encoding": coding})
    resp.raw_content = rec.body()
    assert resp.get_content() == plain
    assert rec.scanner.usage is not None and rec.scanner.usage.total == 8


def test_unknown_encoding_still_relays_and_records():
    rec = Recorder(100, "x-unknown")
    assert rec(b"\x00\x01garbage") == b"\x00\x01garbage"
    rec(b"")
    rec.finish()
    assert rec.body() == b"\x00\x01garbage"
    assert rec.scanner.usage is None


def test_finish_twice_is_harmless():
    rec = Recorder(1 << 20)
    rec(sse_body(final_newline=False))
    rec.finish()
    rec.finish()
    assert rec.scanner.usage is not None and rec.scanner.usage.total == 8


OPEN, CLOSED, CAN_WRITE = ConnectionState.OPEN, ConnectionState.CLOSED, ConnectionState.CAN_WRITE


@pytest.mark.parametrize(
    ("client", "server", "message", "expected"),
    [
        # what mitmproxy leaves at the error hook (seen end to end in test_e2e_streaming)
        (CAN_WRITE, CLOSED, "Client disconnected.", True),  # HTTP/1 client hung up
        (CLOSED, CLOSED, "peer closed connection", True),  # HTTP/2 client hung up
        (OPEN, CLOSED, "peer closed connection", False),  # HTTP/2 upstream connection lost
        (OPEN, CLOSED, "HTTP/1 protocol error: peer closed connection without sending", False),
        (OPEN, CLOSED, "Connection refused", False),  # upstream unreachable
        (OPEN, OPEN, "stream reset by client (CANCEL)", True),  # HTTP/2 stream cancelled
        (OPEN, OPEN, "HTTP/2 protocol error: bad frame", False),
    ],
)
def test_client_went_away_tells_who_broke_the_flow(client, server, message, expected):
    f = tflow.tflow(resp=True)
    f.client_conn.state = client
    f.server_conn.state = server
    f.error = tflow.terr(message)
    assert client_went_away(f) is expected
