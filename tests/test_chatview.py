import json
import time
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy.test import tutils

from cfgw import chatview, family_chat, family_messages, family_responses, sse
from cfgw.chatview import MAX_EVENTS, PRIORITY, SNIFF_BYTES, ChatView, flow_family
from cfgw.family import Family
from tests.test_family_chat import (
    EMBEDDINGS,
    EMBEDDINGS_REQUEST,
    MODELS,
    REQUEST,
    REQUEST_TEXT,
    RESPONSE,
    RESPONSE_TEXT,
    TOOL_STREAM,
    TOOL_STREAM_TEXT,
)

try:
    from mitmproxy.contentviews import Contentview  # noqa: F401

    HAS_NEW_API = True
except ImportError:  # mitmproxy 11
    HAS_NEW_API = False

needs_mitmproxy12 = pytest.mark.skipif(not HAS_NEW_API, reason="mitmproxy < 12 has no Contentview API")


def md(content_type, family=None, side=None):
    """Metadata as mitmproxy 12 passes it; ``family`` is what the addon records on the flow."""
    flow = None if family is None else SimpleNamespace(metadata={"cf_gateway": {"family": family}})
    message = {"request": tutils.treq(), "response": tutils.tresp(), None: None}[side]
    return SimpleNamespace(content_type=content_type, http_message=message, flow=flow)


def dumps(obj):
    return json.dumps(obj).encode()


def stream(*chunks, done=True):
    return (
        "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + ("data: [DONE]\n\n" if done else "")
    ).encode()


ERROR_STREAM = stream({"error": {"message": "upstream overloaded", "type": "server_error"}}, done=False)
ANTHROPIC_REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "Hi"}],
}
ANTHROPIC_STREAM = (
    b'event: message_start\ndata: {"type": "message_start", "message": {"id": "msg_1", "type": "message", '
    b'"role": "assistant", "model": "claude", "content": [], '
    b'"usage": {"input_tokens": 5, "output_tokens": 1}}}\n\n'
    b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, '
    b'"content_block": {"type": "text", "text": ""}}\n\n'
    b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
    b'"delta": {"type": "text_delta", "text": "Hello"}}\n\n'
    b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
)
RESPONSES_REQUEST = {"model": "gpt-4.1", "input": "Hi", "instructions": "Be brief."}


# --- dispatch ------------------------------------------------------------------------------


def test_prettify_sniffs_chat_bodies():
    view = ChatView()
    assert view.prettify(dumps(REQUEST), md("application/json")) == REQUEST_TEXT
    assert view.prettify(dumps(RESPONSE), md("application/json")) == RESPONSE_TEXT
    assert view.prettify(TOOL_STREAM, md("text/event-stream")) == TOOL_STREAM_TEXT
    assert view.prettify(TOOL_STREAM, md(None)) == TOOL_STREAM_TEXT
    for bad, ct in [
        (dumps(EMBEDDINGS), "application/json"),
        (b"{oops", "application/json"),
        (b"data: [DONE]\n\n", "text/event-stream"),
        (ERROR_STREAM, "text/event-stream"),
    ]:
        with pytest.raises(ValueError):
            view.prettify(bad, md(ct))


def test_prettify_sniffs_the_other_families_first():
    """A Messages request also has model+messages: the stricter detectors are asked before chat's."""
    view = ChatView()
    assert view.prettify(dumps(ANTHROPIC_REQUEST), md("application/json")) == family_messages.render_request(
        ANTHROPIC_REQUEST
    )
    assert view.prettify(ANTHROPIC_STREAM, md("text/event-stream")) == family_messages.render_stream(
        sse.parse(ANTHROPIC_STREAM)
    )
    assert view.prettify(dumps(RESPONSES_REQUEST), md(None)) == family_responses.render_request(
        RESPONSES_REQUEST
    )


def test_the_flows_family_decides():
    view = ChatView()
    # A chat flow's stream is chat's even when its only event is an error that nothing would sniff.
    assert view.render_priority(ERROR_STREAM, md("text/event-stream")) == 0
    assert view.render_priority(ERROR_STREAM, md("text/event-stream", "chat")) == PRIORITY
    assert view.prettify(ERROR_STREAM, md("text/event-stream", "chat")) == (
        "stream: 1 events (stream incomplete: no [DONE])\n"
        'error: {"message": "upstream overloaded", "type": "server_error"}\n'
    )
    # JSON must still look like the family's: an error body keeps the JSON view.
    error = dumps(family_chat.openai_error_body(401, "bad key", "invalid_proxy_key", "authentication_error"))
    assert view.render_priority(error, md("application/json", "chat", "response")) == 0
    # A request is the route's family's, whatever it looks like: a bare Messages request sniffs as chat.
    bare = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    assert view.prettify(dumps(bare), md("application/json")) == family_chat.render_request(bare)
    messages_flow = md("application/json", "messages", "request")
    assert view.render_priority(dumps(bare), messages_flow) == PRIORITY
    assert view.prettify(dumps(bare), messages_flow) == family_messages.render_request(bare)
    chat_flow = md("application/json", "chat", "request")
    assert view.prettify(dumps(ANTHROPIC_REQUEST), chat_flow) == family_chat.render_request(ANTHROPIC_REQUEST)
    assert view.render_priority(b"[1]", chat_flow) == 0


