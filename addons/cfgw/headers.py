"""Header values read straight from a message's raw fields, for the per-request hot path.

mitmproxy's ``Headers.get`` re-encodes its key and walks several layers per call (about
1.5 µs each); the addon looks up a handful of headers on every request. These give the
same answer as ``headers.get(name)`` for the lower-case ASCII names the addon asks for:
every value of the name, joined with ", ", decoded as mitmproxy decodes it. Names are
compared byte-wise (ASCII case-insensitive), as the masking of secret headers does.
"""

from __future__ import annotations

from mitmproxy import http


def header(headers: http.Headers, name: bytes) -> str | None:
    """``headers.get(name)``: all values of a lower-case ``name`` joined with ", ", or None."""
    found = None
    for k, v in headers.fields:  # a plain loop: cheaper than a comprehension for a few fields
        if k.lower() == name:
            found = v if found is None else found + b", " + v
    return None if found is None else found.decode("utf-8", "surrogateescape")


def has_header(headers: http.Headers, name: bytes) -> bool:
    """``name in headers`` for a lower-case ``name``."""
    for k, _ in headers.fields:
        if k.lower() == name:
            return True
    return False


Fields = tuple[tuple[bytes, bytes], ...]


def with_header(fields: Fields, name: bytes, value: bytes) -> Fields:
    """``headers[name] = value`` on raw fields: the first field of that name (any case) takes the
    value in place, later ones go, and ``name`` is appended when there was none (as mitmproxy does)."""
    lower = name.lower()
    out = []
    done = False
    for k, v in fields:
        if k.lower() == lower:
            if done:
                continue
            out.append((k, value))
            done = True
        else:
            out.append((k, v))
    if not done:
        out.append((name, value))
    return tuple(out)
