"""Access keys, gateway-token injection and secret masking.

Keys are compared in constant time over their SHA-256 digests, against every
configured key without stopping early, so neither timing nor length tells a
client how close its guess was.
"""

from __future__ import annotations

import hashlib
import hmac

from mitmproxy import http

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


_SECRET_NAMES = frozenset(name.encode() for name in SECRET_HEADERS)


def _mask_field(value: bytes) -> bytes:
    return mask(value.decode("latin-1")).encode("latin-1")


def redact(headers: http.Headers) -> None:
    """Mask every secret header value in place (all occurrences of each name).

    One pass over the raw fields: this runs for every request, and mitmproxy's
    per-name header lookups each scan and re-encode the whole header list.
    """
    fields = headers.fields
    if any(name.lower() in _SECRET_NAMES for name, _ in fields):
        headers.fields = tuple(
            (name, _mask_field(value)) if name.lower() in _SECRET_NAMES else (name, value)
            for name, value in fields
        )


def inject_token(request: http.Request, token: str | None) -> None:
    """Add the gateway token unless the client sent its own cf-aig-authorization."""
    if token and "cf-aig-authorization" not in request.headers:
        request.headers["cf-aig-authorization"] = f"Bearer {token}"