def test_dispatch_goes_to_the_flows_family(monkeypatch):
    def fake(kind):
        return lambda _: f"fake {kind}\n"

    monkeypatch.setitem(
        chatview.BY_NAME,
        "fake",
        Family(
            name="fake",
            error_body=family_chat.openai_error_body,
            usage_from_json=lambda _: None,
            stream_usage=family_chat.ChatStreamUsage,
            render_request=fake("request"),
            render_response=fake("response"),
            render_stream=fake("stream"),
            looks_like_request=lambda obj: "q" in obj,
            looks_like_response=lambda obj: "r" in obj,
        ),
    )
    view = ChatView()
    assert view.prettify(TOOL_STREAM, md("text/event-stream", "fake")) == "fake stream\n"
    assert view.prettify(b'{"q": 1, "r": 1}', md("application/json", "fake")) == "fake request\n"
    assert view.prettify(b'{"q": 1, "r": 1}', md("application/json", "fake", "response")) == "fake response\n"
    assert view.prettify(b'{"q": 1}', md("application/json")) == "fake request\n"  # sniffed too
    with pytest.raises(ValueError):  # the flow says fake: chat is not asked
        view.prettify(dumps(REQUEST), md("application/json", "fake"))
    assert view.prettify(dumps(REQUEST), md("application/json", "fake", "request")) == "fake request\n"


def test_the_side_of_the_message_decides_request_or_response():
    view = ChatView()
    assert view.render_priority(dumps(REQUEST), md("application/json", side="request")) == PRIORITY
    assert view.render_priority(dumps(REQUEST), md("application/json", side="response")) == 0
    assert view.render_priority(dumps(RESPONSE), md("application/json", side="request")) == 0
    assert view.prettify(dumps(RESPONSE), md("application/json", "chat", "response")) == RESPONSE_TEXT


def test_other_flows_keep_the_json_view():
    view = ChatView()
    for body in (dumps(EMBEDDINGS), dumps(REQUEST), TOOL_STREAM):
        assert view.render_priority(body, md("application/json", "other")) == 0
        with pytest.raises(ValueError, match="no transcript for other endpoints"):
            view.prettify(body, md("application/json", "other"))


@pytest.mark.parametrize(
    "flow",
    [
        None,
        SimpleNamespace(),
        SimpleNamespace(metadata=None),
        SimpleNamespace(metadata={}),
        SimpleNamespace(metadata={"cf_gateway": "chat"}),
        SimpleNamespace(metadata={"cf_gateway": {"family": ["chat"]}}),
        SimpleNamespace(metadata={"cf_gateway": {"family": "gemini"}}),
        SimpleNamespace(metadata={"cf_gateway": {}}),
    ],
)
def test_flow_family_is_read_defensively(flow):
    assert flow_family(flow) is None
    metadata = SimpleNamespace(content_type="text/event-stream", http_message=None, flow=flow)
    assert ChatView().render_priority(TOOL_STREAM, metadata) == PRIORITY  # falls back to sniffing


def test_flow_family_names():
    for name in ("chat", "other", "messages", "responses"):
        assert flow_family(SimpleNamespace(metadata={"cf_gateway": {"family": name}})).name == name


# --- priority --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, content_type",
    [
        (dumps(REQUEST), "application/json"),
        (dumps(RESPONSE), "application/json"),
        (dumps(RESPONSE), None),
        (dumps(RESPONSE), "application/vnd.api+json"),
        (TOOL_STREAM, "text/event-stream"),
        (TOOL_STREAM, None),
        (dumps({"model": "m", "messages": []}), "application/json"),
        (dumps(ANTHROPIC_REQUEST), "application/json"),
        (ANTHROPIC_STREAM, "text/event-stream"),
    ],
)
def test_render_priority_high_for_llm_bodies(data, content_type):
    assert ChatView().render_priority(data, md(content_type)) == PRIORITY > 1  # the JSON view returns 1


