"""Access keys, masking, and the credentials the upstream gets in each mode."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from mitmproxy import http

from cfgw import auth
from tests.flows import settings

KEYS = ("key-alpha-1", "key-bravo-22", "key-charlie-333")
API_TOKEN = {"CLOUDFLARE_API_TOKEN": "cf-api-token-1"}


@pytest.mark.parametrize("key", KEYS)
def test_every_key_matches(key):
    assert auth.key_matches(key, KEYS)


@pytest.mark.parametrize("key", [None, "", "key-alpha", "key-alpha-10", "KEY-ALPHA-1", " key-alpha-1"])
def test_other_keys_do_not_match(key):
    assert not auth.key_matches(key, KEYS)


def test_no_key_matches_when_none_are_configured():
    assert not auth.key_matches("key-alpha-1", ())


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"authorization": "Bearer key-1"}, "key-1"),
        ({"authorization": "bearer  key-1 "}, "key-1"),
        ({"x-api-key": "key-2"}, "key-2"),
        ({"authorization": "Basic a2V5", "x-api-key": "key-2"}, "key-2"),
        ({"authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_presented_key(headers, key):
    assert auth.presented_key(http.Headers(**headers)) == key


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("Bearer sk-0123456789abcdef", "Bearer ********cdef"),
        ("sk-0123456789abcdef", "********cdef"),
        ("short-key", "********"),
        ("Bearer short", "Bearer ********"),
        ("Bearer ********cdef", "Bearer ********cdef"),
    ],
)
def test_mask(value, masked):
    assert auth.mask(value) == masked


@hypothesis_settings(deadline=None)  # a loaded machine is no failure
@given(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=5))
def test_a_mask_never_shows_the_secret(secret):
    for value in (secret, f"Bearer {secret}"):
        masked = auth.mask(value)
        assert secret not in masked and auth.is_masked(masked) and auth.mask(masked) == masked


def test_mask_headers_masks_every_secret_header_and_occurrence():
    headers = http.Headers(
        [(b"Authorization", b"Bearer one-secret"), (b"authorization", b"Bearer two-secret"),
         (b"x-api-key", b"three-secret"), (b"cf-aig-authorization", b"Bearer four"),
         (b"api-key", b"five-secret"), (b"proxy-authorization", b"Basic six"), (b"accept", b"*/*")]
    )  # fmt: skip
    auth.mask_headers(headers)
    assert headers.get_all("authorization") == ["Bearer ********", "Bearer ********"]
    assert [headers[n] for n in ("x-api-key", "cf-aig-authorization", "api-key", "proxy-authorization")] == [
        "********", "Bearer ********", "********", "Basic ********"
    ]  # fmt: skip
    assert headers["accept"] == "*/*"


def client_headers(**extra: str) -> http.Headers:
    return http.Headers(authorization="Bearer sk-provider", x_api_key="sk-ant-provider", **extra)


def test_laptop_token_replaces_client_keys():
    headers = client_headers()
    auth.set_credentials(headers, settings(cf_token="aig-token"))
    assert "authorization" not in headers and "x-api-key" not in headers
    assert headers["cf-aig-authorization"] == "Bearer aig-token"


def test_clients_own_gateway_token_is_kept_without_access_keys():
    headers = client_headers(cf_aig_authorization="Bearer clients-own")
    auth.set_credentials(headers, settings(cf_token="aig-token"))
    assert headers["cf-aig-authorization"] == "Bearer clients-own"


def test_forward_keeps_provider_keys_and_adds_the_token():
    headers = client_headers()
    auth.set_credentials(headers, settings(cf_token="aig-token", cf_provider_keys="forward"))
    assert headers["authorization"] == "Bearer sk-provider" and headers["x-api-key"] == "sk-ant-provider"
    assert headers["cf-aig-authorization"] == "Bearer aig-token"


def test_drop_without_a_token_sends_no_credential():
    headers = client_headers()
    auth.set_credentials(headers, settings(cf_provider_keys="drop"))
    assert not {"authorization", "x-api-key", "cf-aig-authorization"} & set(headers)


def test_no_token_forwards_provider_keys_by_default():
    headers = client_headers()
    auth.set_credentials(headers, settings())
    assert headers["authorization"] == "Bearer sk-provider" and "cf-aig-authorization" not in headers


def test_access_keys_remove_the_key_and_every_client_cf_aig_header():
    headers = client_headers(cf_aig_authorization="Bearer clients-own", cf_aig_cache_ttl="3600")
    auth.set_credentials(headers, settings(cf_token="aig-token", cf_proxy_keys="key-alpha-1"))
    assert "authorization" not in headers and "x-api-key" not in headers and "cf-aig-cache-ttl" not in headers
    assert headers["cf-aig-authorization"] == "Bearer aig-token"


def test_rest_sends_only_the_api_token_and_the_gateway_id():
    headers = client_headers(cf_aig_authorization="Bearer clients-own")
    auth.set_credentials(
        headers, settings(API_TOKEN, cf_api="rest", cf_api_token="(from CLOUDFLARE_API_TOKEN)")
    )
    assert headers.get_all("authorization") == ["Bearer cf-api-token-1"]
    assert "x-api-key" not in headers and "cf-aig-authorization" not in headers
    assert headers["cf-aig-gateway-id"] == "test-gw"
