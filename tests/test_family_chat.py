import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cfgw import family_chat
from cfgw.family import Usage
from cfgw.family_chat import (
    CHAT,
    OTHER,
    ChatStreamUsage,
    looks_like_request,
    looks_like_response,
    openai_error_body,
    render_request,
    render_response,
    render_stream,
    usage_from_json,
)
from cfgw.sse import Event

# --- fixtures: recorded-style OpenAI traffic ----------------------------------------

_BASE = {
    "id": "chatcmpl-AbC123",
    "object": "chat.completion.chunk",
    "created": 1732600000,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_0ba0d124f1",
}
USAGE = {
    "prompt_tokens": 81,
    "completion_tokens": 15,
    "total_tokens": 96,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
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
    {**_BASE, "choices": [], "usage": USAGE},
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


def events(chunks, done=True):
    """What cfgw.sse.parse makes of ``data: <chunk>`` events (and a final ``data: [DONE]``)."""
    out = [Event("", json.dumps(c, separators=(",", ":"))) for c in chunks]
    return [*out, Event("", "[DONE]")] if done else out


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

EMBEDDINGS = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 3, "total_tokens": 3},
}
EMBEDDINGS_REQUEST = {"model": "text-embedding-3-small", "input": "hello"}
MODELS = {"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]}


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["invalid_proxy_key", 2009, None])
def test_openai_error_body(code):
    assert openai_error_body(401, "bad key", code, "authentication_error") == {
        "error": {"message": "bad key", "type": "authentication_error", "param": None, "code": code}
    }
    assert CHAT.error_body is openai_error_body and OTHER.error_body is openai_error_body


# --- usage -----------------------------------------------------------------------------


def test_usage_from_chat_completion():
    assert usage_from_json(RESPONSE) == Usage(
        input_tokens=12, output_tokens=34, total_tokens=46, cached_tokens=8, reasoning_tokens=20
    )
    assert usage_from_json({"usage": USAGE}) == Usage(81, 15, 96, cached_tokens=0, reasoning_tokens=0)


def test_usage_from_embeddings():
    u = OTHER.usage_from_json(EMBEDDINGS)
    assert u == Usage(input_tokens=3, output_tokens=None, total_tokens=3)
    assert u.total == 3


