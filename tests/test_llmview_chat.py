"""The chat completions transcript: requests, answers and assembled streams."""

import json

from llmview import chat, sse

_BASE = {"id": "chatcmpl-AbC123", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18"}
USAGE = {
    "prompt_tokens": 81,
    "completion_tokens": 15,
    "total_tokens": 96,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}


def chunk(delta, finish=None, index=0):
    return {**_BASE, "choices": [{"index": index, "delta": delta, "finish_reason": finish}], "usage": None}


def body(chunks, done=True):
    """An event stream as OpenAI sends it (with a comment line, as some servers do)."""
    events = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks)
    return (": ping\n\n" + events + ("data: [DONE]\n\n" if done else "")).encode()


def render(stream_body):
    return chat.render_stream(sse.objects(sse.parse(stream_body, 1000)[0]))


TOOL_STREAM = body(
    [
        chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"index": 0, "id": "call_Zx9fQ2", "type": "function", "function": {"name": "get_weather"}}
                ],
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Pa'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ris"}'}}]}),
        chunk({}, finish="tool_calls"),
        {**_BASE, "choices": [], "usage": USAGE},
    ]
)
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
                {"id": "call_Zx9fQ2", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_Zx9fQ2", "content": '{"temp_c": 18}'},
    ],
    "model": "gpt-4o-mini",
    "stream": True,
    "temperature": 0.2,
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Get the current weather\n  for a city.",
                "parameters": {"type": "object", "properties": {"city": {}, "unit": {}}},
            },
        },
        {"type": "function", "function": {"name": "now"}},
    ],
    "tool_choice": "auto",
}
REQUEST_TEXT = """\
model: gpt-4o-mini
params: stream=true · temperature=0.2 · tool_choice=auto
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
{"temp_c": 18}
"""

RESPONSE = {
    "id": "chatcmpl-B9x",
    "object": "chat.completion",
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
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 34,
        "total_tokens": 46,
        "prompt_tokens_details": {"cached_tokens": 8},
        "completion_tokens_details": {"reasoning_tokens": 20},
    },
}
RESPONSE_TEXT = """\
model: deepseek-reasoner
id: chatcmpl-B9x
usage: prompt 12 · completion 34 · total 46 (cached 8, reasoning 20)

[assistant]
<reasoning>
The tool said 18 and cloudy.
</reasoning>
It is 18 °C and cloudy in Paris.
finish_reason: stop
"""


def test_render_request():
    assert chat.render_request(REQUEST) == REQUEST_TEXT


def test_render_request_names_and_empty_messages():
    obj = {
        "model": "m",
        "messages": [{"role": "user", "name": "alice", "content": ""}, {"role": "assistant"}],
    }
    assert (
        chat.render_request(obj)
        == "model: m\n\n[user] name=alice\n(no content)\n\n[assistant]\n(no content)\n"
    )


def test_render_response():
    assert chat.render_response(RESPONSE) == RESPONSE_TEXT


def test_render_response_numbers_several_choices():
    obj = {"choices": [{"index": i, "message": {"content": f"answer {i}"}} for i in range(2)]}
    assert chat.render_response(obj) == "\n[assistant] choice 0\nanswer 0\n\n[assistant] choice 1\nanswer 1\n"


def test_render_stream_assembles_tool_call_arguments():
    assert render(TOOL_STREAM) == TOOL_STREAM_TEXT


def test_render_stream_text_reasoning_and_refusal():
    chunks = [
        chunk({"role": "assistant", "reasoning": "Think"}),
        chunk({"reasoning_content": "ing."}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo", "refusal": "no"}),
        chunk({}, finish="stop"),
    ]
    assert render(body(chunks)).endswith(
        "[assistant]\n<reasoning>\nThinking.\n</reasoning>\nHello\nrefusal: no\nfinish_reason: stop\n"
    )


def test_render_stream_parallel_calls_and_calls_without_index():
    call = {"function": {"name": "f", "arguments": "{}"}}
    chunks = [
        chunk({"tool_calls": [{"index": 0, "id": "a", **call}, {"index": 1, "id": "b", **call}]}),
        chunk({"tool_calls": [{"id": "c", "function": {"name": "g", "arguments": '{"x":'}}]}),
        chunk({"tool_calls": [{"function": {"arguments": " 1}"}}]}),  # no index, no id: the last call's
    ]
    assert render(body(chunks)).endswith(
        '→ tool call a: f({})\n→ tool call b: f({})\n→ tool call c: g({"x": 1})\n'
    )


def test_render_stream_cut_short_and_errors():
    chunks = [chunk({"content": "Hi"}), {"error": {"message": "overloaded"}}]
    text = render(body(chunks, done=False) + b"data: {not json\n\n")
    assert "stream: 3 events (1 unparseable) (stream incomplete: no [DONE])" in text
    assert 'error: {"message": "overloaded"}' in text
    assert text.endswith("[assistant]\nHi\n")


def test_render_stream_without_blank_lines_between_events():
    joined = "data: " + json.dumps(chunk({"content": "a"})) + "\ndata: " + json.dumps(chunk({"content": "b"}))
    assert render(f"{joined}\ndata: [DONE]\n\n".encode()).endswith(
        "stream: 2 events, [DONE]\n\n[assistant]\nab\n"
    )


def test_render_stream_caps_choices():
    chunks = [chunk({"content": "x"}, index=i) for i in range(chat.MAX_CHOICES + 3)]
    text = render(body(chunks))
    assert text.count("[assistant] choice") == chat.MAX_CHOICES
    assert text.endswith(f"… 3 deltas of choices past the first {chat.MAX_CHOICES} not shown\n")


def test_long_text_is_cut():
    text = chat.render_response({"choices": [{"message": {"content": "x" * 70_000}}]})
    assert "… [4464 more characters not shown]" in text


def test_detection():
    assert chat.looks_like_request(REQUEST)
    assert not chat.looks_like_request({"model": "text-embedding-3-small", "input": "hello"})
    assert chat.looks_like_response(RESPONSE)
    assert chat.looks_like_response(chunk({}))
    assert chat.looks_like_response({"choices": [{"delta": {}}]})  # a server that sends no "object"
    assert not chat.looks_like_response({"object": "list", "data": []})
    assert not chat.looks_like_response({"error": {"message": "bad key"}})
