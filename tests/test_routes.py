"""Routes: the family and upstream path of every client path, and the paths refused."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfgw import routes
from cfgw.routes import Refused, Route, route

GATEWAY_TABLE = [
    ("/v1/messages", Route("messages", "/anthropic/v1/messages")),
    ("/v1/messages/count_tokens", Route("messages", "/anthropic/v1/messages/count_tokens")),
    ("/v1/responses", Route("responses", "/openai/responses")),
    ("/v1/responses/resp_1/input_items", Route("responses", "/openai/responses/resp_1/input_items")),
    ("/v1/chat/completions", Route("chat", "/compat/chat/completions")),
    ("/ai/run", Route("run", "/compat/ai/run")),
    ("/v1/ai/run", Route("run", "/compat/ai/run")),
    ("/v1/embeddings", Route("other", "/compat/embeddings")),
    ("/v1/models", Route("other", "/compat/models")),
]
REST_TABLE = [
    ("/v1/messages", Route("messages", "/ai/v1/messages")),
    ("/v1/responses", Route("responses", "/ai/v1/responses")),
    ("/v1/chat/completions", Route("chat", "/ai/v1/chat/completions")),
    ("/ai/run", Route("run", "/ai/run")),
    ("/v1/ai/run", Route("run", "/ai/run")),
]


@pytest.mark.parametrize(("path", "expected"), GATEWAY_TABLE)
def test_gateway_routes(path, expected):
    assert route(path, "gateway") == expected


@pytest.mark.parametrize(("path", "expected"), GATEWAY_TABLE)
def test_gateway_routes_without_v1(path, expected):
    assert route(path.removeprefix("/v1"), "gateway") == expected


@pytest.mark.parametrize(("path", "expected"), REST_TABLE)
def test_rest_routes(path, expected):
    assert route(path, "rest") == expected


@pytest.mark.parametrize("api", ["gateway", "rest"])
def test_query_is_kept_byte_for_byte(api):
    upstream = route("/v1/messages?beta=true&q=%2F%2e+x", api).upstream
    assert upstream.endswith("/messages?beta=true&q=%2F%2e+x")


@pytest.mark.parametrize("api", ["gateway", "rest"])
@pytest.mark.parametrize("path", ["/v1/v1/chat/completions", "/v1/v1/messages", "/v1/v1"])
def test_doubled_v1_is_refused(api, path):
    with pytest.raises(Refused, match="/v1 twice") as e:
        route(path, api)
    assert (e.value.status, e.value.code) == (404, "doubled_v1")


@pytest.mark.parametrize(
    "path", ["/v1/models", "/v1/embeddings", "/v1/messages/count_tokens", "/v1/responses/resp_1"]
)
def test_rest_refuses_what_it_does_not_serve(path):
    with pytest.raises(Refused, match="with cf_api=gateway") as e:
        route(path, "rest")
    assert (e.value.status, e.value.code) == (404, "unsupported_path")


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/v1/messages?beta=true", "messages"),
        ("/messages/count_tokens", "messages"),
        ("/v1/v1/messages", "messages"),
        ("/v1/responses/x", "responses"),
        ("/chat/completions", "chat"),
        ("/v1/ai/run", "run"),
        ("/v1/messagesx", "other"),
        ("/healthz", "other"),
    ],
)
def test_family_of(path, family):
    assert routes.family_of(path) == family


UNSAFE = [
    "/v1/../admin",
    "/v1/chat/completions/..",
    "/v1/./models",
    "/v1/%2e%2e/admin",
    "/v1/%2E./admin",
    "/v1/a%2fb",
    "/v1/a%5Cb",
    "/v1/%252e%252e/admin",
    "/v1/a\\b",
    "/v1//models",
    "/v1/models%",
    "/v1/models%zz",
    "/v1/mod%00els",
    "/v1/mod\x7fels",
    "/v1/mod els",
    "/v1/modèls",
    "/v1/mod%C3%A8ls",
    "*",
    "http://evil.example/v1/models",
]


@pytest.mark.parametrize("api", ["gateway", "rest"])
@pytest.mark.parametrize("target", UNSAFE)
def test_unsafe_paths_are_refused(api, target):
    with pytest.raises(Refused) as e:
        route(target, api)
    assert (e.value.status, e.value.code) == (400, "invalid_path")


def test_a_plain_escape_is_allowed():
    assert route("/v1/responses/resp%5F1", "gateway").upstream == "/openai/responses/resp%5F1"


PIECES = ["/", ".", "..", "%", "%2e", "%2E", "%2f", "%5c", "%25", "%41", "\\", "a", "v1", "?", "\x00",
          "\t", " ", "é", "\x7f", "messages", "chat/completions", "models"]  # fmt: skip
DOT_SEGMENT = re.compile(r"(^|/)\.\.?(/|$)")


@settings(deadline=None)  # a loaded machine is no failure
@given(st.lists(st.sampled_from(PIECES), max_size=12).map(lambda p: "/" + "".join(p)))
def test_no_accepted_target_can_step_outside_its_prefix(target):
    for api in ("gateway", "rest"):
        try:
            upstream = route(target, api).upstream
        except Refused:
            continue
        path = upstream.partition("?")[0]
        for text in (path, unquote(path)):
            assert not DOT_SEGMENT.search(text), target
            assert "\\" not in text and "//" not in text, target
            assert text.isascii() and text.isprintable() and " " not in text, target
        assert not re.search(r"%(2e|2f|5c|25)", path, re.IGNORECASE), target
