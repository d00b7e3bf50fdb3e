"""Access keys, gateway-token injection and secret masking.

Keys are compared in constant time over their SHA-256 digests, against every
configured key without stopping early, so neither timing nor length tells a
client how close its guess was.
"""

from __future__ import annotations

import hashlib
import hmac

from mitmproxy import http

from cfgw.headers import Fields, header

# Header values that are secrets: masked on the flow once the request has been sent.
SECRET_HEADERS = ("authorization", "cf-aig-authorization", "x-api-key", "api-key", "proxy-authorization")
MASK = "********"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def bearer_token(value: str | None) -> str | None:
    """The credential in 'Bearer <token>' (scheme case-insensitive), else None."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def presented_key(headers: http.Headers) -> str | None:
    """The access key a client sent: 'Authorization: Bearer <key>' (OpenAI SDKs, Claude Code's
    ANTHROPIC_AUTH_TOKEN) or 'x-api-key: <key>' (Anthropic SDKs, Claude Code's ANTHROPIC_API_KEY)."""
    return bearer_token(header(headers, b"authorization")) or header(headers, b"x-api-key") or None


def key_matches(token: str | None, digests: tuple[bytes, ...]) -> bool:
    """True if token is one of the keys; the time taken does not depend on which, or on how close."""
    candidate = digest(token or "")
    found = False
    for d in digests:
        found |= hmac.compare_digest(candidate, d)
    return found and token is not None


def mask(value: str) -> str:
    """A fixed mask keeping the scheme word and at most the last 4 characters of long secrets."""
    scheme, sep, rest = value.partition(" ")
    if sep and scheme.lower() in ("bearer", "basic", "token"):
        return f"{scheme} {mask(rest.strip())}"
    if value.startswith(MASK):
        return value  # already masked: masking twice must not change it
    return MASK + value[-4:] if len(value) >= 16 else MASK


SECRET_NAMES = frozenset(name.encode() for name in SECRET_HEADERS)
_MASK = MASK.encode()


def mask_field(value: bytes) -> bytes:
    return mask(value.decode("latin-1")).encode("latin-1")


def is_masked(value: bytes) -> bool:
    """Whether a header value is one of our masks ('********cdef', 'Bearer ********')."""
    return value.startswith(_MASK) or value.partition(b" ")[2].strip().startswith(_MASK)


Secret = tuple[bytes, bytes, bytes]
"""A masked header: (lower-case name, masked value, real value)."""


def redact(headers: http.Headers) -> tuple[Secret, ...]:
    """Mask every secret header value in place (all occurrences of each name); returns the ones
    that were not masks already, in header order, for the replay stash.

    One pass over the raw fields: this runs for every request, and mitmproxy's
    per-name header lookups each scan and re-encode the whole header list.
    """
    fields = headers.fields
    if not any(name.lower() in SECRET_NAMES for name, _ in fields):
        return ()
    out = []
    found = []
    for name, value in fields:
        lower = name.lower()
        if lower in SECRET_NAMES:
            masked = mask_field(value)
            if not is_masked(value):
                found.append((lower, masked, value))
            value = masked
        out.append((name, value))
    headers.fields = tuple(out)
    return tuple(found)


CLIENT_KEY_HEADERS = ("authorization", "x-api-key")
_CLIENT_KEY_NAMES = frozenset(name.encode() for name in CLIENT_KEY_HEADERS)
GATEWAY_HEADER_PREFIX = b"cf-aig-"


def with_credentials(
    fields: Fields,
    token: str | None,
    key_mode: bool,
    strip_gateway: bool,
    drop_keys: bool | None = None,
) -> Fields:
    """The header fields the gateway gets for credentials, in one pass.

    ``drop_keys`` (default: key mode) removes the client's Authorization and x-api-key:
    in key mode they carry the access key, and any Authorization reaching the gateway
    bypasses its stored keys (BYOK / Unified Billing). Key mode: the proxy's token wins
    over a client's cf-aig-authorization. ``strip_gateway`` drops every other client
    ``cf-aig-*`` header (logging, caching, cost) too. Otherwise the token is added only
    when the client sent none.
    """
    drop_keys = key_mode if drop_keys is None else drop_keys
    if key_mode or strip_gateway or drop_keys:
        drop = _CLIENT_KEY_NAMES if drop_keys else frozenset()
        kept = []
        for name, value in fields:
            lower = name.lower()
            if lower in drop or (
                (strip_gateway or (key_mode and token)) and lower == b"cf-aig-authorization"
            ):
                continue
            if strip_gateway and lower.startswith(GATEWAY_HEADER_PREFIX):
                continue
            kept.append((name, value))
        fields = tuple(kept)
    if token and not any(name.lower() == b"cf-aig-authorization" for name, _ in fields):
        fields = (*fields, (b"cf-aig-authorization", f"Bearer {token}".encode()))
    return fields
