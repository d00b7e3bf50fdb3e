import json
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cfgw import chatview
from cfgw.chatview import (
    PRIORITY,
    ChatView,
    is_chat_json,
    is_chat_stream,
    render_request,
    render_response,
    render_stream,
)

try:
    from mitmproxy.contentviews import Contentview  # noqa: F401

    HAS_NEW_API = True
except ImportError:  # mitmproxy 11
    HAS_NEW_API = False

needs_mitmproxy12 = pytest.mark.skipif(not HAS_NEW_API, reason="mitmproxy < 12 has no Contentview API")

# --- fixtures: recorded-style OpenAI traffic ----------------------------------------

_BASE = {
    "id": "chatcmpl-AbC123",
    "object": "chat.completion.chunk",
    "created": 1732600000,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_0ba0d124f1",
}


def _chunk(delta, finish=None):
    return {
        **_BASE,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


TOOL_STREAM_EVENTS = [
    _chunk(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_Zx9fQ2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ],
            "refusal": None,
        }
    ),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Pa'}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]}),
    _chunk({}, finish="tool_calls"),
    {
        **_BASE,
        "choices": [],
        "usage": {
            "prompt_tokens": 81,
            "completion_tokens": 15,
            "total_tokens": 96,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    },
]
TOOL_STREAM = (
    ": ping\n\n"
    + "".join("data: " + json.dumps(e, separators=(",", ":")) + "\n\n" for e in TOOL_STREAM_EVENTS)
    + "data: [DONE]\n\n"
).encode()

TOOL_STREAM_TEXT = """\
model: gpt-4o-mini-2024-07-18
id: chatcmpl-AbC123
usage: prompt 81 · completion 15 · total 96
stream: 6 events, [DONE]

[assistant]
→ tool call call_Zx9fQ2: get_weather({"city": "Paris"})
finish_reason: tool_calls
"""

REQUEST = {
    "messages": [
        {"role": "system", "content": "You are a weather bot."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris? See photo."},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/jpeg;base64,QUJDRA==", "detail": "low"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_Zx9fQ2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_Zx9fQ2", "content": '{"temp_c": 18, "sky": "cloudy"}'},
    ],
    "model": "gpt-4o-mini",
    "stream": True,
    "stream_options": {"include_usage": True},
    "temperature": 0.2,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather\n  for a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                    "required": ["city"],
                },
            },
        },
        {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
    ],
    "tool_choice": "auto",
}

REQUEST_TEXT = """\
model: gpt-4o-mini
params: stream=true · stream_options={"include_usage": true} · temperature=0.2 · tool_choice=auto
tools:
  tool get_weather(city, unit) — Get the current weather for a city.
  tool now()

[system]
You are a weather bot.

[user]
Weather in Paris? See photo.
<image_url data:image/jpeg;base64,… (8 chars) detail=low>

[assistant]
→ tool call call_Zx9fQ2: get_weather({"city": "Paris"})

[tool call_Zx9fQ2]
{"temp_c": 18, "sky": "cloudy"}
"""

RESPONSE = {
    "id": "chatcmpl-B9x",
    "object": "chat.completion",
    "created": 1732600001,
    "model": "deepseek-reasoner",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "It is 18 °C and cloudy in Paris.",
                "reasoning_content": "The tool said 18 and cloudy.",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "total_tokens": 46,
        "prompt_tokens_details": {"cached_tokens": 8},
    },
}

RESPONSE_TEXT = """\
model: deepseek-reasoner
id: chatcmpl-B9x
usage: prompt 12 · completion 34 · total 46 (cached 8)

[assistant]
<reasoning>
The tool said 18 and cloudy.
</reasoning>
It is 18 °C and cloudy in Paris.
finish_reason: stop
"""

