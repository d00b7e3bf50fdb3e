"""Admission: what the proxy answers itself, from the request's headers, before any upstream."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from mitmproxy import http

from cfgw import admission
from cfgw.metrics import Metrics
from tests.flows import REVERSE, reverse_flow, settings

KEY = "key-alpha-1"
TOKEN = settings(cf_token="aig-token")  # injects a credential, no access keys: browser-guarded
KEYS = settings(cf_token="aig-token", cf_proxy_keys=KEY)


def answer(f: http.HTTPFlow, s) -> http.Response | str | None:
    f.metadata["cf_gateway"] = {}
    return admission.answer(f, s, Metrics())


def error_of(response: http.Response) -> dict:
    body = json.loads(response.content)
    return body["error"]


def test_unconfigured_answers_503_in_the_familys_shape():
    response = answer(reverse_flow("/v1/messages"), None)
    assert response.status_code == 503
    assert json.loads(response.content)["type"] == "error"
    assert error_of(response)["code"] == "not_configured"


@pytest.mark.parametrize("path", ["/v1/responses", "/healthz", "/"])
@pytest.mark.parametrize("upgrade", ["websocket", "WebSocket", "websocket, x", "websocket2", "TLS/1.2"])
def test_websocket_upgrade_gets_426(path, upgrade):
    f = reverse_flow(path, method="GET", headers={"upgrade": upgrade, "connection": "Upgrade"})
    response = answer(f, KEYS)  # before the key check too: Codex switches to HTTP at once
    assert response.status_code == 426
    assert error_of(response)["code"] == "websocket_not_supported"


@pytest.mark.parametrize("s", [KEYS, TOKEN])
def test_healthz_needs_no_key_and_passes_the_browser_guard(s):
    f = reverse_flow(
        "/healthz", method="GET", headers={"origin": "https://evil.example"}, host="evil.example"
    )
    response = answer(f, s)
    assert (response.status_code, response.content) == (200, b"ok\n")


def test_preflight_for_an_allowed_origin_gets_cors_headers():
    s = settings(cf_token="aig-token", cf_allowed_origins="https://app.example")
    f = reverse_flow(method="OPTIONS", headers={"origin": "https://App.example"})
    response = answer(f, s)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://App.example"
    assert "x-api-key" in response.headers["access-control-allow-headers"]


def test_preflight_for_another_origin_gets_none():
    s = settings(cf_token="aig-token", cf_allowed_origins="https://app.example")
    response = answer(reverse_flow(method="OPTIONS", headers={"origin": "https://evil.example"}), s)
    assert response.status_code == 204
    assert not any(name.startswith("access-control-") for name in response.headers)


@pytest.mark.parametrize(
    ("headers", "host", "says"),
    [
        ({}, "evil.example:3000", "cf_allowed_hosts"),
        ({"origin": "https://evil.example"}, "127.0.0.1:3000", "cf_allowed_origins"),
        ({"origin": "null"}, "127.0.0.1:3000", "cf_allowed_origins"),
        ({"sec-fetch-site": "cross-site"}, "localhost:3000", "cf_allowed_origins"),
        ({}, "[evil.example", "cf_allowed_hosts"),
    ],
)
def test_browser_guard_refuses_pages_spending_the_token(headers, host, says):
    response = answer(reverse_flow(headers=headers, host=host), TOKEN)
    assert response.status_code == 403
    assert error_of(response)["code"] == "cross_site_request" and says in error_of(response)["message"]


@pytest.mark.parametrize(
    ("headers", "host"),
    [
        ({}, "127.0.0.1:3000"),
        ({}, "[::1]:3000"),
        ({}, "proxy.internal:3000"),
        ({"origin": "https://app.example", "sec-fetch-site": "same-site"}, "localhost"),
    ],
)
def test_browser_guard_lets_own_hosts_and_allowed_origins_through(headers, host):
    s = settings(
        cf_token="aig-token", cf_allowed_hosts="proxy.internal", cf_allowed_origins="https://app.example"
    )
    assert answer(reverse_flow(headers=headers, host=host), s) is None


@pytest.mark.parametrize("s", [settings(), KEYS], ids=["no-token", "access-keys"])
def test_browser_guard_only_guards_a_token_without_access_keys(s):
    f = reverse_flow(
        headers={"origin": "https://evil.example", "authorization": f"Bearer {KEY}"}, host="evil.example"
    )
    assert answer(f, s) is None


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer wrong-key-1"}, {"x-api-key": "wrong-key-1"}]
)
def test_missing_or_wrong_key_with_a_small_body_gets_401(headers):
    response = answer(reverse_flow(body={"model": "m"}, headers=headers), KEYS)
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_proxy_key"
    assert response.headers["www-authenticate"] == 'Bearer realm="cf-gateway"'


@pytest.mark.parametrize(
    "headers",
    [
        {"content-length": str(admission.SMALL_BODY + 1)},
        {"content-length": "12, 12"},
        {"transfer-encoding": "chunked"},
    ],
    ids=["big", "odd-length", "chunked"],
)
def test_missing_key_with_a_big_or_unsized_body_is_killed_unread(headers):
    f = reverse_flow(headers=headers)
    assert answer(f, KEYS) == admission.KILL


@pytest.mark.parametrize("headers", [{"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}])
def test_right_key_is_admitted_and_masked_on_the_flow(headers):
    f = reverse_flow("/v1/messages?beta=true", headers=headers)
    assert answer(f, KEYS) is None
    assert KEY not in str(f.request.headers)
    assert f.metadata["cf_gateway"] | {} == {
        "admitted": True, "target": "/v1/messages?beta=true", "family": "messages",
        "upstream": "/anthropic/v1/messages?beta=true", "api": "gateway",
    }  # fmt: skip


def test_wrong_key_is_masked_too():
    f = reverse_flow(headers={"authorization": "Bearer guessed-key-0123456789"})
    answer(f, KEYS)
    assert f.request.headers["authorization"] == "Bearer ********6789"


def test_mitmweb_replay_needs_no_key_and_passes_the_guard():
    f = reverse_flow(headers={"origin": "https://evil.example"})
    f.is_replay = "request"
    assert answer(f, KEYS) is None
    assert answer(f, TOKEN) is None


def test_metrics_and_root_are_answered_after_the_key():
    assert answer(reverse_flow("/metrics", method="GET"), KEYS).status_code == 401
    metrics = answer(reverse_flow("/metrics", method="GET", headers={"x-api-key": KEY}), KEYS)
    assert metrics.status_code == 200 and b"cf_gateway_requests" in metrics.content
    assert answer(reverse_flow("/", method="HEAD"), TOKEN).status_code == 200


def test_refused_route_answers_in_the_familys_shape():
    response = answer(reverse_flow("/v1/v1/messages"), TOKEN)
    assert response.status_code == 404
    assert json.loads(response.content)["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("modes", "listen_host"),
    [
        (["regular@127.0.0.1:8080"], ""),
        (["reverse:http://127.0.0.1:0@0.0.0.0:3000"], ""),
        (["reverse:http://127.0.0.1:0@3000"], ""),
        (["reverse:http://127.0.0.1:0@3000"], "192.168.1.5"),
        ([REVERSE, "socks5@127.0.0.1:1080"], ""),
    ],
)
def test_token_without_keys_is_refused_on_reachable_or_other_listeners(modes, listen_host):
    with pytest.raises(ValueError, match="refusing to inject the token"):
        admission.check_listeners(TOKEN, modes, listen_host)


@pytest.mark.parametrize(
    ("s", "modes"),
    [
        (TOKEN, [REVERSE, "reverse:http://127.0.0.1:0@[::1]:3001"]),
        (TOKEN, ["reverse:http://127.0.0.1:0@localhost:3000"]),
        (KEYS, ["regular@0.0.0.0:8080"]),
        (settings(cf_token="aig-token", cf_open_proxy="on"), ["regular@0.0.0.0:8080"]),
        (settings(), ["regular@0.0.0.0:8080"]),
    ],
)
def test_listeners_accepted(s, modes):
    admission.check_listeners(s, modes, "")


def options(**values) -> SimpleNamespace:
    base = dict(cf_token="", stream_large_bodies=None, connection_strategy="lazy", certs=[], mode=[REVERSE],
                listen_host="")  # fmt: skip
    return SimpleNamespace(**{**base, **values})


def test_no_warnings_for_a_usual_setup():
    assert admission.warnings(KEYS, options()) == []


@pytest.mark.parametrize(
    ("s", "values", "says"),
    [
        (
            settings({"T": "api-tok"}, cf_api="rest", cf_api_token="(from T)"),
            {"cf_token": "x"},
            "CF_AIG_TOKEN is unused",
        ),
        (TOKEN, {"stream_large_bodies": "1m"}, "stream_large_bodies"),
        (TOKEN, {"connection_strategy": "eager"}, "connection_strategy=lazy"),
        (KEYS, {"mode": ["reverse:http://127.0.0.1:0@0.0.0.0:3000"]}, "travel in clear"),
    ],
)
def test_warnings(s, values, says):
    (warning,) = admission.warnings(s, options(**values))
    assert says in warning


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_replay_with_a_masked_client_key_cannot_be_sent(header):
    f = reverse_flow(headers={header: "Bearer ********abcd"})
    f.is_replay = "request"
    response = admission.unrestorable(f, settings(cf_provider_keys="forward"))
    assert response.status_code == 400 and error_of(response)["code"] == "unrestorable_secret"


def test_replay_whose_client_keys_are_dropped_anyway_can_be_sent():
    f = reverse_flow(headers={"authorization": "Bearer ********abcd"})
    f.is_replay = "request"
    assert admission.unrestorable(f, TOKEN) is None


def test_an_h2c_upgrade_offer_is_not_refused():
    """curl --http2 on http:// offers h2c; mitmproxy answers in HTTP/1.1, which is fine."""
    f = reverse_flow(headers={"upgrade": "h2c", "authorization": f"Bearer {KEY}"})
    assert answer(f, KEYS) is None


@pytest.mark.parametrize(("version", "method", "killed"), [
    ("HTTP/2.0", "POST", True), ("HTTP/3", "POST", True),
    ("HTTP/2.0", "GET", False), ("HTTP/1.1", "POST", False),
])  # fmt: skip
def test_a_keyless_body_of_unknown_size_is_cut_off(version, method, killed):
    """An HTTP/2 or HTTP/3 body without content-length ends with its stream: its size is unknown
    until it has all been read, so it is not read for a 401."""
    f = reverse_flow(method=method)
    f.request.http_version = version
    f.request.headers.pop("content-length", None)
    result = answer(f, KEYS)
    assert (result == admission.KILL) is killed
    assert killed or result.status_code == 401


def test_sec_fetch_site_is_compared_without_case():
    f = reverse_flow(body={"model": "m"}, headers={"sec-fetch-site": "Cross-Site"})
    assert answer(f, TOKEN).status_code == 403