def test_usage_missing_total():
    u = usage_from_json({"usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    assert u == Usage(3, 4, None)
    assert u.total == 7


def test_usage_responses_api_names_are_a_fallback():
    body = {
        "usage": {
            "input_tokens": 3,
            "output_tokens": 4,
            "total_tokens": 7,
            "input_tokens_details": {"cached_tokens": 2},
            "output_tokens_details": {"reasoning_tokens": 1},
        }
    }
    assert usage_from_json(body) == Usage(3, 4, 7, cached_tokens=2, reasoning_tokens=1)
    both = {"usage": {"prompt_tokens": 5, "input_tokens": 99, "completion_tokens": 6, "output_tokens": 99}}
    assert usage_from_json(both) == Usage(5, 6, None)


@pytest.mark.parametrize(
    "body",
    [
        None,
        "usage",
        [1, 2],
        {"usage": None},
        {"usage": {}},
        {"usage": {"prompt_tokens": "12", "total_tokens": True}},
        {"usage": {"prompt_tokens": -1}},
        {"usage": {"prompt_tokens": 1.5}},
        {"usage": {"prompt_tokens": 10**400}},  # would overflow the metrics' floats
        {"usage": {"prompt_tokens": 2**53 + 1}},
        {"usage": {"prompt_tokens_details": {"cached_tokens": 5}}},
        {"no": "usage"},
    ],
)
def test_usage_from_json_junk(body):
    assert usage_from_json(body) is None


def test_the_largest_count_is_kept():
    assert usage_from_json({"usage": {"prompt_tokens": 2**53}}) == Usage(2**53, None, None)


def test_usage_details_of_the_wrong_type_are_ignored():
    body = {"usage": {"prompt_tokens": 2, "prompt_tokens_details": [8], "completion_tokens_details": "x"}}
    assert usage_from_json(body) == Usage(2, None, None)


def sse_chunks(include_usage=True, n_deltas=3):
    """A realistic OpenAI stream's chunks; with include_usage every chunk has "usage": null."""
    extra = {"usage": None} if include_usage else {}
    out = [{**_BASE, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], **extra}]
    for i in range(n_deltas):
        out.append({**_BASE, "choices": [{"index": 0, "delta": {"content": f"word{i} "}}], **extra})
    out.append({**_BASE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra})
    if include_usage:
        out.append({**_BASE, "choices": [], "usage": USAGE})
    return out


def read_usage(evs):
    reader = CHAT.stream_usage()
    for ev in evs:
        reader.event(ev)
    return reader.usage


def test_stream_usage_from_the_include_usage_chunk():
    assert read_usage(events(sse_chunks())) == Usage(81, 15, 96, cached_tokens=0, reasoning_tokens=0)
    assert read_usage(events(sse_chunks(include_usage=False))) is None
    assert read_usage([]) is None


def test_stream_usage_parses_only_the_usage_chunk(monkeypatch):
    calls = []
    real_loads = json.loads

    def counting_loads(s, *a, **kw):
        calls.append(s)
        return real_loads(s, *a, **kw)

    evs = events(sse_chunks(n_deltas=300))
    monkeypatch.setattr(family_chat.json, "loads", counting_loads)
    assert read_usage(evs) == Usage(81, 15, 96, cached_tokens=0, reasoning_tokens=0)
    assert calls == [evs[-2].data]  # only the include_usage chunk, not the 303 "usage":null ones


def test_stream_usage_last_one_wins_and_spacing_varies():
    evs = [
        Event("", '{"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}'),
        Event("", '{"usage" :\n {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}'),
        Event("", '{"usage": null}'),
        Event("", "[DONE]"),
    ]
    assert read_usage(evs) == Usage(5, 6, 11)


def test_stream_usage_when_a_server_omits_blank_lines():
    # Without blank lines every data line of the body joins one event.
    joined = "\n".join(json.dumps(c) for c in sse_chunks()) + "\n[DONE]"
    assert read_usage([Event("", joined)]) == Usage(81, 15, 96, cached_tokens=0, reasoning_tokens=0)


@pytest.mark.parametrize(
    "data",
    ['{"usage": {"prompt_tokens": 1', '{"usage": {}}', '["usage", {"x": 1}]', '"usage": {', "[DONE]", ""],
)
def test_stream_usage_junk(data):
    assert read_usage([Event("", data)]) is None


def test_stream_usage_survives_events_of_the_wrong_type():
    reader = ChatStreamUsage()
    for ev in (None, Event("", None), Event("", b'{"usage": {"total_tokens": 1}}'), 42):
        reader.event(ev)
    assert reader.usage is None


# --- streams ------------------------------------------------------------------------------


def test_render_stream_tool_call_exact():
    assert render_stream(events(TOOL_STREAM_EVENTS)) == TOOL_STREAM_TEXT


def test_render_stream_of_a_parsed_body():
    from cfgw import sse

    assert render_stream(sse.parse(TOOL_STREAM)) == TOOL_STREAM_TEXT
    crlf = b"event: message\r\nid: 1\r\n: keepalive\r\ngarbage line\r\n\r\n" + TOOL_STREAM.replace(
        b"\n", b"\r\n"
    )
    assert render_stream(sse.parse(crlf)) == TOOL_STREAM_TEXT


def test_render_stream_without_blank_lines_between_events():
    joined = "\n".join(json.dumps(e) for e in TOOL_STREAM_EVENTS) + "\n[DONE]"
    assert render_stream([Event("", joined)]) == TOOL_STREAM_TEXT


def test_render_stream_incomplete():
    evs = [*events(TOOL_STREAM_EVENTS[:4], done=False), Event("", '{"id": "chatcmpl-AbC123", "choi')]
    assert render_stream(evs) == (
        "model: gpt-4o-mini-2024-07-18\n"
        "id: chatcmpl-AbC123\n"
        "stream: 5 events (1 unparseable) (stream incomplete: no [DONE])\n"
        "\n[assistant]\n"
        '→ tool call call_Zx9fQ2: get_weather({"city": "Paris"})\n'
    )


def test_render_stream_content_reasoning_and_two_choices():
    def ev(index, delta, finish=None):
        return {
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }

    chunks = [
        ev(0, {"role": "assistant", "reasoning": "think "}),
        ev(1, {"role": "assistant", "content": "B"}),
        ev(0, {"reasoning": "more"}),
        ev(0, {"content": "Hel"}),
        ev(0, {"content": "lo"}, "stop"),
        ev(1, {}, "length"),
    ]
    assert render_stream(events(chunks, done=False)) == (
        "model: m\n"
        "stream: 6 events (stream incomplete: no [DONE])\n"
        "\n[assistant] choice 0\n<reasoning>\nthink more\n</reasoning>\nHello\nfinish_reason: stop\n"
        "\n[assistant] choice 1\nB\nfinish_reason: length\n"
    )


def test_render_stream_parallel_tool_calls():
    def ev(calls):
        return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"tool_calls": calls}}]}

    chunks = [
        ev([{"index": 0, "id": "call_a", "function": {"name": "f", "arguments": '{"x":'}}]),
        ev([{"index": 1, "id": "call_b", "function": {"name": "g", "arguments": ""}}]),
        ev([{"index": 0, "function": {"arguments": " 1}"}}, {"index": 1, "function": {"arguments": "{}"}}]),
    ]
    assert render_stream(events(chunks)) == (
        "stream: 3 events, [DONE]\n"
        "\n[assistant]\n"
        '→ tool call call_a: f({"x": 1})\n'
        "→ tool call call_b: g({})\n"
    )


