"""FlowInfo: what the addon knows about a flow, and the little it saves on the flow for views and replays."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from cfgw.flowinfo import META, FlowInfo
from cfgw.routes import Destination

UPSTREAM_PATH = "/v1/0123456789abcdef0123456789abcdef/gw/anthropic/v1/messages?beta=true"


def flow(path: str) -> http.HTTPFlow:
    return tflow.tflow(req=tutils.treq(method=b"POST", path=path.encode()))


@pytest.mark.parametrize(
    ("path", "family", "client_path"),
    [
        ("/v1/chat/completions?api_key=secret", "chat", "/v1/chat/completions"),
        ("/chat/completions", "chat", "/chat/completions"),
        ("/v1/messages/count_tokens", "messages", "/v1/messages/count_tokens"),
        ("/v1/responses/resp_1/input_items?limit=5", "responses", "/v1/responses/resp_1/input_items"),
        ("/v1/embeddings", "other", "/v1/embeddings"),
        ("/v1/messagesX", "other", "/v1/messagesX"),
    ],
)
def test_a_new_flow_gets_its_family_and_client_path_without_the_query(path, family, client_path):
    info = FlowInfo.of(flow(path))
    assert (info.family, info.path) == (family, client_path)
    assert (info.local, info.admitted, info.upstream, info.recorder, info.gateway_code) == (
        None,
        False,
        None,
        None,
        None,
    )


def test_save_keeps_family_route_and_client_path_only():
    f = flow("/v1/messages?key=secret")
    info = FlowInfo.of(f)
    info.destination = Destination("anthropic", "/anthropic/v1/messages")
    info.upstream = "https://gateway.ai.cloudflare.com/v1/acc/gw/anthropic/v1/messages"
    info.model = "claude-sonnet-4-5"
    info.save(f)
    assert f.metadata[META] == {"family": "messages", "route": "anthropic", "path": "/v1/messages"}


def test_save_of_a_flow_never_forwarded_has_no_route():
    f = flow("/v1/responses")
    FlowInfo.of(f).save(f)
    assert f.metadata[META] == {"family": "responses", "route": None, "path": "/v1/responses"}


def test_a_replay_keeps_what_the_first_run_saved():
    """A replayed flow's path is already the upstream's: family and client path come from the save."""
    f = flow("/v1/messages")
    FlowInfo.of(f).save(f)
    f.request.path = UPSTREAM_PATH
    info = FlowInfo.of(f)
    assert (info.family, info.path) == ("messages", "/v1/messages")


def test_saved_facts_survive_a_flow_file():
    f = flow("/v1/responses/resp_1")
    FlowInfo.of(f).save(f)
    f.request.path = "/v1/acc/gw/openai/responses/resp_1"
    loaded = http.HTTPFlow.from_state(f.get_state())
    assert isinstance(loaded, http.HTTPFlow)
    info = FlowInfo.of(loaded)
    assert (info.family, info.path) == ("responses", "/v1/responses/resp_1")


@pytest.mark.parametrize(
    "saved",
    [
        "messages",  # not a dict
        {"family": "gemini", "path": "/v1/messages"},  # not a family this proxy knows
        {"family": ["messages"], "path": "/v1/messages"},
        {"path": "/v1/messages"},
    ],
)
def test_unusable_saved_facts_are_ignored(saved):
    f = flow("/v1/chat/completions?x=1")
    f.metadata[META] = saved
    info = FlowInfo.of(f)
    assert (info.family, info.path) == ("chat", "/v1/chat/completions")


def test_a_saved_family_without_a_path_uses_the_flows_path():
    f = flow("/v1/messages?x=1")
    f.metadata[META] = {"family": "messages", "path": ""}
    assert FlowInfo.of(f).path == "/v1/messages"
