"""Families, routes, path mapping and path safety (cfgw.routes)."""

from __future__ import annotations

import re
import urllib.parse

import pytest
from hypothesis import example, given, settings
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


# --- The per-request checks were made cheaper (issue 13); these are the implementations they replaced,
# --- kept verbatim so that property tests can prove the answers did not change.

_REFERENCE_FORBIDDEN_ESCAPES = {f"{b:02X}" for b in (*range(0x20), *range(0x7F, 0x100))} | {
    "2E",  # .
    "2F",  # /
    "5C",  # \
    "25",  # %
}
_REFERENCE_ESCAPE_RE = re.compile(r"%(.{0,2})", re.DOTALL)
_REFERENCE_HEX2_RE = re.compile(r"[0-9A-Fa-f]{2}")


def _reference_under(path: str, prefix: str) -> bool:
    return path == prefix or (path.startswith(prefix) and path[len(prefix)] == "/")


def reference_client_path(path: str) -> str:
    return path[3:] if _reference_under(path, "/v1") else path


def reference_family_of(path: str) -> str:
    for prefix, family, _, _ in PROVIDER_ROUTES:
        if _reference_under(path, prefix):
            return family
    return "chat" if reference_client_path(path) == "/chat/completions" else "other"


def reference_destination(path: str, mode: str) -> Destination:
    if mode == "auto":
        for prefix, _, route, upstream in PROVIDER_ROUTES:
            if _reference_under(path, prefix):
                return Destination(route, upstream + path[len(prefix) :])
    return Destination("compat", "/compat" + reference_client_path(path))


def reference_check_target(target: str) -> None:
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
    for m in _REFERENCE_ESCAPE_RE.finditer(path):
        code = m.group(1)
        if not _REFERENCE_HEX2_RE.fullmatch(code):
            raise UnsafePath("the path contains a malformed percent-escape")
        if code.upper() in _REFERENCE_FORBIDDEN_ESCAPES:
            raise UnsafePath(f"the path contains the encoded character %{code}")


def reference_map_target(target: str, gateway_prefix: str, mode: str = "auto") -> tuple[Destination, str]:
    reference_check_target(target)
    path, sep, query = target.partition("?")
    dest = reference_destination(path, mode)
    return dest, gateway_prefix + dest.path + sep + query


def outcome(fn, *args):
    """What a call answered: its result, or the exception's type and message."""
    try:
        return "returned", fn(*args)
    except Exception as e:  # any difference must show, an unexpected error too
        return type(e), str(e)


# Characters each check looks at, and the neighbours of the allowed range 0x21-0x7E.
_PRINTABLE = [*"/.%?\\#;:@&=+~!-_*'()[]", *"0123456789abcdefABCDEFgGzZ"]
_REFUSED = "\x00\t\n\r\x1f \x7f\x80\x85\xa0\xffé\u0131\u2028\ufeff\ud800\U0001f600"
_PIECES = (
    "/ // .. /. ./ %2e %2E %2f %2F %5c %5C %25 %00 %7f %7e %c0 %20 %41 %% %4 %g1 v1 /v1 /messages /responses "
    "/chat/completions"
).split()
_target_pieces = st.lists(
    st.one_of(
        st.sampled_from(_PRINTABLE),
        st.sampled_from(_PIECES),
        st.text("abcxyz09-_~", min_size=1, max_size=4),  # plain segments, so that many targets pass
    ),
    max_size=12,
)


def _target(path: list[str], query: list[str] | None, refused: tuple[int, str] | None) -> str:
    target = "/" + "".join(path) + ("" if query is None else "?" + "".join(query))
    if refused is None:
        return target
    at = refused[0] % (len(target) + 1)
    return target[:at] + refused[1] + target[at:]


# One refused character anywhere refuses the whole target, so only about a quarter of them get one.
targets = st.builds(
    _target,
    _target_pieces,
    st.none() | _target_pieces,
    st.one_of(
        st.none(),
        st.none(),
        st.none(),
        st.tuples(st.integers(0, 60), st.sampled_from(_REFUSED) | st.characters()),
    ),
)


@settings(max_examples=400, deadline=None)
@given(targets)
@example("/v1/chat/completions")
@example("/v1/models?limit=2&after=x")
@example("/a/.b?%zz")  # the query is not checked for escapes or dot segments
@example("/a%2e/..")  # dot segment reported before the escape
@example("/a%zz%2e")  # the first escape decides the message
@example("/a%%2e")  # escapes do not overlap: '%%2' is malformed
@example("/a%2\\")  # backslash reported before the malformed escape
@example("/ /..")  # the character check runs over the whole target first
@example("")
@example("*")
@example("\\x")
@example("./x")
@example("http://x/y")
@example("\x00/x")
def test_check_target_answers_as_before(target):
    assert outcome(check_target, target) == outcome(reference_check_target, target)
    for mode in ("auto", "compat"):
        expected = outcome(reference_map_target, target, GATEWAY, mode)
        assert outcome(map_target, target, GATEWAY, mode) == expected


@pytest.mark.parametrize("code", [chr(c) for c in range(0x100)] + ["\ud800", "\U0010ffff"])
def test_every_character_is_judged_as_before(code):
    for target in ("/a" + code, "/a?" + code, code + "/a", "/a/" + code + "b", "/a%" + code + "0"):
        assert outcome(check_target, target) == outcome(reference_check_target, target)


def test_every_two_character_escape_is_judged_as_before():
    alphabet = "0123456789abcdefABCDEFgG%/.~-"
    for a in alphabet:
        for b in alphabet:
            for target in (f"/x%{a}{b}", f"/x%{a}{b}/y", f"/x%{a}"):
                assert outcome(check_target, target) == outcome(reference_check_target, target), target


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([*_PIECES, "x", "", "?"]), max_size=6).map("".join))
@example("")
@example("/v1")
@example("/v1x")
@example("/messages")
def test_family_and_destination_answer_as_before(path):
    assert family_of(path) == reference_family_of(path)
    assert client_path(path) == reference_client_path(path)
    for mode in ("auto", "compat"):
        assert outcome(destination, path, mode) == outcome(reference_destination, path, mode)