def test_render_stream_tool_fragments_without_index():
    """Some providers send no index: a new id starts a call, an id-less fragment continues the last one."""

    def ev(**frag):
        return {"choices": [{"delta": {"tool_calls": [frag]}}]}

    chunks = [
        ev(id="a", function={"name": "f", "arguments": "{"}),
        ev(function={"arguments": "1"}),
        ev(id="b", function={"name": "g", "arguments": "["}),
        ev(id="a", function={"arguments": "}"}),  # back to a by its id
        ev(id="b", function={"arguments": "2"}),
        ev(function={"arguments": "]", "name": "ignored"}),  # continues b, the last one used
    ]
    text = render_stream(events(chunks))
    assert text == "stream: 6 events, [DONE]\n\n[assistant]\n→ tool call a: f({1})\n→ tool call b: g([2])\n"


def test_render_stream_refusal_function_call_and_errors():
    chunks = [
        {"choices": [{"index": 0, "delta": {"refusal": "I can"}}]},
        {"choices": [{"index": 0, "delta": {"refusal": "'t."}}]},
        {"choices": [{"index": 0, "delta": {"function_call": {"name": "f", "arguments": '{"a"'}}}]},
        {"choices": [{"index": 0, "delta": {"function_call": {"arguments": ": 1}"}}}]},
        {"error": {"message": "overloaded", "code": 529}},
        [1, 2],
    ]
    assert render_stream(events(chunks, done=False)) == (
        "stream: 6 events (1 unparseable) (stream incomplete: no [DONE])\n"
        'error: {"message": "overloaded", "code": 529}\n'
        "\n[assistant]\nrefusal: I can't.\n"
        '→ function call: f({"a": 1})\n'
    )


def test_render_stream_empty_and_role_only():
    assert render_stream([]) == "stream: 0 events (stream incomplete: no [DONE])\n"
    only_role = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    assert render_stream(events(only_role)) == "stream: 1 events, [DONE]\n\n[assistant]\n(no content)\n"
    empty_text = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    assert render_stream(events(empty_text)) == "stream: 1 events, [DONE]\n\n[assistant]\n(empty)\n"


def test_render_stream_caps_the_number_of_choices(monkeypatch):
    monkeypatch.setattr(family_chat, "_MAX_CHOICES", 2)
    chunk = {"choices": [{"index": i, "delta": {"content": str(i)}} for i in range(4)]}
    assert render_stream(events([chunk])) == (
        "stream: 1 events, [DONE]\n"
        "\n[assistant] choice 0\n0\n"
        "\n[assistant] choice 1\n1\n"
        "\n… more choices not shown (only the first 2 are assembled)\n"
    )


def test_render_stream_ten_thousand_tool_fragments_is_linear():
    """5,000 index-less tool calls of two fragments each: 10k fragments, ~1.8 MB of events.

    The former per-fragment rebuild of the id map took 4.45 s here and blocked the proxy.
    """
    pad = "x" * 100
    chunks = []
    for i in range(5000):
        first = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": f"f{i}", "arguments": f'{{"i": {i}'},
        }
        rest = {"function": {"arguments": f', "pad": "{pad}"}}'}}
        chunks.append({**_BASE, "choices": [{"index": 0, "delta": {"tool_calls": [first]}}]})
        chunks.append({**_BASE, "choices": [{"index": 0, "delta": {"tool_calls": [rest]}}]})
    evs = events(chunks)
    assert sum(len(e.data) for e in evs) > 1_800_000
    start = time.perf_counter()
    text = render_stream(evs)
    elapsed = time.perf_counter() - start
    calls = "".join(f'→ tool call call_{i}: f{i}({{"i": {i}, "pad": "{pad}"}})\n' for i in range(5000))
    assert text == (
        "model: gpt-4o-mini-2024-07-18\nid: chatcmpl-AbC123\nstream: 10000 events, [DONE]\n\n[assistant]\n"
        + calls
    )
    assert elapsed < 1.0, elapsed


def test_render_stream_cuts_long_text():
    chunks = [{"choices": [{"index": 0, "delta": {"content": "a" * 40_000}}]}] * 2
    text = render_stream(events(chunks))
    assert text == (
        "stream: 2 events, [DONE]\n\n[assistant]\n" + "a" * 65536 + "… [14464 more characters not shown]\n"
    )