@pytest.mark.parametrize(
    "data, content_type",
    [
        (dumps(EMBEDDINGS), "application/json"),
        (dumps(EMBEDDINGS_REQUEST), "application/json"),
        (dumps(MODELS), "application/json"),
        (b'{"a": 1}', "application/json"),
        (b"[1, 2]", "application/json"),
        (b"not json", "application/json"),
        (b"", "application/json"),
        (b"", "text/event-stream"),
        (dumps(REQUEST), "text/html"),
        (b'event: x\ndata: {"type": "unknown"}\n\n', "text/event-stream"),
        (b"data: [DONE]\n\n", "text/event-stream"),
        (b"data: {not json\n\n", "text/event-stream"),
        (TOOL_STREAM, "application/octet-stream"),
    ],
)
def test_render_priority_zero_otherwise(data, content_type):
    assert ChatView().render_priority(data, md(content_type)) == 0


def test_render_priority_reads_at_most_the_sniff_window():
    late_stream = b": " + b"x" * SNIFF_BYTES + b"\n\n" + TOOL_STREAM  # first event after 64 KiB
    assert ChatView().render_priority(late_stream, md("text/event-stream")) == 0
    assert ChatView().render_priority(late_stream, md("text/event-stream", "chat")) == PRIORITY
    assert ChatView().prettify(late_stream, md("text/event-stream")) == TOOL_STREAM_TEXT  # chosen by hand
    big = dumps({**REQUEST, "pad": "x" * SNIFF_BYTES})
    assert ChatView().render_priority(big, md("application/json")) == 0
    assert ChatView().render_priority(big, md("application/json", "chat")) == PRIORITY  # trusts the flow


def test_json_beyond_max_body_is_left_to_other_views(monkeypatch):
    monkeypatch.setattr(chatview, "MAX_BODY", SNIFF_BYTES * 2)
    big = dumps({**REQUEST, "pad": "x" * SNIFF_BYTES * 2})
    assert ChatView().render_priority(big, md("application/json", "chat")) == 0
    with pytest.raises(ValueError, match=rf"body too large for the LLM view \({len(big)} bytes\)"):
        ChatView().prettify(big, md("application/json", "chat"))


# --- bounds ----------------------------------------------------------------------------------


def content_stream(n):
    chunk = {
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "w"}}],
    }
    return stream(*[chunk] * n)


def test_truncated_stream_says_so(monkeypatch):
    monkeypatch.setattr(chatview, "MAX_EVENTS", 3)
    assert ChatView().prettify(content_stream(5), md("text/event-stream")) == (
        "… truncated: showing the first 3 events (the stream has more)\n\n"
        "model: m\nstream: 3 events (stream incomplete: no [DONE])\n\n[assistant]\nwww\n"
    )
    # exactly MAX_EVENTS events: nothing is cut
    body = content_stream(2)
    assert (
        ChatView().prettify(body, md("text/event-stream"))
        == "model: m\nstream: 2 events, [DONE]\n\n[assistant]\nww\n"
    )


def test_stream_beyond_max_body_is_cut_at_a_line_end(monkeypatch):
    body = content_stream(4000)
    assert len(body) == 4000 * 111 + 14
    monkeypatch.setattr(chatview, "MAX_BODY", 100 * 111 + 50)  # inside the 101st event's data line
    assert ChatView().prettify(body, md("text/event-stream")) == (
        "… truncated: showing the first 11100 bytes of 444014 bytes\n\n"
        "model: m\nstream: 100 events (stream incomplete: no [DONE])\n\n[assistant]\n" + "w" * 100 + "\n"
    )
    monkeypatch.setattr(chatview, "MAX_BODY", 16 << 20)
    huge = body * 40
    assert (
        ChatView()
        .prettify(huge, md("text/event-stream"))
        .startswith(
            "… truncated: showing the first 16.0 MiB of 16.9 MiB\n… truncated: showing the first 20000 events"
        )
    )


def test_default_bounds_render_a_huge_stream_quickly():
    body = content_stream(MAX_EVENTS + 5000)
    text = ChatView().prettify(body, md("text/event-stream"))
    assert text == (
        f"… truncated: showing the first {MAX_EVENTS} events (the stream has more)\n\n"
        f"model: m\nstream: {MAX_EVENTS} events (stream incomplete: no [DONE])\n\n[assistant]\n"
        + "w" * MAX_EVENTS
        + "\n"
    )


# --- hostile input -----------------------------------------------------------------------------

