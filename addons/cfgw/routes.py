"""Which family a request belongs to, and where on the gateway it goes; unsafe paths are refused.

| client path                          | family    | upstream (under /v1/{account}/{gateway}) |
|--------------------------------------|-----------|------------------------------------------|
| /v1/messages[/...], /messages[/...]  | messages  | /anthropic/v1/messages[/...]             |
| /v1/responses[/...], /responses[/...]| responses | /openai/responses[/...]                  |
| /v1/chat/completions, /chat/...      | chat      | /compat/chat/completions                 |
| anything else                        | other     | /compat/<path without a leading /v1>     |

With ``cf_routes=compat`` every path goes to compat (the gateway answers Messages and
Responses there with 400/2019, in the client's own error shape). The query is kept
byte for byte.

The upstream path must stay under its route's prefix for anyone who decodes or
normalises it later (the gateway, a CDN, a provider). Rather than trying to
normalise, we refuse every form that could step outside: dot segments, encoded
dots/slashes/backslashes/percents, backslashes, empty segments, and control or
non-ASCII characters.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# Bytes a percent-escape may not stand for: controls, DEL, non-ASCII, and the
# characters that change a path's structure once decoded ('%' covers double encoding).
_FORBIDDEN_ESCAPES = {f"{b:02X}" for b in (*range(0x20), *range(0x7F, 0x100))} | {
    "2E",  # .
    "2F",  # /
    "5C",  # \
    "25",  # %
}
_ESCAPE_RE = re.compile(r"%(.{0,2})", re.DOTALL)
_HEX2_RE = re.compile(r"[0-9A-Fa-f]{2}")


class UnsafePath(ValueError):
    """The request target could leave its route's prefix; answered with 400, never forwarded."""


class Destination(NamedTuple):
    """Where a client path goes: the gateway endpoint, and the path under the gateway prefix."""

    route: str  # 'compat', 'anthropic' or 'openai'
    path: str


# (client path prefix, family, route, upstream path prefix); the first match wins.
PROVIDER_ROUTES = (
    ("/v1/messages", "messages", "anthropic", "/anthropic/v1/messages"),
    ("/messages", "messages", "anthropic", "/anthropic/v1/messages"),
    ("/v1/responses", "responses", "openai", "/openai/responses"),
    ("/responses", "responses", "openai", "/openai/responses"),
)
ROUTE_NAMES = ("compat", *dict.fromkeys(route for _, _, route, _ in PROVIDER_ROUTES))
FAMILY_NAMES = ("chat", "messages", "responses", "other")


# Per request, most paths name no provider route: one startswith over all prefixes says so.
_PROVIDER_PREFIXES = tuple(prefix for prefix, _, _, _ in PROVIDER_ROUTES)


def _under(path: str, prefix: str) -> bool:
    return path == prefix or (path.startswith(prefix) and path[len(prefix)] == "/")


def family_of(path: str) -> str:
    """The API family a client path speaks, whatever route it takes (it decides the error shape)."""
    if path.startswith(_PROVIDER_PREFIXES):
        for prefix, family, _, _ in PROVIDER_ROUTES:
            if _under(path, prefix):
                return family
    return "chat" if path in ("/v1/chat/completions", "/chat/completions") else "other"


def destination(path: str, mode: str) -> Destination:
    """Route and upstream sub-path (no query) for a checked client path; mode is cf_routes."""
    if mode == "auto" and path.startswith(_PROVIDER_PREFIXES):
        for prefix, _, route, upstream in PROVIDER_ROUTES:
            if _under(path, prefix):
                return Destination(route, upstream + path[len(prefix) :])
    return Destination("compat", "/compat" + client_path(path))


def route_of(upstream_path: str, gateway_prefix: str) -> str | None:
    """The route of a path already rewritten under ``gateway_prefix`` (replays), else None."""
    if not upstream_path.startswith(gateway_prefix + "/"):
        return None
    route = upstream_path[len(gateway_prefix) + 1 :].partition("/")[0]
    return route if route in ROUTE_NAMES else None


def check_target(target: str) -> None:
    """Raise UnsafePath if the request target is not a plain, safe origin-form path."""
    _safe_path(target)


def _safe_path(target: str) -> str:
    """The path part of a safe target, else UnsafePath; the checks run in a fixed order, so each
    target always gets the same message. Runs on every request: C-level string tests only, the
    escape scan just for paths that have a '%'."""
    if not target.startswith("/"):
        raise UnsafePath("the request target must be a path starting with '/'")
    # ASCII and printable is 0x20-0x7E; without the space, exactly the allowed 0x21-0x7E.
    if not (target.isascii() and target.isprintable()) or " " in target:
        raise UnsafePath("the request target contains a control, space or non-ASCII character")
    path = target.partition("?")[0]
    if "\\" in path:
        raise UnsafePath("the path contains a backslash")
    if "//" in path:
        raise UnsafePath("the path contains an empty segment ('//')")
    if "/." in path:  # the path starts with '/', so every segment follows one
        raise UnsafePath("the path contains a dot segment")
    if "%" in path:
        for m in _ESCAPE_RE.finditer(path):
            code = m.group(1)
            if not _HEX2_RE.fullmatch(code):
                raise UnsafePath("the path contains a malformed percent-escape")
            if code.upper() in _FORBIDDEN_ESCAPES:
                raise UnsafePath(f"the path contains the encoded character %{code}")
    return path


def client_path(path: str) -> str:
    """The compat sub-path a path names: a leading '/v1' segment is dropped."""
    return path[3:] if path == "/v1" or path.startswith("/v1/") else path


def map_target(target: str, gateway_prefix: str, mode: str = "auto") -> tuple[Destination, str]:
    """(destination, upstream request target with the query kept) for a client target, or UnsafePath."""
    path = _safe_path(target)
    dest = destination(path, mode)
    return dest, gateway_prefix + dest.path + target[len(path) :]  # '?' and the query as they came
