"""Header values read from raw fields give mitmproxy's own answers (cfgw.headers)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http

from cfgw.headers import has_header, header, with_header

NAMES = (b"content-type", b"content-encoding", b"host", b"cf-aig-log-id", b"x-api-key")
# Names in mixed case, near misses, and values with non-ASCII and undecodable bytes.
name = st.sampled_from(
    [*NAMES, b"Content-Type", b"HOST", b"X-Api-Key", b"content-typ", b"content-type2", b"x-api-keys", b"k"]
)
value = st.binary(max_size=12) | st.sampled_from([b"application/json", b"gzip", "café".encode(), b"\xff"])
fields = st.lists(st.tuples(name, value), max_size=8).map(tuple)


@settings(max_examples=400)
@given(fields, st.sampled_from(NAMES))
def test_lookups_agree_with_mitmproxys_headers(raw, wanted):
    headers = http.Headers(raw)
    assert header(headers, wanted) == headers.get(wanted.decode())
    assert has_header(headers, wanted) == (wanted.decode() in headers)


@settings(max_examples=400)
@given(fields, st.sampled_from([b"Host", b"content-type"]), value)
def test_setting_agrees_with_mitmproxys_headers(raw, wanted, new):
    headers = http.Headers(raw)
    headers[wanted.decode()] = new.decode("utf-8", "surrogateescape")
    assert with_header(raw, wanted, new) == headers.fields


def test_examples():
    headers = http.Headers([(b"Content-Type", b"text/event-stream"), (b"x", b"1"), (b"x", b"2")])
    assert header(headers, b"content-type") == "text/event-stream"
    assert header(headers, b"x") == "1, 2"
    assert header(headers, b"host") is None
    assert has_header(headers, b"x") and not has_header(headers, b"y")
    assert with_header(headers.fields, b"Host", b"h:1")[-1] == (b"Host", b"h:1")
    assert with_header(((b"host", b"a"), (b"x", b"1"), (b"HOST", b"b")), b"Host", b"h") == (
        (b"host", b"h"),
        (b"x", b"1"),
    )
