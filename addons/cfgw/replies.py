"""Responses the addon answers itself: always JSON, errors in OpenAI's shape.

OpenAI SDKs parse ``{"error": {"message", "type", "code"}}`` into their
exceptions, so a client sees our 400/401/500 the same way it sees a provider's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from mitmproxy import http

SERVER = "cf-gateway"


def json_response(status: int, body: object, headers: Mapping[str, str] | None = None) -> http.Response:
    """The one place the addon builds a response of its own."""
    return http.Response.make(
        status,
        json.dumps(body, separators=(",", ":")).encode(),
        {"content-type": "application/json", "server": SERVER, **(headers or {})},
    )


def error_response(
    status: int,
    message: str,
    code: str,
    type: str = "invalid_request_error",
    headers: Mapping[str, str] | None = None,
) -> http.Response:
    """An OpenAI-style error made by the proxy itself (never by the gateway or provider)."""
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    return json_response(status, body, headers)
