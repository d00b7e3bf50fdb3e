"""Request-line and header checks mitmproxy does not make, so odd requests are refused, not forwarded.

mitmproxy passes on any method bytes, any HTTP version string and headers of any
size; the gateway behind us should only ever see requests a client library
could have sent.
"""

from __future__ import annotations

import re

from mitmproxy import http

METHOD_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")  # an RFC 9110 token, of sane length
HTTP_VERSIONS = frozenset({"HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/3"})
MAX_HEADER_BYTES = 128 * 1024  # what Cloudflare's edge accepts for a request's headers
# RFC 9110 5.5 / RFC 9112 5.2: a proxy must not forward a field value with CR, LF (obs-fold) or NUL.
BAD_VALUE_RE = re.compile(rb"[\x00\r\n]")


class BadRequest(ValueError):
    """A request the proxy answers itself with ``status`` and an OpenAI-style error ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def check_request(request: http.Request) -> None:
    """Raise BadRequest for a method, version or header field we will not forward."""
    if not METHOD_RE.fullmatch(request.method):
        raise BadRequest(400, "invalid_method", "The request method is not a valid HTTP token.")
    if request.http_version not in HTTP_VERSIONS:
        raise BadRequest(505, "unsupported_http_version", "Only HTTP/1.0, 1.1, 2 and 3 are forwarded.")
    size = 0
    for name, value in request.headers.fields:
        size += len(name) + len(value) + 4
        if BAD_VALUE_RE.search(value) or BAD_VALUE_RE.search(name):
            raise BadRequest(
                400, "invalid_header", "A request header holds a CR, LF (obs-fold) or NUL character."
            )
    if size > MAX_HEADER_BYTES:
        raise BadRequest(
            431, "request_headers_too_large", f"Request headers exceed {MAX_HEADER_BYTES // 1024} KiB."
        )
