"""Recorder: the flow.response.stream callable that relays chunks, keeps a bounded copy and scans usage."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.net import encoding

from cfgw import decoding
from cfgw import recorder as recorder_mod
from cfgw.family import Usage
from cfgw.family_chat import CHAT
from cfgw.family_messages import FAMILY as MESSAGES
from cfgw.family_responses import FAMILY as RESPONSES
from cfgw.recorder import Recorder

CHAT_USAGE = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def sse_body(n_events: int = 3, final_newline: bool = True) -> bytes:
    """An OpenAI-style stream whose last data line carries the usage object."""
    events = [
        b"data: "
        + json.dumps({"model": "m", "choices": [{"delta": {"content": f"w{i}"}}], "usage": None}).encode()
        + b"\n\n"
        for i in range(n_events)
    ]
    last = b"data: " + json.dumps({"model": "m", "choices": [], "usage": CHAT_USAGE}).encode()
    return b"".join(events) + last + (b"\n\n" if final_newline else b"")


def named(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


ANTHROPIC_STREAM = b"".join(
    [
        named(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5",
                    "content": [],
                    "usage": {"input_tokens": 25, "cache_read_input_tokens": 10, "output_tokens": 1},
                },
            },
        ),
        named("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {}}),
        named("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"text": "Hi"}}),
        named("message_delta", {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 15}}),
        named("message_stop", {"type": "message_stop"}),
    ]
)
RESPONSES_STREAM = b"".join(
    [
        named("response.created", {"type": "response.created", "response": {"id": "r", "usage": None}}),
        named("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
        named(
            "response.completed",
            {
                "type": "response.completed",
                "response": {
                    "id": "r",
                    "usage": {
                        "input_tokens": 9,
                        "output_tokens": 4,
                        "total_tokens": 13,
                        "output_tokens_details": {"reasoning_tokens": 2},
                    },
                },
            },
        ),
    ]
)
FAMILY_STREAMS = {
    "chat": (CHAT, sse_body(), Usage(3, 5, 8)),
    "messages": (
        MESSAGES,
        ANTHROPIC_STREAM,
        Usage(input_tokens=25, output_tokens=15, cached_tokens=10, cache_in_input=False),
    ),
    "responses": (RESPONSES, RESPONSES_STREAM, Usage(9, 4, 13, reasoning_tokens=2)),
}


def br_decodes() -> bool:
    """brotli < 1.2 (mitmproxy 11's venv) cannot bound its output, so decoding refuses br."""
    try:
        decoding.stream_decoder("br", decoding.Limits(max_output=1))
    except ValueError:
        return False
    return True


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_chunks_pass_through_unchanged_and_are_counted():
    rec = Recorder(1 << 20, CHAT)
    body = sse_body()
    out = [rec.relay(c) for c in pieces(body, 7)]
    rec.relay(b"")
    assert out == pieces(body, 7)
    assert rec.delivered == len(body)
    assert rec.body() == body
    assert rec.dropped == 0
    assert rec.first_chunk_at is not None


def test_the_chunk_object_itself_goes_back_to_mitmproxy():
    rec = Recorder(4, CHAT)
    chunk = b"data: x\n\n"
    assert rec.relay(chunk) is chunk


def test_nothing_delivered_means_no_first_chunk_time():
    rec = Recorder(10, CHAT)
    rec.relay(b"")
    assert (rec.delivered, rec.dropped, rec.body(), rec.first_chunk_at) == (0, 0, b"", None)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=0, max_value=300),
    chunks=st.lists(st.binary(min_size=0, max_size=64), max_size=40),
)
def test_kept_never_exceeds_limit(limit, chunks):
    """Memory per stream is bounded: the copy is a prefix of what was delivered, at most limit bytes."""
    rec = Recorder(limit, CHAT)
    sent = bytearray()
    for chunk in chunks:
        assert rec.relay(chunk) == chunk
        sent += chunk
        assert len(rec.kept) <= limit
        assert rec.delivered == len(sent)
    rec.finish()
    assert rec.body() == bytes(sent[:limit])
    assert rec.dropped == max(0, len(sent) - limit)
    assert (rec.first_chunk_at is not None) == bool(sent)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(FAMILY_STREAMS)),
    lazy_scan=st.integers(min_value=0, max_value=700),
    limit=st.integers(min_value=0, max_value=700),
    sizes=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=30),
    empty_chunks=st.booleans(),
)
def test_any_chunking_gives_the_same_record_and_usage(name, lazy_scan, limit, sizes, empty_chunks):
    """However mitmproxy cuts a stream (empty chunks too), and wherever the fast path ends (lazy
    scan, record limit), the record is the stream's first ``limit`` bytes and the usage is exact."""
    family, body, expected = FAMILY_STREAMS[name]
    chunks, at = [], 0
    for size in itertools.cycle(sizes):
        if at >= len(body):
            break
        chunks += [body[at : at + size], b""] if empty_chunks else [body[at : at + size]]
        at += size
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recorder_mod, "LAZY_SCAN", lazy_scan)
        rec = Recorder(limit, family)
        assert [rec.relay(c) for c in chunks] == chunks
    rec.finish()
    assert (rec.body(), rec.delivered, rec.dropped) == (body[:limit], len(body), max(0, len(body) - limit))
    assert rec.usage == expected


def test_many_large_chunks_stay_within_limit():
    limit = 64 * 1024
    rec = Recorder(limit, CHAT)
    chunk = b"x" * 10_000
    for _ in range(1000):  # 10 MB through, 64 KiB kept
        rec.relay(chunk)
        assert len(rec.kept) <= limit
    assert rec.delivered == 10_000_000
    assert len(rec.body()) == limit
    assert rec.dropped == 10_000_000 - limit


