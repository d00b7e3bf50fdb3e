"""The Anthropic Messages transcript: requests, answers and assembled streams."""

import json

from llmview import messages, sse

REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "stream": True,
    "system": [{"type": "text", "text": "You are a weather bot.", "cache_control": {"type": "ephemeral"}}],
    "tools": [
        {
            "name": "get_weather",
            "description": "Get the current weather\n  for a city.",
            "input_schema": {"type": "object", "properties": {"city": {}, "unit": {}}},
        },
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Paris? See photo."},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJDRA=="},
                },
                {
                    "type": "document",
                    "source": {"type": "url", "url": "https://example.com/a.pdf"},
                    "title": "R",
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Use the tool.", "signature": "EqQBCkYIBRgCKkB"},
                {"type": "redacted_thinking", "data": "abcdef"},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": '{"temp_c": 18}'},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01B",
                    "is_error": True,
                    "content": [{"type": "text", "text": "boom"}],
                },
            ],
        },
    ],
}
REQUEST_TEXT = """\
model: claude-sonnet-4-5
params: max_tokens=1024 · stream=true
tools:
  tool get_weather(city, unit) — Get the current weather for a city.
  tool web_search() [web_search_20250305]

[system]
You are a weather bot.
<cache_control ephemeral>

[user]
Weather in Paris? See photo.
<image media_type=image/jpeg (8 chars base64)>
<document url=https://example.com/a.pdf title=R>

[assistant]
<thinking>
Use the tool.
</thinking>
<redacted_thinking (6 chars)>
→ tool_use toolu_01A: get_weather({"city": "Paris"})

[user]
← tool_result toolu_01A: {"temp_c": 18}
← tool_result toolu_01B (error): boom
"""

RESPONSE = {
    "id": "msg_01XF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "18 and cloudy.", "signature": "sig"},
        {"type": "text", "text": "It is 18 °C and cloudy."},
        {"type": "tool_use", "id": "toolu_02", "name": "now", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 12,
        "output_tokens": 34,
        "cache_read_input_tokens": 8,
        "cache_creation_input_tokens": 0,
    },
}
RESPONSE_TEXT = """\
model: claude-sonnet-4-5-20250929
id: msg_01XF
usage: input 12 · output 34 · cache read 8 · cache write 0

[assistant]
<thinking>
18 and cloudy.
</thinking>
It is 18 °C and cloudy.
→ tool_use toolu_02: now({})
stop_reason: tool_use
"""

START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-haiku-4-5",
        "usage": {
            "input_tokens": 25,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 3,
            "output_tokens": 1,
        },
    },
}


def start(index, block):
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index, d):
    return {"type": "content_block_delta", "index": index, "delta": d}


STREAM = [
    START,
    start(0, {"type": "thinking", "thinking": ""}),
    {"type": "ping"},
    delta(0, {"type": "thinking_delta", "thinking": "Let me "}),
    delta(0, {"type": "thinking_delta", "thinking": "check."}),
    delta(0, {"type": "signature_delta", "signature": "EqQBCkYIBRgC"}),
    {"type": "content_block_stop", "index": 0},
    start(1, {"type": "text", "text": ""}),
    delta(1, {"type": "text_delta", "text": "Hel"}),
    delta(1, {"type": "text_delta", "text": "lo"}),
    {"type": "content_block_stop", "index": 1},
    start(2, {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}),
    delta(2, {"type": "input_json_delta", "partial_json": '{"city":'}),
    delta(2, {"type": "input_json_delta", "partial_json": ' "Paris"}'}),
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    },
    {"type": "message_stop"},
]
STREAM_TEXT = """\
model: claude-haiku-4-5
id: msg_1
usage: input 25 · output 15 · cache read 3 · cache write 5
stream: 17 events, message_stop

[assistant]
<thinking>
Let me check.
</thinking>
Hello
→ tool_use toolu_9: get_weather({"city": "Paris"})
stop_reason: tool_use
"""


def body(objs, named=True):
    """An event stream as Anthropic sends it: each event named after its data's type."""
    return "".join(
        (f"event: {o['type']}\n" if named else "") + f"data: {json.dumps(o)}\n\n" for o in objs
    ).encode()


def render(stream_body):
    return messages.render_stream(sse.objects(sse.parse(stream_body, 1000)[0]))


def test_render_request():
    assert messages.render_request(REQUEST) == REQUEST_TEXT


def test_render_request_string_content_and_unknown_blocks():
    obj = {
        "model": "m",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "user"}],
    }
    obj["messages"].append(
        {"role": "user", "content": [{"type": "container_upload", "file_id": "f"}, "plain"]}
    )
    assert messages.render_request(obj) == (
        "model: m\n\n[system]\nBe brief.\n\n[user]\nHi\n\n[user]\n(empty)\n\n"
        "[user]\n<container_upload>\nplain\n"
    )


def test_render_response():
    assert messages.render_response(RESPONSE) == RESPONSE_TEXT


def test_render_response_stop_sequence_and_server_tool_results():
    content = [{"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": [{"type": "x"}]}]
    obj = {"type": "message", "content": content, "stop_reason": "stop_sequence", "stop_sequence": "END"}
    assert messages.render_response(obj) == (
        "\n[assistant]\n← web_search_tool_result srvtoolu_1: <x>\nstop_reason: stop_sequence (END)\n"
    )


def test_render_stream():
    assert render(body(STREAM)) == STREAM_TEXT


def test_render_stream_without_event_names():
    assert render(body(STREAM, named=False)) == STREAM_TEXT


def test_render_stream_cut_short_shows_what_arrived():
    assert render(body(STREAM[:9])) == (
        "model: claude-haiku-4-5\nid: msg_1\nusage: input 25 · output 1 · cache read 3 · cache write 5\n"
        "stream: 9 events (stream incomplete: no message_stop)\n\n"
        "[assistant]\n<thinking>\nLet me check.\n</thinking>\nHel\n"
    )


def test_render_stream_error_event():
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert render(body([START, error])).endswith(
        "stream: 2 events (stream incomplete: no message_stop)\nerror: overloaded_error: Overloaded\n\n"
        "[assistant]\n(no content)\n"
    )


def test_render_stream_delta_without_its_start():
    assert render(body([delta(0, {"type": "text_delta", "text": "orphan"})])).endswith(
        "[assistant]\norphan\n"
    )


def test_detection():
    assert messages.looks_like_request(REQUEST)
    assert messages.looks_like_request({"model": "m", "messages": [], "system": "x"})
    bare = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    assert not messages.looks_like_request(bare)  # chat's too: only a Messages path makes it Anthropic's
    assert messages.looks_like_response(RESPONSE)
    assert all(messages.looks_like_response(o) for o in STREAM)
    assert not messages.looks_like_response({"type": "error", "error": {}})  # the JSON view shows errors
    assert not messages.looks_like_response({"input_tokens": 12})  # count_tokens: the JSON view's