EMBEDDINGS = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 3, "total_tokens": 3},
}
EMBEDDINGS_REQUEST = {"model": "text-embedding-3-small", "input": "hello"}
MODELS = {"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]}


def md(content_type):
    return SimpleNamespace(content_type=content_type, http_message=None, flow=None)


def dumps(obj):
    return json.dumps(obj).encode()


# --- pure rendering ----------------------------------------------------------------


def test_render_stream_tool_call_exact():
    assert render_stream(TOOL_STREAM) == TOOL_STREAM_TEXT


def test_render_stream_crlf_comments_events_and_junk():
    body = TOOL_STREAM.replace(b"\n", b"\r\n")
    body = b"event: message\r\nid: 1\r\nretry: 100\r\n: keepalive\r\ngarbage line\r\n\r\n" + body
    assert render_stream(body) == TOOL_STREAM_TEXT


def test_render_stream_without_blank_lines_between_events():
    body = (
        b"".join(b"data: " + json.dumps(e).encode() + b"\n" for e in TOOL_STREAM_EVENTS) + b"data: [DONE]\n"
    )
    assert render_stream(body) == TOOL_STREAM_TEXT


def test_render_stream_incomplete():
    cut = TOOL_STREAM[: TOOL_STREAM.index(b'"finish_reason":"tool_calls"') + 5]  # inside the 5th chunk
    text = render_stream(cut)
    assert "stream: 5 events (1 unparseable) (stream incomplete: no [DONE])" in text
    assert '→ tool call call_Zx9fQ2: get_weather({"city": "Paris"})' in text
    assert "usage:" not in text
    assert "finish_reason" not in text


def test_render_stream_content_reasoning_and_two_choices():
    def ev(index, delta, finish=None):
        return {
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }

    events = [
        ev(0, {"role": "assistant", "reasoning": "think "}),
        ev(1, {"role": "assistant", "content": "B"}),
        ev(0, {"reasoning": "more"}),
        ev(0, {"content": "Hel"}),
        ev(0, {"content": "lo"}, "stop"),
        ev(1, {}, "length"),
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode()
    assert render_stream(body) == (
        "model: m\n"
        "stream: 6 events (stream incomplete: no [DONE])\n"
        "\n[assistant] choice 0\n<reasoning>\nthink more\n</reasoning>\nHello\nfinish_reason: stop\n"
        "\n[assistant] choice 1\nB\nfinish_reason: length\n"
    )


def test_render_stream_parallel_tool_calls():
    def ev(calls):
        return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": calls}}]}

    events = [
        ev([{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": '{"x":'}}]),
        ev([{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": ""}}]),
        ev([{"index": 0, "function": {"arguments": " 1}"}}, {"index": 1, "function": {"arguments": "{}"}}]),
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"
    text = render_stream(body)
    assert '→ tool call call_a: f({"x": 1})\n→ tool call call_b: g({})\n' in text


def test_render_request_exact():
    assert render_request(REQUEST) == REQUEST_TEXT


def test_render_request_odd_messages():
    text = render_request(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "name": "alice", "content": ""},
                {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "function", "name": "f", "content": "ok"},
                "not a message",
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"format": "wav"}}]},
            ],
            "functions": [{"name": "f", "description": "does f"}],
        }
    )
    assert text == (
        "model: m\ntools:\n  tool f() — does f\n"
        "\n[developer]\nbe brief\n"
        "\n[user] name=alice\n(empty)\n"
        "\n[assistant]\n→ function call: f({})\n"
        "\n[function f]\nok\n"
        '\n[?]\n"not a message"\n'
        "\n[user]\n<input_audio format=wav>\n"
    )


def test_render_response_exact():
    assert render_response(RESPONSE) == RESPONSE_TEXT


def test_render_response_tool_calls_and_missing_usage_fields():
    obj = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5},
    }
    assert render_response(obj) == (
        "usage: prompt 5 · completion ? · total 5\n"
        "\n[assistant]\n→ tool call call_1: f({})\nfinish_reason: tool_calls\n"
    )


def test_renderers_reject_non_objects():
    with pytest.raises(ValueError):
        render_request([])
    with pytest.raises(ValueError):
        render_response("x")


KEYS = "role content tool_calls function arguments name id index type delta choices message usage".split()
KEYS += "messages tools text image_url url reasoning_content finish_reason".split()
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(KEYS),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(JSONISH)
def test_renderers_survive_arbitrary_json(obj):
    for fn in (render_request, render_response):
        try:
            assert isinstance(fn(obj), str)
        except ValueError:
            assert not isinstance(obj, dict)
    body = f"data: {json.dumps(obj)}\n\ndata: {json.dumps({'choices': [obj]})}\n\n".encode()
    assert isinstance(render_stream(body), str)
    view = ChatView()
    for ct in ("application/json", "text/event-stream", None):
        assert view.render_priority(json.dumps(obj).encode(), md(ct)) in (0, PRIORITY)
        assert view.render_priority(body, md(ct)) in (0, PRIORITY)


