"""The content view: which family a body is, priorities, fallbacks, bounds, registration."""

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import contentviews
from mitmproxy.addons import script
from mitmproxy.contentviews import ContentviewRegistry, Metadata
from mitmproxy.test import taddons, tflow

from llmview import view
from llmview.view import PRIORITY, LLMView, flow_family, path_family
from tests import test_llmview_chat as chat_fx
from tests import test_llmview_messages as messages_fx
from tests import test_llmview_responses as responses_fx

BARE = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}


def make_flow(path="/v1/chat/completions", family=None):
    f = tflow.tflow(resp=True)
    f.request.path = path
    if family is not None:
        f.metadata["cf_gateway"] = {"family": family, "route": None, "path": path}
    return f


def meta(f=None, side="response", content_type="application/json"):
    message = None if f is None else f.response if side == "response" else f.request
    return Metadata(flow=f, content_type=content_type, http_message=message)


def dumps(obj):
    return json.dumps(obj).encode()


def show(data, metadata):
    """What "auto" shows: the transcript if the view claims the body, else None."""
    v = LLMView()
    if v.render_priority(data, metadata) != PRIORITY:
        return None
    return v.prettify(data, metadata)


# --- which family ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, family",
    [
        ("/v1/chat/completions", "chat"),
        ("/v1/0123/gw/compat/chat/completions?x=1", "chat"),
        ("/client/v4/accounts/0123/ai/v1/chat/completions", "chat"),
        ("/v1/messages?beta=true", "messages"),
        ("/v1/messages/count_tokens", "messages"),
        ("/v1/0123/gw/anthropic/v1/messages", "messages"),
        ("/v1/responses", "responses"),
        ("/client/v4/accounts/0123/ai/v1/responses", "responses"),
        ("/client/v4/accounts/0123/ai/run/@cf/meta/llama-3.1-8b-instruct", "run"),
        ("/client/v4/accounts/0123/ai/run", "run"),
        ("/v1/0123/gw/workers-ai/@cf/meta/llama-3.1-8b-instruct", "run"),
        ("/v1/embeddings", None),
        ("/v1/responses/resp_1", None),
        ("/api/messages/42", None),
    ],
)
def test_path_family(path, family):
    assert path_family(path) == family


def test_the_proxys_record_wins_over_the_path():
    assert flow_family(make_flow("/v1/chat/completions", family="messages")) == "messages"
    assert flow_family(make_flow("/v1/chat/completions", family="other")) == "other"


@pytest.mark.parametrize("record", [None, "chat", {}, {"family": ["chat"]}, {"family": "gemini"}])
def test_a_record_without_a_known_family_leaves_the_path(record):
    f = make_flow("/v1/messages")
    f.metadata["cf_gateway"] = record
    assert flow_family(f) == "messages"
    assert flow_family(None) is None


def test_a_request_to_a_familys_path_is_that_familys():
    """A bare {model, messages} is chat's and Anthropic's alike: the path decides."""
    assert show(
        dumps(BARE), meta(make_flow("/v1/messages"), "request")
    ) == messages_fx.messages.render_request(BARE)
    assert show(
        dumps(BARE), meta(make_flow("/v1/chat/completions"), "request")
    ) == chat_fx.chat.render_request(BARE)
    assert show(dumps(BARE), meta(make_flow("/somewhere"), "request")) == chat_fx.chat.render_request(BARE)


def test_bodies_by_shape_without_a_flow():
    assert show(dumps(chat_fx.REQUEST), meta()) == chat_fx.REQUEST_TEXT
    assert show(dumps(messages_fx.REQUEST), meta()) == messages_fx.REQUEST_TEXT
    assert show(dumps(responses_fx.REQUEST), meta(content_type=None)) == responses_fx.REQUEST_TEXT
    assert show(dumps(chat_fx.RESPONSE), meta()) == chat_fx.RESPONSE_TEXT
    assert show(dumps(messages_fx.RESPONSE), meta(content_type="application/vnd.api+json")) == (
        messages_fx.RESPONSE_TEXT
    )
    assert show(dumps(responses_fx.RESPONSE), meta()) == responses_fx.RESPONSE_TEXT


def test_streams_by_shape_and_by_path():
    stream = meta(content_type="text/event-stream")
    assert show(chat_fx.TOOL_STREAM, stream) == chat_fx.TOOL_STREAM_TEXT
    assert show(chat_fx.TOOL_STREAM, meta(content_type=None)) == chat_fx.TOOL_STREAM_TEXT
    assert show(messages_fx.body(messages_fx.STREAM), stream) == messages_fx.STREAM_TEXT
    on_path = meta(make_flow("/v1/responses"), content_type="text/event-stream")
    assert show(responses_fx.body(responses_fx.stream_events()), on_path).startswith("model: gpt-5-mini")


