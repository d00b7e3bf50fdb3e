"""Families, routes, path mapping and path safety (cfgw.routes)."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfgw.families import BY_NAME
from cfgw.routes import (
    FAMILY_NAMES,
    PROVIDER_ROUTES,
    ROUTE_NAMES,
    Destination,
    UnsafePath,
    check_target,
    client_path,
    destination,
    family_of,
    map_target,
    route_of,
)

GATEWAY = "/v1/0123456789abcdef0123456789abcdef/test-gw"
PREFIX = GATEWAY + "/compat"


def upstream_of(target: str, mode: str = "compat") -> str:
    return map_target(target, GATEWAY, mode)[1]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/v1/chat/completions", "/chat/completions"),
        ("/chat/completions", "/chat/completions"),
        ("/v1/embeddings", "/embeddings"),
        ("/v1/models", "/models"),
        ("/models?limit=2&after=x", "/models?limit=2&after=x"),
        ("/v1/models?a=%2F&b=&c", "/models?a=%2F&b=&c"),  # query kept byte for byte
        ("/v1?x=1", "?x=1"),
        ("/v1", ""),
        ("/v1/", "/"),
        ("/", "/"),
        ("/v1x/chat", "/v1x/chat"),  # only exactly the /v1 segment is dropped
        ("/v1/v1/chat/completions", "/v1/chat/completions"),  # just one segment
        ("/v2/chat/completions", "/v2/chat/completions"),
        ("/v1/files/file-abc%20def", "/files/file-abc%20def"),
        ("/responses", "/responses"),  # with cf_routes=compat: the gateway's to refuse (2019)
    ],
)
def test_compat_path_table(target, expected):
    path, sep, query = target.partition("?")
    assert client_path(path) + sep + query == expected
    assert upstream_of(target) == PREFIX + expected


@pytest.mark.parametrize(
    ("target", "family", "route", "upstream"),
    [
        ("/v1/chat/completions", "chat", "compat", "/compat/chat/completions"),
        ("/chat/completions?x=1", "chat", "compat", "/compat/chat/completions?x=1"),
        ("/v1/embeddings", "other", "compat", "/compat/embeddings"),
        ("/v1/models", "other", "compat", "/compat/models"),
        ("/v1/messages", "messages", "anthropic", "/anthropic/v1/messages"),
        ("/v1/messages?beta=true", "messages", "anthropic", "/anthropic/v1/messages?beta=true"),
        ("/v1/messages/count_tokens", "messages", "anthropic", "/anthropic/v1/messages/count_tokens"),
        ("/messages", "messages", "anthropic", "/anthropic/v1/messages"),
        ("/v1/messagesx", "other", "compat", "/compat/messagesx"),
        ("/v1/responses", "responses", "openai", "/openai/responses"),
        (
            "/responses/resp_1/input_items?limit=2",
            "responses",
            "openai",
            "/openai/responses/resp_1/input_items?limit=2",
        ),
        ("/v1/responses/resp_1/cancel", "responses", "openai", "/openai/responses/resp_1/cancel"),
        ("/v1/responsesx", "other", "compat", "/compat/responsesx"),
    ],
)
def test_auto_routes(target, family, route, upstream):
    path = target.partition("?")[0]
    assert family_of(path) == family
    dest, full = map_target(target, GATEWAY, "auto")
    assert dest == Destination(route, upstream.partition("?")[0])
    assert full == GATEWAY + upstream
    assert route_of(full.partition("?")[0], GATEWAY) == route


def test_compat_mode_sends_every_family_to_compat_keeping_the_family():
    assert destination("/v1/messages", "compat") == Destination("compat", "/compat/messages")
    assert destination("/v1/responses/r1", "compat") == Destination("compat", "/compat/responses/r1")
    assert family_of("/v1/messages") == "messages"  # errors still in the Anthropic shape


def test_route_of_rejects_foreign_paths():
    assert route_of("/v1/other/gw/compat/x", GATEWAY) is None
    assert route_of(GATEWAY + "/evil/x", GATEWAY) is None
    assert route_of(GATEWAY + "compat/x", GATEWAY) is None


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../x",
        "/../../v1/other/gw/compat/chat",
        "/./chat/completions",
        "/chat/..",
        "/chat/.",
        "/..;/admin",
        "/chat/%2e%2e/x",
        "/chat/%2E%2E/x",
        "/chat/.%2e/x",
        "/chat%2fcompletions",
        "/chat%2Fcompletions",
        "/chat%5ccompletions",
        "/chat%5Ccompletions",
        "/chat\\completions",
        "/chat//completions",
        "//chat/completions",
        "/chat/%252e%252e/x",  # double encoding
        "/chat/%00",
        "/chat/%0a",
        "/chat/%7f",
        "/chat/%c0%ae",  # overlong UTF-8 dot
        "/chat/%zz",
        "/chat/%2",
        "/chat/\x00",
        "/chat/\r\nX: y",
        "/chat completions",
        "/chät",
        "/chat?x=\x01",
        "chat/completions",
        "*",
        "",
        "http://evil.example/chat",
    ],
)
def test_unsafe_targets_are_refused(target):
    for mode in ("auto", "compat"):
        with pytest.raises(UnsafePath):
            map_target(target, GATEWAY, mode)


def test_refusal_messages_say_why():
    with pytest.raises(UnsafePath, match="dot segment"):
        check_target("/a/../b")
    with pytest.raises(UnsafePath, match="%2f"):
        check_target("/a%2fb")


def _escapes_prefix(upstream_target: str, prefix: str) -> bool:
    """Would any decoding/normalising reader see a path outside the route's prefix?"""
    path = upstream_target.partition("?")[0]
    for _ in range(3):  # decode repeatedly, like a chain of careless intermediaries
        path = urllib.parse.unquote(path)
    path = path.replace("\\", "/")
    parts: list[str] = []
    for seg in path.split("/")[1:]:
        if seg in ("..", "..;"):
            if parts:
                parts.pop()
        elif seg not in (".", ""):
            parts.append(seg)
    normalised = "/" + "/".join(parts)
    return not (normalised + "/").startswith(prefix + "/")


@settings(max_examples=800, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["/", "..", ".", "%2e", "%2E", "%2f", "%5c", "\\", "%25", "v1", "?", ";", "%"]),
            st.text(max_size=6),
        ),
        max_size=12,
    )
)
@pytest.mark.parametrize("lead", ["", "v1/messages/", "responses/"])
def test_any_target_is_refused_or_stays_under_its_route(lead, pieces):
    target = "/" + lead + "".join(pieces)
    try:
        dest, upstream = map_target(target, GATEWAY, "auto")
    except UnsafePath:
        return
    prefix = (
        GATEWAY
        + {"compat": "/compat", "anthropic": "/anthropic/v1/messages", "openai": "/openai/responses"}[
            dest.route
        ]
    )
    assert upstream.startswith(prefix)
    assert not _escapes_prefix(upstream, prefix if dest.route == "compat" else prefix.rsplit("/", 1)[0]), (
        upstream
    )


def test_every_family_a_path_can_name_has_a_module_and_every_route_a_family():
    assert set(FAMILY_NAMES) == set(BY_NAME)
    assert {family for _, family, _, _ in PROVIDER_ROUTES} <= set(BY_NAME)
    assert ROUTE_NAMES == ("compat", "anthropic", "openai")
