"""Request-line and header checks (cfgw.validate)."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tutils

from cfgw.validate import HTTP_VERSIONS, MAX_HEADER_BYTES, BadRequest, check_request


def request(method="POST", version="HTTP/1.1", headers=()):
    return tutils.treq(
        method=method.encode("latin-1"),
        http_version=version.encode(),
        headers=http.Headers([(k.encode(), v.encode()) for k, v in headers]),
    )


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"])
def test_ordinary_requests_pass(method):
    check_request(request(method))
    check_request(request(method, "HTTP/2.0"))


@pytest.mark.parametrize("method", ["G(T", "G\x00T", "GéT", "G T", "", "X" * 33])
def test_bad_methods(method):
    with pytest.raises(BadRequest) as e:
        check_request(request(method))
    assert (e.value.status, e.value.code) == (400, "invalid_method")


@pytest.mark.parametrize("version", ["HTTP/9.9", "HTTP/0.9", "FTP/1.1", "HTTP/1.1 extra"])
def test_unknown_versions(version):
    with pytest.raises(BadRequest) as e:
        check_request(request(version=version))
    assert (e.value.status, e.value.code) == (505, "unsupported_http_version")


def test_header_block_limit():
    check_request(request(headers=[("x-big", "a" * (MAX_HEADER_BYTES - 100))]))
    with pytest.raises(BadRequest) as e:
        check_request(request(headers=[("x-big", "a" * MAX_HEADER_BYTES)]))
    assert (e.value.status, e.value.code) == (431, "request_headers_too_large")
    with pytest.raises(BadRequest):
        check_request(request(headers=[(f"x-{i}", "a" * 1000) for i in range(140)]))  # many small ones


@pytest.mark.parametrize(
    "field",
    [
        (b"x-folded", b"first\r\n second"),  # obs-fold
        (b"x-folded", b"first\n\tsecond"),
        (b"x-cr", b"a\rb"),
        (b"x-nul", b"a\x00b"),
        (b"x-\x00name", b"value"),
        (b"authorization", b"Bearer sk-\r\nx-injected: 1"),
    ],
)
def test_cr_lf_and_nul_in_header_fields_are_refused(field):
    req = tutils.treq(headers=http.Headers(fields=((b"host", b"example.com"), field)))
    with pytest.raises(BadRequest) as e:
        check_request(req)
    assert (e.value.status, e.value.code) == (400, "invalid_header")
    assert str(e.value) == "A request header holds a CR, LF (obs-fold) or NUL character."


def test_tabs_and_high_bytes_in_values_pass():
    """HTAB is allowed inside a value; obs-text (0x80-0xFF) is legacy but not dangerous."""
    check_request(tutils.treq(headers=http.Headers(fields=((b"x-a", b"a\tb"), (b"x-b", b"caf\xe9")))))


# --- check_request was made cheaper (issue 13); this is the implementation it replaced, kept verbatim
# --- so that a property test can prove the answers did not change.

_REFERENCE_BAD_VALUE_RE = re.compile(rb"[\x00\r\n]")


_REFERENCE_METHOD_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")


def reference_check_request(request: http.Request) -> None:
    # One deliberate change from the old code: the method's raw bytes are checked, not
    # request.method, which is upper-cased ('ı' became 'I' and passed; its bytes were forwarded).
    if not _REFERENCE_METHOD_RE.fullmatch(request.data.method.decode("latin-1")):
        raise BadRequest(400, "invalid_method", "The request method is not a valid HTTP token.")
    if request.http_version not in HTTP_VERSIONS:
        raise BadRequest(505, "unsupported_http_version", "Only HTTP/1.0, 1.1, 2 and 3 are forwarded.")
    size = 0
    for name, value in request.headers.fields:
        size += len(name) + len(value) + 4
        if _REFERENCE_BAD_VALUE_RE.search(value) or _REFERENCE_BAD_VALUE_RE.search(name):
            raise BadRequest(
                400, "invalid_header", "A request header holds a CR, LF (obs-fold) or NUL character."
            )
    if size > MAX_HEADER_BYTES:
        raise BadRequest(
            431, "request_headers_too_large", f"Request headers exceed {MAX_HEADER_BYTES // 1024} KiB."
        )


def verdict(check, request):
    """None if the request passed, else the refusal's type, status, code and message."""
    try:
        check(request)
    except Exception as e:  # any difference must show, an unexpected error too
        return type(e), getattr(e, "status", None), getattr(e, "code", None), str(e)
    return None