def test_a_streamed_error_is_shown_on_a_familys_path_only():
    error = b'data: {"error": {"message": "overloaded"}}\n\n'
    assert show(error, meta(content_type="text/event-stream")) is None
    on_path = meta(make_flow("/v1/chat/completions"), content_type="text/event-stream")
    assert (
        show(error, on_path)
        == 'stream: 1 events (stream incomplete: no [DONE])\nerror: {"message": "overloaded"}\n'
    )


def test_the_side_of_the_message_counts():
    assert show(dumps(chat_fx.REQUEST), meta(make_flow("/x"), "response")) is None
    assert show(dumps(chat_fx.RESPONSE), meta(make_flow("/x"), "request")) is None


# --- fallbacks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, metadata",
    [
        (dumps({"error": {"message": "bad key", "type": "invalid_request_error"}}), meta(make_flow())),
        (dumps({"input_tokens": 12}), meta(make_flow("/v1/messages/count_tokens"))),
        (dumps({"object": "list", "data": []}), meta()),
        (
            dumps({"model": "text-embedding-3-small", "input": "hello"}),
            meta(make_flow("/v1/embeddings"), "request"),
        ),
        (dumps(chat_fx.REQUEST), meta(make_flow(family="other"), "request")),
        (b"[1, 2]", meta()),
        (b"{not json", meta()),
        (b"", meta()),
        (b"data: [DONE]\n\n", meta(content_type="text/event-stream")),
        (b'event: x\ndata: {"type": "unknown"}\n\n', meta(content_type="text/event-stream")),
    ],
)
def test_other_bodies_are_left_to_other_views(data, metadata):
    assert LLMView().render_priority(data, metadata) == 0
    with pytest.raises(ValueError):
        LLMView().prettify(data, metadata)


def test_other_media_types_are_not_claimed_but_render_when_picked():
    html = meta(content_type="text/html")
    assert LLMView().render_priority(dumps(chat_fx.REQUEST), html) == 0
    assert LLMView().prettify(dumps(chat_fx.REQUEST), html) == chat_fx.REQUEST_TEXT


def test_a_malformed_llm_body_raises_value_error():
    bad = {"model": "m", "messages": [1, 2]}
    metadata = meta(make_flow(), "request")
    assert LLMView().render_priority(dumps(bad), metadata) == PRIORITY
    with pytest.raises(ValueError, match="not a well-formed LLM body"):
        LLMView().prettify(dumps(bad), metadata)


# --- bounds --------------------------------------------------------------------------------


def content_stream(n):
    c = {
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "w"}}],
    }
    return ("".join(f"data: {json.dumps(c)}\n\n" for _ in range(n)) + "data: [DONE]\n\n").encode()


def test_a_stream_is_cut_at_max_lines(monkeypatch):
    monkeypatch.setattr(view, "MAX_LINES", 6)  # an event and a blank line each
    assert LLMView().prettify(content_stream(5), meta(content_type="text/event-stream")) == (
        "… truncated: showing the first 3 events (the stream has more)\n\n"
        "model: m\nstream: 3 events (stream incomplete: no [DONE])\n\n[assistant]\nwww\n"
    )


