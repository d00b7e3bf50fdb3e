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
