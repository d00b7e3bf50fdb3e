"""Map a client's request target onto the gateway's compat prefix, refusing unsafe paths.

The upstream path must stay under ``/v1/{account}/{gateway}/compat/`` for anyone
who decodes or normalises it later (the gateway, a CDN, a provider). Rather than
trying to normalise, we refuse every form that could step outside: dot
segments, encoded dots/slashes/backslashes/percents, backslashes, empty
segments, and control or non-ASCII characters.
"""

from __future__ import annotations

import re

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
    """The request target could leave the compat prefix; answered with 400, never forwarded."""


def compat_prefix(account_id: str, gateway_id: str) -> str:
    return f"/v1/{account_id}/{gateway_id}/compat"


def check_target(target: str) -> None:
    """Raise UnsafePath if the request target is not a plain, safe origin-form path."""
    if not target.startswith("/"):
        raise UnsafePath("the request target must be a path starting with '/'")
    for ch in target:
        if not ("\x21" <= ch <= "\x7e"):
            raise UnsafePath("the request target contains a control, space or non-ASCII character")
    path = target.partition("?")[0]
    if "\\" in path:
        raise UnsafePath("the path contains a backslash")
    if "//" in path:
        raise UnsafePath("the path contains an empty segment ('//')")
    for segment in path.split("/"):
        if segment.startswith("."):
            raise UnsafePath("the path contains a dot segment")
    for m in _ESCAPE_RE.finditer(path):
        code = m.group(1)
        if not _HEX2_RE.fullmatch(code):
            raise UnsafePath("the path contains a malformed percent-escape")
        if code.upper() in _FORBIDDEN_ESCAPES:
            raise UnsafePath(f"the path contains the encoded character %{code}")


def client_path(target: str) -> str:
    """The compat sub-path a target names: a leading '/v1' segment is dropped, the query kept."""
    path, sep, query = target.partition("?")
    if path == "/v1" or path.startswith("/v1/"):
        path = path[3:]
    return path + sep + query


def map_target(target: str, prefix: str) -> str:
    """Upstream request target for a client target, or UnsafePath."""
    check_target(target)
    return prefix + client_path(target)
