"""Every response the addon answers itself is made here, in the client's own API shape.

Each SDK parses its own error shape into its exceptions (OpenAI's
``{"error": {"message", "type", "code"}}``, Anthropic's ``{"type": "error", ...}``), so
a client sees our 400/401/500 the way it sees a provider's. HEAD answers carry no
body: mitmproxy would send a made-up response's body even to HEAD, which desyncs
keep-alive clients.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from mitmproxy import http

from cfgw.family import Family

SERVER = "cf-gateway"


def response(status: int, content: bytes, headers: Mapping[str, str], head: bool = False) -> http.Response:
    """A response of our own; for HEAD, the headers (with GET's content-length) only."""
    made = http.Response.make(status, content, dict(headers))
    if head:
        made.raw_content = b""
    return made


def json_response(
    status: int, body: object, headers: Mapping[str, str] | None = None, head: bool = False
) -> http.Response:
    """A JSON response of our own; for HEAD, the headers (with GET's content-length) only."""
    return response(
        status,
        json.dumps(body, separators=(",", ":")).encode(),
        {"content-type": "application/json", "server": SERVER, **(headers or {})},
        head,
    )


def error_response(
    family: Family,
    status: int,
    message: str,
    code: str,
    type: str = "invalid_request_error",
    headers: Mapping[str, str] | None = None,
    head: bool = False,
) -> http.Response:
    """An error made by the proxy itself (never by the gateway or provider), in ``family``'s shape."""
    return json_response(status, family.error_body(status, message, code, type), headers, head)