KEYS = "role content tool_calls function arguments name id index type delta choices message usage".split()
KEYS += "messages tools text model object input output system max_tokens error".split()
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=20,
)
METADATA = st.builds(
    md,
    st.sampled_from(["application/json", "text/event-stream", None, "text/plain"]),
    st.sampled_from([None, "chat", "other", "messages", "responses", "nonsense"]),
    st.sampled_from([None, "request", "response"]),
)


def _check(data, metadata):
    view = ChatView()
    assert view.render_priority(data, metadata) in (0, PRIORITY)
    try:
        assert isinstance(view.prettify(data, metadata), str)
    except ValueError:
        pass


@given(JSONISH, METADATA)
def test_view_survives_arbitrary_json(obj, metadata):
    _check(json.dumps(obj).encode(), metadata)
    body = f"data: {json.dumps(obj)}\n\ndata: {json.dumps({'choices': [obj]})}\n\n".encode()
    _check(body, metadata)


@given(st.binary(max_size=500), METADATA)
def test_view_survives_junk(data, metadata):
    _check(data, metadata)


# --- registration ------------------------------------------------------------------------------


def test_register_without_new_api_returns_false(monkeypatch):
    monkeypatch.setattr(chatview, "_ViewBase", object)
    assert chatview.register() is False
    assert not hasattr(chatview, "unregister")


@needs_mitmproxy12
def test_registered_view_is_used_by_prettify_message(monkeypatch):
    from mitmproxy import contentviews
    from mitmproxy.contentviews import ContentviewRegistry
    from mitmproxy.test import taddons, tflow

    registry = ContentviewRegistry()  # a private copy, so the view does not outlive this test
    for view in contentviews.registry.values():
        if not isinstance(view, ChatView):  # an earlier test's CfGateway.load registered it
            registry.register(view)
    monkeypatch.setattr(contentviews, "registry", registry)

    f = tflow.tflow(resp=True)
    f.request.headers["content-type"] = "application/json"
    f.request.content = dumps(REQUEST)
    f.response.headers["content-type"] = "text/event-stream; charset=utf-8"
    f.response.content = TOOL_STREAM
    f.response.encode("gzip")  # prettify sees decoded data
    with taddons.context():
        assert contentviews.prettify_message(f.request, f, registry=registry).view_name == "JSON"
        assert chatview.register() is True
        assert chatview.register() is True  # again: replaces the view of the same name
        assert isinstance(registry["llm chat"], ChatView)
        req = contentviews.prettify_message(f.request, f, registry=registry)
        assert (req.view_name, req.text) == ("LLM chat", REQUEST_TEXT)
        resp = contentviews.prettify_message(f.response, f, registry=registry)
        assert (resp.view_name, resp.text, resp.description) == (
            "LLM chat",
            TOOL_STREAM_TEXT,
            "[decoded gzip]",
        )
        assert resp.syntax_highlight == "none"
        # the family the addon recorded on the flow is used
        f.metadata["cf_gateway"] = {"family": "chat"}
        f.response.content = ERROR_STREAM
        resp = contentviews.prettify_message(f.response, f, registry=registry)
        assert (resp.view_name, resp.text) == (
            "LLM chat",
            "stream: 1 events (stream incomplete: no [DONE])\n"
            'error: {"message": "upstream overloaded", "type": "server_error"}\n',
        )
        # embeddings keep the JSON view
        f.metadata["cf_gateway"] = {"family": "other"}
        f.response.headers["content-type"] = "application/json"
        f.response.content = dumps(EMBEDDINGS)
        assert contentviews.prettify_message(f.response, f, registry=registry).view_name == "JSON"
        # explicitly selected on a body it cannot show: mitmproxy reports the ValueError
        forced = contentviews.prettify_message(f.response, f, view_name="llm chat", registry=registry)
        assert forced.syntax_highlight == "error"


def test_big_json_bodies_are_bounded_before_rendering():
    """480k tiny messages (a 16 MiB body) took about a second to render on the event loop."""
    obj = {"model": "m", "messages": [{"role": "user", "content": "hi"}] * 480_000, "tools": []}
    started = time.perf_counter()
    kept, cut = chatview.bounded(obj)
    assert time.perf_counter() - started < 0.5
    assert cut and len(kept["messages"]) == chatview.MAX_ITEMS and kept["model"] == "m"
    nested = [[[[1] * 50] * 50] * 50] * 50  # 6.5M values: the node budget stops the walk
    kept, cut = chatview.bounded(nested)
    assert cut and sum(len(c) for b in kept for c in b) < chatview.MAX_NODES
    small = {"messages": [{"role": "user", "content": ["a", "b"]}]}
    assert chatview.bounded(small) == (small, False)