@given(st.binary(max_size=500))
def test_render_stream_and_priority_survive_junk(data):
    assert isinstance(render_stream(data), str)
    for ct in ("application/json", "text/event-stream", None):
        assert ChatView().render_priority(data, md(ct)) in (0, PRIORITY)


# --- detection / ChatView ------------------------------------------------------------


def test_detection_helpers():
    assert is_chat_json(REQUEST) and is_chat_json(RESPONSE)
    assert not is_chat_json(EMBEDDINGS) and not is_chat_json(MODELS) and not is_chat_json(EMBEDDINGS_REQUEST)
    assert is_chat_stream(TOOL_STREAM)
    assert not is_chat_stream(b'event: x\ndata: {"type": "message_start"}\n\n')


@pytest.mark.parametrize(
    "data, content_type",
    [
        (dumps(REQUEST), "application/json"),
        (dumps(RESPONSE), "application/json"),
        (dumps(RESPONSE), None),
        (TOOL_STREAM, "text/event-stream"),
        (TOOL_STREAM, None),
        (dumps({"model": "m", "messages": []}), "application/json"),
    ],
)
def test_render_priority_high_for_chat(data, content_type):
    view = ChatView()
    assert view.render_priority(data, md(content_type)) == PRIORITY > 1  # JSON view returns 1


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
        (dumps(REQUEST), "text/html"),
        (b'event: message_start\ndata: {"type": "message_start"}\n\n', "text/event-stream"),
        (b"data: [DONE]\n\n", "text/event-stream"),
        (b"data: {not json\n\n", "text/event-stream"),
        (TOOL_STREAM, "application/octet-stream"),
    ],
)
def test_render_priority_zero_otherwise(data, content_type):
    assert ChatView().render_priority(data, md(content_type)) == 0


def test_prettify_dispatch():
    view = ChatView()
    assert view.prettify(dumps(REQUEST), md("application/json")) == REQUEST_TEXT
    assert view.prettify(dumps(RESPONSE), md("application/json")) == RESPONSE_TEXT
    assert view.prettify(TOOL_STREAM, md("text/event-stream")) == TOOL_STREAM_TEXT
    for bad, ct in [
        (dumps(EMBEDDINGS), "application/json"),
        (b"{oops", "application/json"),
        (b"data: [DONE]\n\n", "text/event-stream"),
    ]:
        with pytest.raises(ValueError):
            view.prettify(bad, md(ct))


def test_register_without_new_api_returns_false(monkeypatch):
    monkeypatch.setattr(chatview, "_ViewBase", object)
    assert chatview.register() is False
    assert chatview.unregister() is False


# --- mitmproxy 12 integration ----------------------------------------------------------


@needs_mitmproxy12
def test_registered_view_is_used_by_prettify_message():
    from mitmproxy import contentviews
    from mitmproxy.test import taddons, tflow

    f = tflow.tflow(resp=True)
    f.request.headers["content-type"] = "application/json"
    f.request.content = dumps(REQUEST)
    f.response.headers["content-type"] = "text/event-stream; charset=utf-8"
    f.response.content = TOOL_STREAM
    f.response.encode("gzip")  # prettify sees decoded data
    with taddons.context():
        assert chatview.register() is True
        try:
            assert "llm chat" in contentviews.registry
            req = contentviews.prettify_message(f.request, f)
            assert (req.view_name, req.text) == ("LLM chat", REQUEST_TEXT)
            resp = contentviews.prettify_message(f.response, f)
            assert (resp.view_name, resp.text, resp.description) == (
                "LLM chat",
                TOOL_STREAM_TEXT,
                "[decoded gzip]",
            )
            assert resp.syntax_highlight == "none"
            # non-chat JSON keeps the JSON view
            f.response.headers["content-type"] = "application/json"
            f.response.content = dumps(EMBEDDINGS)
            assert contentviews.prettify_message(f.response, f).view_name == "JSON"
            # explicitly selected on a non-chat body: mitmproxy reports the ValueError
            forced = contentviews.prettify_message(f.response, f, view_name="llm chat")
            assert forced.syntax_highlight == "error"
        finally:
            assert chatview.unregister() is True
        assert "llm chat" not in contentviews.registry
        assert contentviews.prettify_message(f.request, f).view_name == "JSON"
        assert chatview.unregister() is False