_TOKEN = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Non-ASCII letters that request.method's upper() turns into ASCII token characters (some into two).
_UPPER_TO_ASCII = "ß\u0131\u017f\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06"
_ordinary_methods = st.sampled_from([b"GET", b"POST", b"DELETE", b"M-SEARCH", b"X" * 32]) | st.text(
    _TOKEN, min_size=1, max_size=32
).map(str.encode)
_odd_methods = st.one_of(
    st.sampled_from([b"get", b"X" * 33, b"", b"G T", b"\xff", b"\xc4"]),
    st.text(_TOKEN + _UPPER_TO_ASCII + " (é\x00\x7f", max_size=36).map(str.encode),
    st.binary(max_size=34),
)
_ordinary_versions = st.sampled_from(sorted(v.encode() for v in HTTP_VERSIONS))
_odd_versions = st.one_of(
    st.sampled_from([b"HTTP/2", b"HTTP/1.2", b"http/1.1", b"HTTP/1.1 ", b"", b"HTTP/3\x00", b"HTTP/\xff"]),
    st.binary(max_size=10),
)
# Odd ones a quarter of the time each, so that most requests get as far as the header checks.
methods = st.sampled_from([_ordinary_methods] * 3 + [_odd_methods]).flatmap(lambda strategy: strategy)
versions = st.sampled_from([_ordinary_versions] * 3 + [_odd_versions]).flatmap(lambda strategy: strategy)
_clean_bytes = st.text("abc-: \t\x0b\x0c\x7f\x80\xe9\xff", max_size=12).map(lambda t: t.encode("latin-1"))
_any_bytes = st.binary(max_size=12) | st.text("ab\r\n\x00", max_size=6).map(str.encode)
_field_bytes = st.sampled_from([_clean_bytes] * 7 + [_any_bytes]).flatmap(lambda strategy: strategy)
small_fields = st.lists(st.tuples(_field_bytes, _field_bytes), max_size=8)


@st.composite
def header_fields(draw):
    """Small fields, and sometimes one big value that puts the block within a few bytes of the limit."""
    fields = draw(small_fields)
    if draw(st.booleans()):
        size = sum(len(name) + len(value) + 4 for name, value in fields)
        name = draw(st.sampled_from([b"x-big", b"cookie"]))
        length = max(0, MAX_HEADER_BYTES - size - len(name) - 4 + draw(st.integers(-3, 3)))
        filler = draw(st.sampled_from([b"a", b"\t", b"\xff", b"a", b"\t", b"\xff", b"\r", b"\n", b"\x00"]))
        value = filler * length
        fields.insert(draw(st.integers(0, len(fields))), (name, value))
    return tuple(fields)


@settings(max_examples=300, deadline=None)
@given(methods, versions, header_fields())
@example(b"POST", b"HTTP/1.1", ((b"host", b"example.com"), (b"content-type", b"application/json")))
@example("\u0131".encode(), b"HTTP/1.1", ())  # 'ı' upper-cases to 'I': refused all the same
@example("\ufb00".encode() * 16, b"HTTP/1.1", ())
@example(b"X" * 32, b"HTTP/1.1", ())
@example(b"X" * 33, b"HTTP/1.1", ())
@example(b"G T", b"HTTP/9", ((b"a", b"\r"),))  # the method is checked first
@example(b"GET", b"HTTP/9", ((b"a", b"\r"),))  # then the version
@example(b"GET", b"HTTP/1.1", ((b"a", b"b"), (b"c", b"\n")))
@example(b"GET", b"HTTP/1.1", ((b"a", b"b"), (b"c", b"\r")))
@example(b"GET", b"HTTP/1.1", ((b"a", b"b"), (b"\x00", b"c")))
@example(b"GET", b"HTTP/1.1", ((b"a\r", b"b" * MAX_HEADER_BYTES),))  # a bad byte is reported before the size
@example(b"GET", b"HTTP/1.1", ((b"a", b"b" * (MAX_HEADER_BYTES - 5)),))  # exactly at the limit: passes
@example(b"GET", b"HTTP/1.1", ((b"a", b"b" * (MAX_HEADER_BYTES - 4)),))  # one byte over
def test_check_request_answers_as_the_reference(method, version, fields):
    req = tutils.treq(method=method, http_version=version, headers=http.Headers(fields=fields))
    assert verdict(check_request, req) == verdict(reference_check_request, req)


@pytest.mark.parametrize("letter", list(_UPPER_TO_ASCII))
def test_a_non_ascii_method_is_refused_even_if_it_upper_cases_to_a_token(letter):
    req = tutils.treq(method=f"GE{letter}".encode(), headers=http.Headers())
    assert req.method.isascii()  # what mitmproxy's property shows
    with pytest.raises(BadRequest) as e:
        check_request(req)
    assert (e.value.status, e.value.code) == (400, "invalid_method")