def test_a_stream_is_cut_at_max_body(monkeypatch):
    body = content_stream(100)
    monkeypatch.setattr(view, "MAX_BODY", len(body) // 2)
    text = LLMView().prettify(body, meta(content_type="text/event-stream"))
    assert text.startswith(f"… truncated: showing the first {len(body) // 2} bytes of {len(body)} bytes\n\n")
    assert "(stream incomplete: no [DONE])" in text


def test_json_beyond_max_body_is_left_to_other_views(monkeypatch):
    monkeypatch.setattr(view, "MAX_BODY", 1000)
    big = dumps({**chat_fx.REQUEST, "pad": "x" * 1000})
    metadata = meta(make_flow(), "request")
    assert LLMView().render_priority(big, metadata) == 0
    with pytest.raises(ValueError, match="body too large"):
        LLMView().prettify(big, metadata)


def test_render_priority_sniffs_only_the_start_of_a_body_without_a_family():
    big = dumps({**chat_fx.REQUEST, "pad": "x" * view.SNIFF_BYTES})
    assert LLMView().render_priority(big, meta(make_flow("/x"), "request")) == 0
    assert LLMView().render_priority(big, meta(make_flow(), "request")) == PRIORITY


def test_long_lists_are_cut_with_a_note():
    obj = {"model": "m", "messages": [{"role": "user", "content": "hi"}] * (view.MAX_ITEMS + 1)}
    text = LLMView().prettify(dumps(obj), meta(make_flow(), "request"))
    assert text.startswith(f"… truncated: lists cut at {view.MAX_ITEMS} items")
    assert text.count("[user]") == view.MAX_ITEMS


STREAM = meta(make_flow(), content_type="text/event-stream")
HOSTILE = {
    "many deltas": lambda: content_stream(view.MAX_LINES),
    "many choices": lambda: (
        b"data: " + dumps({"choices": [{"index": i, "delta": {}} for i in range(100_000)]})
    ),
    "many junk events": lambda: b"data: x\n\n" * (2 << 20),
    "one event of many lines": lambda: b"data: {}\n" * (2 << 20),
    "many messages": lambda: dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}] * 450_000}),
    "nested lists": lambda: dumps({"model": "m", "messages": [[[[1] * 30] * 30] * 30] * 30}),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_huge_hostile_bodies_render_quickly(name):
    """mitmweb renders on its event loop: about 16 MiB of the worst shapes must not freeze it.

    The bound is generous for a busy machine; rendering these unbounded takes far longer.
    """
    data = HOSTILE[name]()
    metadata = meta(make_flow(), "request") if data.startswith(b"{") else STREAM
    started = time.perf_counter()
    try:
        text = LLMView().prettify(data, metadata)
    except ValueError:
        text = ""
    assert time.perf_counter() - started < 4
    assert len(text) < 1 << 20


KEYS = "role content tool_calls function arguments name id index type delta choices message usage".split()
KEYS += "messages tools text model object input output system error response item output_index".split()
JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=5)
    | st.sampled_from(["message", "response.x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=20,
)
METADATA = st.builds(
    meta,
    st.sampled_from(
        [None, make_flow(), make_flow("/v1/messages"), make_flow("/v1/responses"), make_flow("/x/ai/run/m")]
    ),
    st.sampled_from(["request", "response"]),
    st.sampled_from(["application/json", "text/event-stream", None]),
)


def check(data, metadata):
    v = LLMView()
    assert v.render_priority(data, metadata) in (0, PRIORITY)
    try:
        assert isinstance(v.prettify(data, metadata), str)
    except ValueError:
        pass


@given(JSONISH, METADATA)
def test_any_json_renders_or_raises_value_error(obj, metadata):
    check(dumps(obj), metadata)
    check(f"data: {json.dumps(obj)}\n\ndata: {json.dumps({'choices': [obj]})}\n\n".encode(), metadata)


@given(st.binary(max_size=300), METADATA)
def test_junk_renders_or_raises_value_error(data, metadata):
    check(data, metadata)


# --- in mitmproxy --------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    """A private copy of mitmproxy's views, so this view does not outlive the test."""
    reg = ContentviewRegistry()
    for v in contentviews.registry.values():
        if v.name != LLMView.name:
            reg.register(v)
    monkeypatch.setattr(contentviews, "registry", reg)
    return reg


def test_mitmproxy_picks_the_view_for_llm_bodies(registry):
    f = make_flow()
    f.request.headers["content-type"] = "application/json"
    f.request.content = dumps(chat_fx.REQUEST)
    f.response.headers["content-type"] = "text/event-stream; charset=utf-8"
    f.response.content = chat_fx.TOOL_STREAM
    f.response.encode("gzip")
    with taddons.context():
        assert contentviews.prettify_message(f.request, f, registry=registry).view_name == "JSON"
        registry.register(LLMView())
        request = contentviews.prettify_message(f.request, f, registry=registry)
        assert (request.view_name, request.text) == ("LLM chat", chat_fx.REQUEST_TEXT)
        response = contentviews.prettify_message(f.response, f, registry=registry)
        assert (response.view_name, response.text, response.description) == (
            "LLM chat",
            chat_fx.TOOL_STREAM_TEXT,
            "[decoded gzip]",
        )
        f.response.headers["content-type"] = "application/json"
        f.response.content = dumps({"object": "list", "data": []})
        assert contentviews.prettify_message(f.response, f, registry=registry).view_name == "JSON"
        forced = contentviews.prettify_message(f.response, f, view_name="llm chat", registry=registry)
        assert forced.syntax_highlight == "error"


def test_the_script_registers_the_view_on_every_load(registry):
    with taddons.context():
        script.load_script("addons/llm_view.py")
        first = registry["llm chat"]
        script.load_script("addons/llm_view.py")
        assert registry["llm chat"] is not first
        assert type(registry["llm chat"]).__name__ == "LLMView"
