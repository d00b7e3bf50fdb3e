"""Request-line and header checks (cfgw.validate)."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from cfgw.validate import MAX_HEADER_BYTES, BadRequest, check_request


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