# --- requests and responses ----------------------------------------------------------------


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
                {"role": "assistant", "audio": {"id": "audio_1"}, "refusal": "no"},
                {"role": "user", "content": [{"type": "file", "file": {"filename": "a.pdf"}}, {"type": "x"}]},
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
        "\n[assistant]\nrefusal: no\n<audio audio_1>\n"
        "\n[user]\n<file a.pdf>\n<x>\n"
    )


def test_render_request_cuts_long_parameter_values():
    text = render_request({"model": "m", "response_format": {"schema": "s" * 2000}})
    assert (
        text
        == 'model: m\nparams: response_format={"schema": "'
        + "s" * 988
        + "… [1014 more characters not shown]\n"
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
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": {"a": 1}},
                        },
                        {"id": "call_2", "type": "custom", "custom": {"input": "x"}},
                        "junk",
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}},
    }
    assert render_response(obj) == (
        "usage: prompt 5 · completion ? · total 5 (cached 4)\n"
        '\n[assistant]\n→ tool call call_1: f({"a": 1})\n→ tool call call_2: custom()\n'
        '→ tool call: "junk"\nfinish_reason: tool_calls\n'
    )


def test_render_response_error_and_two_choices():
    obj = {
        "error": [{"code": 2009, "message": "Unauthorized"}],
        "choices": [{"message": {"content": "a"}}, {"index": 1, "message": "junk"}, "junk"],
    }
    assert render_response(obj) == (
        'error: [{"code": 2009, "message": "Unauthorized"}]\n'
        "\n[assistant] choice 0\na\n"
        "\n[assistant] choice 1\n(no content)\n"
    )


def test_renderers_of_non_objects_are_best_effort():
    assert render_request([1, "a"]) == '[1, "a"]\n'
    assert render_response("x") == '"x"\n'
    nested: list = []
    for _ in range(100_000):  # deeper than json.dumps can encode
        nested = [nested]
    assert render_response(nested) == "<too deeply nested>\n"


# --- detection -------------------------------------------------------------------------------


def test_detection():
    assert looks_like_request(REQUEST) and looks_like_request({"messages": [{"role": "user"}]})
    assert looks_like_request({"model": "m", "messages": []})
    assert looks_like_response(RESPONSE) and looks_like_response(TOOL_STREAM_EVENTS[0])
    assert looks_like_response({"choices": [{"delta": {}}]})  # an unlabeled chunk
    assert looks_like_response({"object": "chat.completion.chunk", "choices": [], "usage": USAGE})
    for obj in (EMBEDDINGS, EMBEDDINGS_REQUEST, MODELS, {"messages": []}, {"messages": "x", "model": "m"}):
        assert not looks_like_request(obj) and not looks_like_response(obj)
    assert not looks_like_response({"type": "message_start", "message": {}})
    assert not looks_like_response({"object": "response", "output": []})
    assert not looks_like_response({"object": "text_completion", "choices": [{"text": "hi"}]})
    assert not looks_like_request(RESPONSE) and not looks_like_response(REQUEST)


def test_other_family_leaves_bodies_to_the_json_view():
    assert (CHAT.name, OTHER.name) == ("chat", "other")
    for obj in (REQUEST, RESPONSE, EMBEDDINGS, MODELS):
        assert not OTHER.looks_like_request(obj) and not OTHER.looks_like_response(obj)
    assert (
        OTHER.render_response(MODELS) == '{"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]}\n'
    )
    assert OTHER.render_stream([Event("", '{"a": 1}'), Event("x", "[DONE]")]) == '{"a": 1}\n[DONE]\n'
    assert OTHER.stream_usage().usage is None


# --- hostile input -----------------------------------------------------------------------------

KEYS = "role content tool_calls function arguments name id index type delta choices message usage".split()
KEYS += "messages tools text image_url url reasoning_content finish_reason prompt_tokens total_tokens".split()
KEYS += "prompt_tokens_details cached_tokens function_call refusal audio model error object".split()
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=25,
)
DATA = JSONISH.map(json.dumps) | st.text(max_size=30) | st.sampled_from(["[DONE]", "", "\n", '"usage": {'])


@given(JSONISH)
def test_pure_functions_survive_arbitrary_json(obj):
    for fn in (render_request, render_response, OTHER.render_request):
        assert isinstance(fn(obj), str)
    u = usage_from_json(obj)
    assert u is None or isinstance(u, Usage)
    assert isinstance(looks_like_request(obj), bool) and isinstance(looks_like_response(obj), bool)
    assert isinstance(render_stream(events([obj, {"choices": [obj]}, {"choices": [{"delta": obj}]}])), str)


@given(st.lists(st.builds(Event, st.text(max_size=5), DATA), max_size=8))
def test_stream_functions_survive_arbitrary_events(evs):
    assert isinstance(render_stream(evs), str)
    assert isinstance(OTHER.render_stream(evs), str)
    u = read_usage(evs)
    assert u is None or isinstance(u, Usage)
