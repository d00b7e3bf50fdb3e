"""What the proxy answers itself, decided from the request's headers before its body is read.

Everything a client can get without reaching the upstream lives here, checked in order:
not configured, WebSocket upgrades, health, CORS preflights, the browser guard, access
keys, metrics, the root, and the route. A request that passes is *admitted*: only those
are rewritten and forwarded.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from mitmproxy import http
from mitmproxy.proxy import mode_specs

from cfgw import auth, families, routes
from cfgw.config import Settings, is_loopback
from cfgw.metrics import CONTENT_TYPE, Metrics

KILL = "kill"
SMALL_BODY = 1 << 20  # an unauthenticated request body larger than this is cut off unread
CORS_HEADERS = "authorization, content-type, x-api-key, anthropic-version, anthropic-beta, openai-beta"


def local(flow: http.HTTPFlow, status: int, code: str, message: str, **headers: str) -> http.Response:
    """An answer in the error shape of the client's family."""
    family = routes.family_of(flow.request.path)
    body = families.error_body(family, status, code, message)
    return http.Response.make(status, body, {"content-type": "application/json", **headers})


def answer(flow: http.HTTPFlow, s: Settings | None, metrics: Metrics) -> http.Response | str | None:
    """The local answer for a request, KILL to cut it off unread, or None to admit it."""
    if s is None:
        return local(flow, 503, "not_configured", "cf-gateway has no valid configuration; see its log")
    return before_keys(flow, s) or check_key(flow, s) or after_keys(flow, s, metrics)


def before_keys(flow: http.HTTPFlow, s: Settings) -> http.Response | None:
    """Answers anyone gets: WebSocket refusal, health, CORS preflights, the browser guard."""
    request = flow.request
    if request.headers.get("upgrade", "h2c").lower() != "h2c":  # WebSocket or anything that leaves HTTP
        return local(
            flow,
            426,
            "websocket_not_supported",
            "this proxy does not relay WebSockets: send HTTP requests (streamed with server-sent events)",
        )
    if is_health_check(request):
        return http.Response.make(200, b"ok\n", {"content-type": "text/plain"})
    if request.method == "OPTIONS":
        return preflight(flow, s)
    refused = browser_refusal(flow, s)
    if refused and flow.is_replay != "request":
        return local(flow, 403, "cross_site_request", refused)
    return None


def is_health_check(request: http.Request) -> bool:
    return request.path == "/healthz" and request.method in ("GET", "HEAD")


def check_key(flow: http.HTTPFlow, s: Settings) -> http.Response | str | None:
    """With access keys, a request needs one; the key is masked on the flow once checked.
    A replay from mitmweb is the operator's and needs none."""
    if not s.proxy_keys or flow.is_replay == "request":
        return None
    ok = auth.key_matches(auth.presented_key(flow.request.headers), s.proxy_keys.keys)
    auth.mask_headers(flow.request.headers)
    return None if ok else refuse_key(flow)


def after_keys(flow: http.HTTPFlow, s: Settings, metrics: Metrics) -> http.Response | None:
    """Metrics, the root, and the route; a request that passes is admitted."""
    request, meta = flow.request, flow.metadata["cf_gateway"]
    if request.path == "/metrics":
        return http.Response.make(200, metrics.text(), {"content-type": CONTENT_TYPE})
    if request.path in ("/", "/v1", "/v1/"):
        return http.Response.make(200, b"cf-gateway\n", {"content-type": "text/plain"})
    target = meta.get("target") or request.path  # a replay keeps the client's own target
    try:
        route = routes.route(target, s.api)
    except routes.Refused as e:
        return local(flow, e.status, e.code, str(e))
    meta.update(admitted=True, target=target, family=route.family, upstream=route.upstream, api=s.api)
    return None


def refuse_key(flow: http.HTTPFlow) -> http.Response | str:
    """401 for a missing or wrong access key; a large or unsized body is not read for it."""
    length = body_length(flow.request)
    if length is None or length > SMALL_BODY:
        return KILL
    return local(
        flow, 401, "invalid_proxy_key",
        "a valid access key is required (Authorization: Bearer <key>, or x-api-key)",
        **{"www-authenticate": 'Bearer realm="cf-gateway"'},
    )  # fmt: skip


def body_length(request: http.Request) -> int | None:
    """The body's size as its headers declare it; None when they cannot tell (HTTP/1 chunked,
    or an HTTP/2 or HTTP/3 request without content-length, whose body ends with its stream)."""
    length = request.headers.get("content-length")
    if length is not None:
        return int(length) if length.isdigit() else None
    if request.http_version.startswith("HTTP/1"):
        return None if "transfer-encoding" in request.headers else 0
    return 0 if request.method in ("GET", "HEAD") else None


