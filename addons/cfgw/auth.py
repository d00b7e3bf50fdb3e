"""Access keys, the credentials the upstream gets, and masking of secret headers.

Keys are compared in constant time over their SHA-256 digests, against every
configured key without stopping early, so timing tells a client nothing.
"""

from __future__ import annotations

import hashlib
import hmac

from mitmproxy import http

from cfgw.config import Settings

SECRET_HEADERS = ("authorization", "cf-aig-authorization", "x-api-key", "api-key", "proxy-authorization")
MASK = "********"


def bearer(value: str) -> str | None:
    """The credential in 'Bearer <token>' (scheme case-insensitive), else None."""
    scheme, _, token = value.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def presented_key(headers: http.Headers) -> str | None:
    """What a client sends as its key: 'Authorization: Bearer <key>' or 'x-api-key: <key>'."""
    return bearer(headers.get("authorization", "")) or headers.get("x-api-key") or None


def key_matches(key: str | None, keys: tuple[str, ...]) -> bool:
    """True if key is one of keys; the time taken does not depend on which, or how close."""
    candidate = hashlib.sha256((key or "").encode()).digest()
    found = False
    for k in keys:
        found |= hmac.compare_digest(candidate, hashlib.sha256(k.encode()).digest())
    return found and key is not None


def mask(value: str) -> str:
    """A fixed mask keeping the scheme word and at most the last 4 characters of long secrets."""
    scheme, sep, rest = value.partition(" ")
    if sep and scheme.lower() in ("bearer", "basic", "token"):
        return f"{scheme} {mask(rest.strip())}"
    if value.startswith(MASK):
        return value
    return MASK + value[-4:] if len(value) >= 16 else MASK


def mask_headers(headers: http.Headers) -> None:
    """Mask every secret header value in place (all occurrences of each name)."""
    present = {name.lower() for name in headers}
    for name in SECRET_HEADERS:
        if name in present:
            headers.set_all(name, [mask(v) for v in headers.get_all(name)])


def is_masked(value: str) -> bool:
    return value.startswith(MASK) or value.partition(" ")[2].startswith(MASK)


def client_headers_to_drop(headers: http.Headers, s: Settings) -> list[str]:
    drop = [n for n in headers if s.proxy_keys and n.lower().startswith("cf-aig-")]
    return drop + (["authorization", "x-api-key"] if s.drop_client_keys else [])


def set_credentials(headers: http.Headers, s: Settings) -> None:
    """The upstream's credentials: the client's keys removed or kept, the proxy's token added.

    With access keys the client's headers carry the access key and its cf-aig-* headers
    could change the operator's logging, caching or cost: they are removed. The REST API
    takes its token in Authorization, so a client key there would be taken for it.
    """
    for name in client_headers_to_drop(headers, s):
        headers.pop(name, None)
    if s.api == "rest":
        headers.pop("cf-aig-authorization", None)
        headers["authorization"] = f"Bearer {s.token}"  # a REST proxy always has its API token
        headers["cf-aig-gateway-id"] = s.gateway_id
    elif s.token and is_masked(headers.get("cf-aig-authorization", MASK)):  # absent, or masked: a replay
        headers["cf-aig-authorization"] = f"Bearer {s.token}"
