"""The per-flow record behind the log line, JSON log, metrics and flow comment (cfgw.summary)."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import tracemalloc
import zlib

import pytest
from mitmproxy import http
from mitmproxy.net import encoding
from mitmproxy.test import tflow, tutils

from cfgw import summary, usage
from cfgw.streaming import Recorder

USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
COMPLETION = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "openai/gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
        "usage": USAGE,
    }
).encode()
UPSTREAM = "https://gateway.ai.cloudflare.com/v1/acc/gw/compat/chat/completions"


def answered_flow(body: bytes = COMPLETION, ctype: str = "application/json", encoding_: str | None = None):
    """A forwarded flow as the addon leaves it: metadata set in `request`, response buffered."""
    f = tflow.tflow(resp=True)
    f.request.path = "/v1/chat/completions?trace=1"
    f.metadata[summary.META] = {
        "path": "/v1/chat/completions",
        "upstream": UPSTREAM,
        "model": "openai/gpt-4o-mini",
    }
    headers = [
        (b"content-type", ctype.encode()),
        (b"cf-aig-cache-status", b"HIT"),
        (b"cf-aig-log-id", b"01LOG"),
    ]
    if encoding_:
        headers.append((b"content-encoding", encoding_.encode()))
    f.response = tutils.tresp(headers=http.Headers(headers), content=b"")
    f.response.raw_content = body  # exactly these bytes, as received
    f.request.timestamp_start, f.request.timestamp_end = 100.0, 100.25
    f.response.timestamp_start, f.response.timestamp_end = 101.0, 101.5
    return f


def tokens(record: dict) -> tuple:
    return record["prompt_tokens"], record["completion_tokens"], record["total_tokens"]


def test_record_of_a_buffered_json_answer():
    f = answered_flow()
    record = summary.flow_record(f, None)
    assert tuple(record) == summary.FIELDS
    assert record == {
        "method": "GET",
        "path": "/v1/chat/completions",
        "upstream": UPSTREAM,
        "status": 200,
        "model": "openai/gpt-4o-mini",
        "stream": False,
        "duration_ms": 1500,
        "ttfb_ms": 750,
        "bytes": len(COMPLETION),
        "cache": "HIT",
        "log_id": "01LOG",
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "total_tokens": 18,
        "error": None,
    }


def test_path_without_metadata_drops_the_query():
    f = tflow.tflow(resp=True)
    f.request.path = "/v1/models?secret=no"
    record = summary.flow_record(f, None)
    assert record["path"] == "/v1/models"
    assert record["upstream"] is None and record["model"] is None


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_encoded_bodies_are_decoded_for_parsing_only(coding):
    body = encoding.encode(COMPLETION, coding)
    f = answered_flow(body, encoding_=coding)
    before = f.get_state()
    record = summary.flow_record(f, None)
    assert tokens(record) == (11, 7, 18)
    assert record["bytes"] == len(body)  # what went over the wire, not the decoded size
    assert f.get_state() == before  # the flow (and so what the client gets) is untouched
    assert f.response.raw_content == body and f.response.headers["content-encoding"] == coding


def test_total_is_summed_when_the_provider_omits_it():
    body = json.dumps({"usage": {"prompt_tokens": 4, "completion_tokens": 5}}).encode()
    assert tokens(summary.flow_record(answered_flow(body), None)) == (4, 5, 9)


def test_embeddings_usage_has_no_completion():
    body = json.dumps(
        {"object": "list", "data": [], "usage": {"prompt_tokens": 6, "total_tokens": 6}}
    ).encode()
    assert tokens(summary.flow_record(answered_flow(body), None)) == (6, None, 6)


def test_large_body_with_usage_at_the_end():
    """Big embeddings answers: usage is found near the end without parsing megabytes."""
    data = [{"object": "embedding", "index": i, "embedding": [0.125] * 64} for i in range(4000)]
    body = json.dumps({"object": "list", "data": data, "usage": {"prompt_tokens": 9, "total_tokens": 9}})
    assert len(body) > 1 << 20
    assert tokens(summary.flow_record(answered_flow(body.encode()), None)) == (9, None, 9)


CUT = COMPLETION[: COMPLETION.index(b'"usage"') + 20]
MALFORMED = {
    "not json": (b"<html><body>502 Bad Gateway</body></html>", "application/json", None),
    "cut short": (CUT, "application/json", None),
    "cut short gzip": (gzip.compress(COMPLETION)[:40], "application/json", "gzip"),
    "claims gzip, is not": (COMPLETION[:-1], "application/json", "gzip"),
    "unknown encoding": (COMPLETION, "application/json", "x-custom"),
    "stacked encodings": (gzip.compress(gzip.compress(COMPLETION)), "application/json", "gzip, gzip"),
    "usage is not an object": (b'{"usage": [1, 2, 3]}', "application/json", None),
    "counts are not ints": (
        b'{"usage": {"prompt_tokens": "11", "completion_tokens": 1.5}}',
        "application/json",
        None,
    ),
    "negative counts": (b'{"usage": {"prompt_tokens": -1}}', "application/json", None),
    "a list": (b"[1, 2]", "application/json", None),
    "empty": (b"", "application/json", None),
    "not json content type": (COMPLETION, "text/plain", None),
    "invalid utf-8": (b'{"usage": {"prompt_tokens": 1}, "x": "\xff\xfe"}'[:-1], "application/json", None),
    "huge garbage": (b"{" + b"x" * (3 << 20), "application/json", None),
    "huge json over the parse limit": (
        b'{"pad": "' + b"x" * summary.USAGE_PARSE_LIMIT + b'", "usage": {"prompt_tokens": 1}}',
        "application/json",
        None,
    ),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "application/json", None),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_unexpected_bodies_leave_token_fields_empty(case):
    body, ctype, coding = MALFORMED[case]
    f = answered_flow(body, ctype, coding)
    before = f.response.get_state()
    record = summary.flow_record(f, None)
    assert tokens(record) == (None, None, None)
    assert record["status"] == 200 and record["bytes"] == len(body)
    assert f.response.get_state() == before
    json.loads(summary.format_json(record))
    summary.format_text(record)
    summary.flow_comment(record)


def gzip_members(*parts: bytes, repeat_middle: int = 1) -> bytes:
    """Concatenated gzip members (valid gzip): cheap to build however much they decode to."""
    first, middle, last = (gzip.compress(p, compresslevel=1) for p in parts)
    return first + middle * repeat_middle + last


def test_large_compressed_json_with_usage_at_the_end():
    body = gzip_members(
        b'{"data": "', b"x" * (1 << 20), b'", "usage": {"prompt_tokens": 5}}', repeat_middle=20
    )
    assert tokens(summary.flow_record(answered_flow(body, encoding_="gzip"), None)) == (5, None, 5)


def test_decompression_bomb_is_not_decoded_to_the_end():
    """A few hundred KB of gzip that decodes to 256 MiB: given up on, memory stays bounded."""
    body = gzip_members(
        b'{"data": "', b"x" * (1 << 20), b'", "usage": {"prompt_tokens": 5}}', repeat_middle=256
    )
    assert len(body) < summary.USAGE_PARSE_LIMIT
    f = answered_flow(body, encoding_="gzip")
    tracemalloc.start()
    try:
        record = summary.flow_record(f, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert tokens(record) == (None, None, None)
    assert peak < 3 * summary.DECODED_LIMIT  # not the 256 MiB the body decodes to


def test_gzip_members_ending_on_a_256k_boundary():
    """Members that decode to exact multiples of 256 KiB leave CPython's zlib at eof with input
    still in unconsumed_tail; a decoder loop on that must neither spin nor drop the next member."""
    body = json.dumps({"data": "x" * (1 << 20), "usage": {"prompt_tokens": 2}}).encode()
    raw = b"".join(gzip.compress(body[i : i + (256 << 10)]) for i in range(0, len(body), 256 << 10))
    f = answered_flow(raw, encoding_="gzip")
    assert tokens(summary.flow_record(f, None)) == (2, None, 2)


def test_cut_short_body_that_still_holds_usage_is_not_refused():
    """Only an unusable body leaves tokens empty; a truncated gzip trailer still decodes."""
    body = gzip.compress(COMPLETION)[:-8]
    assert tokens(summary.flow_record(answered_flow(body, encoding_="gzip"), None)) == (11, 7, 18)


def sse(*events: dict | str) -> bytes:
    return b"".join(
        b"data: " + (e.encode() if isinstance(e, str) else json.dumps(e).encode()) + b"\n\n" for e in events
    )


STREAM = sse(
    {"object": "chat.completion.chunk", "choices": [{"delta": {"content": "Hi"}}], "usage": None},
    {"object": "chat.completion.chunk", "choices": [], "usage": USAGE},
    "[DONE]",
)


def streamed_flow(chunks: list[bytes], coding: str | None = None):
    f = answered_flow(b"", "text/event-stream", coding)
    recorder = Recorder(1 << 20, coding)
    for chunk in chunks:
        assert recorder(chunk) == chunk
    recorder(b"")
    recorder.first_chunk_at = 100.75
    return f, recorder


def test_record_of_a_stream_uses_the_recorder():
    chunks = [STREAM[:10], STREAM[10:77], STREAM[77:]]
    f, recorder = streamed_flow(chunks)
    record = summary.flow_record(f, recorder)
    assert record["stream"] is True
    assert record["bytes"] == len(STREAM)
    assert tokens(record) == (11, 7, 18)
    assert record["ttfb_ms"] == 500  # to the first body byte, not the headers


def test_gzip_stream_usage():
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    body = z.compress(STREAM) + z.flush()
    f, recorder = streamed_flow([body[:15], body[15:]], "gzip")
    record = summary.flow_record(f, recorder)
    assert tokens(record) == (11, 7, 18) and record["bytes"] == len(body)


def test_stream_decoder_ends_on_gzip_members_at_a_piece_boundary():
    event = b"data: " + b"x" * ((512 << 10) - 8) + b"\n\n"  # decodes to exactly 2 pieces of 256 KiB
    raw = gzip.compress(event) + gzip.compress(b"data: [DONE]\n\n")  # one chunk, two members
    pieces = list(itertools.islice(usage.make_decoder("gzip")(raw), 10_000))  # bounded: it may spin
    assert len(pieces) < 10_000
    assert b"".join(pieces) == event + b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "chunks",
    [
        [sse({"choices": [{"delta": {"content": "no usage requested"}}]}, "[DONE]")],
        [b"data: {not json\n\n", b"data: [DONE]\n\n"],
        [STREAM[: STREAM.index(b'"usage": {')]],  # cut before the usage chunk
        [b"\x00\xff" * 1000],
        [b"data: " + b"x" * (2 << 20)],  # one endless line
    ],
)
def test_unexpected_streams_leave_token_fields_empty(chunks):
    f, recorder = streamed_flow(chunks)
    record = summary.flow_record(f, recorder)
    assert tokens(record) == (None, None, None)
    assert record["bytes"] == sum(map(len, chunks))


def test_record_of_a_failed_flow():
    f = tflow.tflow(err=True)
    f.metadata[summary.META] = {"path": "/v1/chat/completions", "upstream": UPSTREAM}
    f.request.timestamp_start = f.error.timestamp - 2
    record = summary.flow_record(f, None)
    assert record["status"] is None and record["bytes"] is None and record["ttfb_ms"] is None
    assert record["error"] == f.error.msg
    assert record["duration_ms"] == 2000
    assert "failed" in summary.format_text(record)


def test_text_line():
    line = summary.format_text(summary.flow_record(answered_flow(), None))
    assert line == (
        f"GET /v1/chat/completions -> {UPSTREAM} 200 1500ms ttfb=750ms {len(COMPLETION)}B "
        "model=openai/gpt-4o-mini cache=HIT log_id=01LOG tokens=11/7/18"
    )


def test_json_line_is_one_compact_object_with_every_field():
    record = summary.flow_record(answered_flow(), None)
    record["error"] = 'line\nbreak "quoted"'
    record["path"] = "/v1/\u00e9\n"
    line = summary.format_json(record)
    assert "\n" not in line
    data = json.loads(line)
    assert list(data) == list(summary.FIELDS) and data == record


@pytest.mark.parametrize(
    ("changes", "comment"),
    [
        ({}, "openai/gpt-4o-mini · 18 tok · 1.5 s"),
        ({"total_tokens": None}, "openai/gpt-4o-mini · 1.5 s"),
        ({"model": None, "duration_ms": 61}, "/v1/chat/completions · 18 tok · 0.1 s"),
    ],
)
def test_flow_comment(changes, comment):
    record = summary.flow_record(answered_flow(), None) | changes
    assert summary.flow_comment(record) == comment


def test_fields_are_the_documented_schema():
    """Renaming a field breaks everyone's log pipeline: this list changes only on purpose."""
    assert summary.FIELDS == (
        "method",
        "path",
        "upstream",
        "status",
        "model",
        "stream",
        "duration_ms",
        "ttfb_ms",
        "bytes",
        "cache",
        "log_id",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "error",
    )
    assert re.fullmatch(r"[a-z_]+", "".join(summary.FIELDS))
