"""Request-line and header checks mitmproxy does not make, so odd requests are refused, not forwarded.

mitmproxy passes on any method bytes, any HTTP version string and headers of any
size; the gateway behind us should only ever see requests a client library
could have sent.
"""

from __future__ import annotations

import re

from mitmproxy import http

METHOD_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}")  # an RFC 9110 token, of sane length
HTTP_VERSIONS = frozenset({"HTTP/1.0", "HTTP/1.1", "HTTP/2.0", "HTTP/3"})
MAX_HEADER_BYTES = 128 * 1024  # what Cloudflare's edge accepts for a request's headers
# RFC 9110 5.5 / RFC 9112 5.2: a proxy must not forward a field value with CR, LF (obs-fold) or NUL.
# Ints, not bytes: `int in bytes` is one memchr; `bytes in bytes` first tries the needle as an int.
_NUL, _LF, _CR = b"\x00\n\r"

# This runs on every request, so it reads the raw bytes behind mitmproxy's decoding properties.
# The same answers: surrogateescape decoding maps ASCII to itself and nothing else onto it.
_HTTP_VERSION_BYTES = frozenset(version.encode() for version in HTTP_VERSIONS)


class BadRequest(ValueError):
    """A request the proxy answers itself with ``status`` and an OpenAI-style error ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def check_request(request: http.Request) -> None:
    """Raise BadRequest for a method, version or header field we will not forward."""
    data = request.data
    method = data.method
    # The raw bytes, as they would be forwarded: request.method is upper-cased text, where 'ı'
    # (U+0131) becomes 'I'. ASCII letters (bytes.isalpha is ASCII-only) pass without the regex.
    if not (method.isalpha() and len(method) <= 32) and not METHOD_RE.fullmatch(method):
        raise BadRequest(400, "invalid_method", "The request method is not a valid HTTP token.")
    if data.http_version not in _HTTP_VERSION_BYTES:
        raise BadRequest(505, "unsupported_http_version", "Only HTTP/1.0, 1.1, 2 and 3 are forwarded.")
    fields = data.headers.fields
    parts: list[bytes] = []
    for field in fields:  # cheaper than itertools.chain over a handful of pairs
        parts += field
    block = b"".join(parts)  # names and values back to back: one scan finds a bad byte in any of them
    if _NUL in block or _LF in block or _CR in block:
        raise BadRequest(
            400, "invalid_header", "A request header holds a CR, LF (obs-fold) or NUL character."
        )
    if len(block) + 4 * len(fields) > MAX_HEADER_BYTES:  # each field's ': ' and CRLF
        raise BadRequest(
            431, "request_headers_too_large", f"Request headers exceed {MAX_HEADER_BYTES // 1024} KiB."
        )