def test_zero_limit_keeps_nothing_but_counts_everything():
    rec = Recorder(0, CHAT)
    for c in pieces(sse_body(), 5):
        rec.relay(c)
    rec.relay(b"")
    rec.finish()
    assert rec.body() == b""
    assert rec.delivered == len(sse_body())
    assert rec.dropped == rec.delivered
    assert rec.usage == Usage(3, 5, 8)  # usage is still counted for the log line


@pytest.mark.parametrize("name", FAMILY_STREAMS)
def test_usage_of_each_family_is_read_at_the_end_of_a_small_stream(name):
    family, body, usage = FAMILY_STREAMS[name]
    rec = Recorder(1 << 20, family)
    for c in pieces(body, 11):
        rec.relay(c)
    assert rec.scanner is None and rec.usage is None  # nothing parsed while the stream passes
    rec.finish()
    assert rec.usage == usage
    assert rec.body() == body


@pytest.mark.parametrize("name", FAMILY_STREAMS)
def test_a_stream_beyond_the_lazy_scan_is_read_as_it_passes(name, monkeypatch):
    family, body, usage = FAMILY_STREAMS[name]
    monkeypatch.setattr(recorder_mod, "LAZY_SCAN", len(body) // 3)
    rec = Recorder(1 << 20, family)
    parts = pieces(body, 7)
    for c in parts:
        rec.relay(c)
    assert rec.scanner is not None  # switched on once the record passed LAZY_SCAN
    assert rec.scanner.usage == usage  # every event ended with its blank line: read on the way
    rec.finish()
    assert rec.usage == usage and rec.body() == body


def test_past_the_record_limit_usage_is_still_exact():
    body = sse_body(n_events=50)
    rec = Recorder(100, CHAT)  # the usage event is far past what is kept
    for c in pieces(body, 13):
        rec.relay(c)
    rec.finish()
    assert len(rec.body()) == 100 and rec.usage == Usage(3, 5, 8)


def test_a_broken_stream_does_not_count_its_unterminated_last_event():
    rec = Recorder(1 << 20, CHAT)
    rec.relay(sse_body(final_newline=False))
    rec.finish(complete=False)
    assert rec.usage is None


def test_the_recorder_reads_usage_with_the_family_it_was_given():
    """The scan goes by the family's reader: an Anthropic reader finds nothing in a chat stream."""
    assert usage_of(Recorder(1 << 20, MESSAGES), sse_body()) is None
    assert usage_of(Recorder(1 << 20, RESPONSES), ANTHROPIC_STREAM) is None


def usage_of(rec: Recorder, body: bytes) -> Usage | None:
    rec.relay(body)
    rec.finish()
    return rec.usage


def test_end_of_stream_parses_a_last_event_without_blank_line():
    rec = Recorder(1 << 20, CHAT)
    for c in pieces(sse_body(final_newline=False), 11):
        rec.relay(c)
    rec.relay(b"")  # mitmproxy's end-of-stream call is not the end marker...
    assert rec.usage is None
    rec.finish()  # ...the response hook's finish() is
    assert rec.usage == Usage(3, 5, 8)


def test_empty_chunk_mid_stream_does_not_end_the_stream():
    """HTTP/2 upstreams may send empty DATA frames, which mitmproxy passes on as b"" mid-stream."""
    body = sse_body()
    cut = body.index(b'"usage": {')  # split the usage event, with an empty chunk in between
    rec = Recorder(1 << 20, CHAT)
    rec.relay(body[:cut])
    rec.relay(b"")
    rec.relay(body[cut:])
    rec.relay(b"")
    rec.finish()
    assert rec.body() == body
    assert rec.usage == Usage(3, 5, 8)


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd", "deflate"])
def test_encoded_stream_recorded_as_sent_and_decodable(coding):
    """The client gets the encoded bytes untouched; the record decodes with get_content()."""
    plain = sse_body(n_events=20)
    raw = encoding.encode(plain, coding)
    rec = Recorder(1 << 20, CHAT, coding)
    assert b"".join(rec.relay(c) for c in pieces(raw, 13)) == raw
    rec.relay(b"")
    rec.finish()
    assert rec.body() == raw
    resp = http.Response.make(200, b"", {"content-type": "text/event-stream", "content-encoding": coding})
    resp.raw_content = rec.body()
    assert resp.get_content() == plain
    decodable = coding != "br" or br_decodes()
    assert rec.usage == (Usage(3, 5, 8) if decodable else None)
    assert rec.scanner is not None and rec.scanner.disabled is not decodable  # compressed: per chunk


@pytest.mark.parametrize("coding", ["x-unknown", "gzip, gzip"])
def test_unknown_or_stacked_encoding_still_relays_and_records(coding):
    rec = Recorder(100, CHAT, coding)
    assert rec.relay(b"\x00\x01garbage") == b"\x00\x01garbage"
    rec.relay(b"")
    rec.finish()
    assert rec.body() == b"\x00\x01garbage"
    assert rec.usage is None and rec.scanner.disabled


def test_corrupt_encoded_stream_still_relays_and_records():
    rec = Recorder(1 << 20, CHAT, "gzip")
    junk = b"\x1f\x8b\x08\x00garbage" + sse_body()
    assert rec.relay(junk) == junk
    rec.finish()
    assert rec.body() == junk
    assert rec.usage is None and rec.scanner.disabled


def test_finish_twice_is_harmless():
    rec = Recorder(1 << 20, CHAT)
    rec.relay(sse_body(final_newline=False))
    rec.finish()
    rec.finish()
    assert rec.usage == Usage(3, 5, 8)