def preflight(flow: http.HTTPFlow, s: Settings) -> http.Response:
    """CORS preflights are always answered here; allow headers only for allowed origins."""
    origin = flow.request.headers.get("origin", "")
    headers = {}
    if origin.lower() in s.allowed_origins:
        headers = {
            "access-control-allow-origin": origin,
            "access-control-allow-methods": "GET, POST, DELETE, OPTIONS",
            "access-control-allow-headers": CORS_HEADERS,
            "vary": "origin",
        }
    return http.Response.make(204, b"", headers)


def browser_refusal(flow: http.HTTPFlow, s: Settings) -> str | None:
    """Why a request may come from a web page spending the proxy's credential, else None.

    Only a proxy that injects a credential without access keys is guarded: with keys the
    key is the guard. DNS rebinding shows as a foreign Host; cross-site pages as Origin or
    Sec-Fetch-Site.
    """
    if not s.unguarded:
        return None
    host = host_name(flow.request.host_header or "")
    if not own_host(host, flow.client_conn.sockname[0], s.allowed_hosts):
        return f"Host {host!r} is not this proxy: add it to cf_allowed_hosts (env CF_ALLOWED_HOSTS)"
    if cross_site(flow.request.headers, s.allowed_origins):
        return "cross-site browser requests are refused: add the origin to cf_allowed_origins"
    return None


def host_name(host_header: str) -> str:
    """The name in a Host header, without its port; a malformed one ("[::1") as it came."""
    try:
        return urlsplit("//" + host_header).hostname or ""
    except ValueError:
        return host_header


def own_host(host: str, listener: str, allowed: frozenset[str]) -> bool:
    """A loopback name, the address the client connected to, or an allowed name (no Host: HTTP/1.0)."""
    return not host or is_loopback(host) or host in (listener, *allowed)


def allow_origin(flow: http.HTTPFlow, s: Settings | None) -> None:
    """An allowed origin may read the answer (a preflight alone does not let it)."""
    origin = flow.request.headers.get("origin", "")
    if s and flow.response and origin.lower() in s.allowed_origins:
        flow.response.headers["access-control-allow-origin"] = origin
        flow.response.headers["vary"] = "origin"


def cross_site(headers: http.Headers, allowed: frozenset[str]) -> bool:
    origin = headers.get("origin", "").lower()
    return bool(origin and origin not in allowed) or headers.get("sec-fetch-site", "").lower() == "cross-site"


def check_listeners(s: Settings, modes: Sequence[str], listen_host: str) -> None:
    """Refuse to inject a credential without access keys where others could reach it."""
    exposed = [spec for spec in modes if reachable(spec, listen_host)]
    if s.unguarded and not s.open_proxy and exposed:
        raise ValueError(
            f"cf-gateway: refusing to inject the token for anyone who can reach the listener {exposed[0]!r}: "
            "set access keys (PROXY_KEYS), listen only on 127.0.0.1 in reverse mode (HOST_ADDR=127.0.0.1 "
            "with run.sh), or set cf_open_proxy=on (env CF_OPEN_PROXY) if something else guards it"
        )


def reachable(spec: str, listen_host: str) -> bool:
    """Whether others could reach a listener: any but a reverse listener on loopback."""
    mode = mode_specs.ProxyMode.parse(spec)
    return not (isinstance(mode, mode_specs.ReverseMode) and is_loopback(listen_address(mode, listen_host)))


def listen_address(mode: mode_specs.ProxyMode, listen_host: str) -> str:
    return mode.listen_host(listen_host) or "0.0.0.0"


def warnings(s: Settings, options) -> list[str]:
    """Settings that work but are likely a mistake."""
    hosts = [listen_address(mode_specs.ProxyMode.parse(m), options.listen_host) for m in options.mode]
    checks = (
        (
            s.api == "rest" and bool(options.cf_token),
            "CF_AIG_TOKEN is unused with cf_api=rest (CLOUDFLARE_API_TOKEN is used)",
        ),
        (
            bool(options.stream_large_bodies),
            "stream_large_bodies is set: larger requests are streamed before they can be rewritten, "
            "and fail with 502; unset it",
        ),
        (
            options.connection_strategy == "eager",
            "connection_strategy=eager: an unreachable reverse target gives clients an empty reply "
            "instead of a 502; use --set connection_strategy=lazy",
        ),
        (
            bool(s.proxy_keys) and not options.certs and not all(map(is_loopback, hosts)),
            "access keys travel in clear on a non-loopback listener without TLS; see docs/security.md "
            "(mitmproxy's certs option, or a TLS-terminating balancer)",
        ),
    )
    return [f"cf-gateway: {message}" for found, message in checks if found]


def unrestorable(flow: http.HTTPFlow, s: Settings) -> http.Response | None:
    """A replayed flow whose client key was masked cannot be sent: the mask is not the key."""
    if flow.is_replay != "request" or s.drop_client_keys:
        return None
    headers = flow.request.headers
    if any(auth.is_masked(v) for name in ("authorization", "x-api-key") for v in headers.get_all(name)):
        return local(
            flow, 400, "unrestorable_secret",
            "this replay carries a masked client key: type the key into the header, or send it again",
        )  # fmt: skip
    return None
