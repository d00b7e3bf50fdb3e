"""Path mapping and path safety (cfgw.paths)."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfgw.paths import UnsafePath, check_target, client_path, compat_prefix, map_target

PREFIX = compat_prefix("0123456789abcdef0123456789abcdef", "test-gw")


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
        ("/responses", "/responses"),  # unsupported sub-paths are the gateway's to refuse
    ],
)
def test_client_path_table(target, expected):
    assert client_path(target) == expected
    assert map_target(target, PREFIX) == PREFIX + expected


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
    with pytest.raises(UnsafePath):
        map_target(target, PREFIX)


def test_refusal_messages_say_why():
    with pytest.raises(UnsafePath, match="dot segment"):
        check_target("/a/../b")
    with pytest.raises(UnsafePath, match="%2f"):
        check_target("/a%2fb")


def _escapes_prefix(upstream_target: str) -> bool:
    """Would any decoding/normalising reader see a path outside the compat prefix?"""
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
    return not (normalised + "/").startswith(PREFIX + "/")


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
def test_any_target_is_refused_or_stays_under_the_prefix(pieces):
    target = "/" + "".join(pieces)
    try:
        upstream = map_target(target, PREFIX)
    except UnsafePath:
        return
    assert upstream.startswith(PREFIX)
    assert not _escapes_prefix(upstream), upstream
