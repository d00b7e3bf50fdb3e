import importlib
import json
import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfgw import family_messages as fm
from cfgw import sse
from cfgw.family import Usage as FamilyUsage
from cfgw.family_messages import (
    FAMILY,
    MessagesStreamUsage,
    error_body,
    looks_like_request,
    looks_like_response,
    render_request,
    render_response,
    render_stream,
    usage_from_json,
)
from cfgw.sse import Event
from cfgw.transcript import MAX_TEXT

# --- fixtures: recorded-style Anthropic traffic -----------------------------------------

REQUEST = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "temperature": 0.2,
    "stream": True,
    "thinking": {"type": "enabled", "budget_tokens": 2000},
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "system": [{"type": "text", "text": "You are a weather bot.", "cache_control": {"type": "ephemeral"}}],
    "tools": [
        {
            "name": "get_weather",
            "description": "Get the current weather\n  for a city.",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                "required": ["city"],
            },
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
params: max_tokens=1024 · temperature=0.2 · stream=true · thinking=enabled(budget_tokens=2000) · \
tool_choice=auto(disable_parallel_tool_use=true)
tools:
  tool get_weather(city, unit) — Get the current weather for a city.
  tool web_search [web_search_20250305]

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

USAGE = {
    "input_tokens": 12,
    "output_tokens": 34,
    "cache_read_input_tokens": 8,
    "cache_creation_input_tokens": 0,
}
RESPONSE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
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
    "usage": USAGE,
}
RESPONSE_TEXT = """\
model: claude-sonnet-4-5-20250929
id: msg_01XFDUDYJgAACzvnptvVoYEL
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
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "cache_creation_input_tokens": 5,
            "cache_read_input_tokens": 3,
            "output_tokens": 1,
        },
    },
}


def Usage(*args, **kwargs) -> FamilyUsage:
    """Anthropic reports cache reads and writes apart from the input tokens."""
    return FamilyUsage(*args, cache_in_input=False, **kwargs)


def test_total_counts_cache_reads_and_writes_once():
    u = usage_from_json(
        {
            "usage": {
                "input_tokens": 3,
                "output_tokens": 4,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 20,
            }
        }
    )
    assert u is not None and u.total == 127


def block_start(index, block):
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index, d):
    return {"type": "content_block_delta", "index": index, "delta": d}


def message_delta(stop_reason, usage, stop_sequence=None):
    return {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
        "usage": usage,
    }


STREAM_OBJS = [
    START,
    block_start(0, {"type": "thinking", "thinking": ""}),
    {"type": "ping"},
    delta(0, {"type": "thinking_delta", "thinking": "Let me "}),
    delta(0, {"type": "thinking_delta", "thinking": "check."}),
    delta(0, {"type": "signature_delta", "signature": "EqQBCkYIBRgC"}),
    {"type": "content_block_stop", "index": 0},
    block_start(1, {"type": "text", "text": ""}),
    delta(1, {"type": "text_delta", "text": "Hel"}),
    delta(1, {"type": "text_delta", "text": "lo"}),
    {"type": "content_block_stop", "index": 1},
    block_start(2, {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}),
    delta(2, {"type": "input_json_delta", "partial_json": ""}),
    delta(2, {"type": "input_json_delta", "partial_json": '{"city":'}),
    delta(2, {"type": "input_json_delta", "partial_json": ' "Paris"}'}),
    {"type": "content_block_stop", "index": 2},
    message_delta("tool_use", {"output_tokens": 15}),
    {"type": "message_stop"},
]


def events(objs):
    """Events as the SSE parser dispatches them: Anthropic names each event after its data's type."""
    return [Event(o["type"], json.dumps(o, separators=(",", ":"))) for o in objs]


STREAM = events(STREAM_OBJS)
STREAM_TEXT = """\
model: claude-haiku-4-5
id: msg_1
usage: input 25 · output 15 · cache read 3 · cache write 5
stream: 18 events, message_stop

[assistant]
<thinking>
Let me check.
</thinking>
Hello
→ tool_use toolu_9: get_weather({"city": "Paris"})
stop_reason: tool_use
"""


def split_sse(text):
    """Events of an SSE text, as the proxy's own parser splits them."""
    return sse.parse(text.encode())


# --- the Family -----------------------------------------------------------------------------


def test_family_wiring():
    assert FAMILY.name == "messages"
    assert FAMILY.error_body is error_body
    assert FAMILY.usage_from_json is usage_from_json
    assert isinstance(FAMILY.stream_usage(), MessagesStreamUsage)
    assert FAMILY.stream_usage() is not FAMILY.stream_usage()
    assert FAMILY.stream_usage().usage is None
    assert (FAMILY.render_request, FAMILY.render_response, FAMILY.render_stream) == (
        render_request,
        render_response,
        render_stream,
    )
    assert (FAMILY.looks_like_request, FAMILY.looks_like_response) == (
        looks_like_request,
        looks_like_response,
    )


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status, openai_type, anthropic_type",
    [
        (400, "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "authentication_error"),
        (402, "invalid_request_error", "billing_error"),
        (403, "permission_error", "permission_error"),
        (404, "not_found_error", "not_found_error"),
        (409, "invalid_request_error", "conflict_error"),
        (413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", "rate_limit_error"),
        (500, "server_error", "api_error"),
        (502, "server_error", "api_error"),
        (503, "server_error", "api_error"),
        (504, "server_error", "timeout_error"),
        (529, "server_error", "overloaded_error"),
        # unlisted 4xx: the proxy's OpenAI type when Anthropic has the same name, else invalid_request_error
        (405, "invalid_request_error", "invalid_request_error"),
        (418, "permission_error", "permission_error"),
        (422, "server_error", "invalid_request_error"),
        # hostile status values
        ("401", "authentication_error", "authentication_error"),
        (None, "nonsense", "invalid_request_error"),
        (True, None, "invalid_request_error"),
    ],
)
def test_error_type_by_status(status, openai_type, anthropic_type):
    body = error_body(status, "Unauthorized", None, openai_type)
    assert body == {"type": "error", "error": {"type": anthropic_type, "message": "Unauthorized"}}


def test_error_body_carries_the_code():
    assert error_body(401, "Invalid proxy key", "invalid_proxy_key", "authentication_error") == {
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": "Invalid proxy key",
            "code": "invalid_proxy_key",
        },
    }
    assert error_body(400, "Invalid provider", 2008, "invalid_request_error")["error"]["code"] == 2008
    assert "code" not in error_body(400, "x", None, "invalid_request_error")["error"]
    assert "code" not in error_body(400, "x", True, "invalid_request_error")["error"]
    assert "code" not in error_body(400, "x", [1], "invalid_request_error")["error"]  # type: ignore[arg-type]
    assert error_body(400, None, None, "x")["error"]["message"] == "null"  # type: ignore[arg-type]
    assert json.loads(json.dumps(error_body(500, "ü", 2005, "server_error")))["error"]["message"] == "ü"


# --- errors as the real anthropic SDK sees them ------------------------------------------------


def _sdk():
    anthropic = pytest.importorskip("anthropic")
    base = importlib.import_module("anthropic._base_client")
    # anthropic >= 2 is built on httpx2 and refuses httpx objects; older releases use httpx.
    http = importlib.import_module("httpx2" if hasattr(base, "httpx2") else "httpx")
    return anthropic, http


@pytest.mark.parametrize(
    "status, code, openai_type, exc_name",
    [
        (400, 2019, "invalid_request_error", "BadRequestError"),
        (401, "invalid_proxy_key", "authentication_error", "AuthenticationError"),
        (401, 2009, "authentication_error", "AuthenticationError"),
        (403, "forbidden_path", "permission_error", "PermissionDeniedError"),
        (404, "unknown_path", "not_found_error", "NotFoundError"),
        (413, "body_too_large", "invalid_request_error", "RequestTooLargeError"),
        (429, 2003, "rate_limit_error", "RateLimitError"),
        (500, "fail_closed", "server_error", "InternalServerError"),
        (502, 2005, "server_error", "InternalServerError"),
        (529, "overloaded", "server_error", "InternalServerError"),
    ],
)
def test_sdk_raises_its_usual_exception_with_message_and_code(status, code, openai_type, exc_name):
    anthropic, http = _sdk()
    body = error_body(status, "Refused by cf-gateway: reason here", code, openai_type)
    seen = []

    def handler(request):
        seen.append(request.url.path)
        return http.Response(status, json=body)

    client = anthropic.Anthropic(
        api_key="sk-ant-test",
        base_url="http://proxy.test",
        max_retries=0,
        http_client=http.Client(transport=http.MockTransport(handler)),
    )
    with pytest.raises(getattr(anthropic, exc_name)) as info:
        client.messages.create(model="claude-x", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    exc = info.value
    assert seen == ["/v1/messages"]
    assert exc.status_code == status
    assert "Refused by cf-gateway: reason here" in str(exc)
    assert repr(code) in str(exc)  # the SDK prints the body: 'invalid_proxy_key' or 2009
    assert exc.body == body


# --- usage ----------------------------------------------------------------------------------


def test_usage_from_message():
    assert usage_from_json(RESPONSE) == Usage(
        input_tokens=12, output_tokens=34, cached_tokens=8, cache_creation_tokens=0
    )
    assert usage_from_json(RESPONSE).total == 54  # no total reported: the sum
    assert usage_from_json({"usage": {"input_tokens": 3, "output_tokens": 4}}) == Usage(3, 4)


def test_usage_from_count_tokens_answer():
    assert usage_from_json({"input_tokens": 2095}) == Usage(input_tokens=2095)
    assert usage_from_json({"input_tokens": -1}) is None


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "usage",
        {},
        {"usage": None},
        {"usage": []},
        {"usage": {}},
        {"usage": {"input_tokens": True, "output_tokens": 1.5, "cache_read_input_tokens": -3}},
        {"usage": {"input_tokens": "12"}},
        {"type": "error", "error": {"type": "api_error", "message": "x"}},
    ],
)
def test_usage_from_json_none(obj):
    assert usage_from_json(obj) is None


def test_usage_from_json_keeps_valid_fields_only():
    assert usage_from_json(
        {"usage": {"input_tokens": 5, "output_tokens": None, "cache_read_input_tokens": 2.0}}
    ) == (Usage(input_tokens=5))
    assert usage_from_json({"usage": {"output_tokens": 10**15}}) == Usage(output_tokens=10**15)
    assert usage_from_json({"usage": {"output_tokens": 10**30}}) is None  # no response has that many


# --- stream usage ---------------------------------------------------------------------------


def read(evs):
    r = MessagesStreamUsage()
    for e in evs:
        r.event(e)
    return r.usage


def test_stream_usage_start_then_cumulative_delta():
    assert read(STREAM) == Usage(input_tokens=25, output_tokens=15, cached_tokens=3, cache_creation_tokens=5)
    assert read(STREAM[:1]) == Usage(
        input_tokens=25, output_tokens=1, cached_tokens=3, cache_creation_tokens=5
    )
    assert read([]) is None


def test_stream_usage_delta_updates_input_and_cache_fields():
    evs = events(
        [
            START,
            message_delta(
                "end_turn",
                {
                    "input_tokens": 30,
                    "cache_creation_input_tokens": None,
                    "cache_read_input_tokens": 9,
                    "output_tokens": 7,
                    "server_tool_use": None,
                },
            ),
            message_delta(None, {"output_tokens": 40}),  # cumulative: replaces, never adds
        ]
    )
    assert read(evs) == Usage(input_tokens=30, output_tokens=40, cached_tokens=9, cache_creation_tokens=5)


def test_stream_usage_delta_without_start():
    assert read(events([message_delta("end_turn", {"output_tokens": 3})])) == Usage(output_tokens=3)


def test_stream_usage_parses_only_usage_events(monkeypatch):
    parsed = []

    def loads(s):
        parsed.append(s)
        return json.loads(s)

    monkeypatch.setattr(fm, "json", SimpleNamespace(loads=loads))
    assert read(STREAM).output_tokens == 15
    assert [json.loads(p)["type"] for p in parsed] == ["message_start", "message_delta"]
    parsed.clear()
    read([Event("error", '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')])
    read(
        [Event("content_block_delta", json.dumps(delta(0, {"type": "text_delta", "text": "message_delta"})))]
    )
    assert parsed == []


def test_stream_usage_unnamed_events_by_type():
    """Relays that drop ``event:`` lines: the type at the head of the data decides."""
    unnamed = [Event("", e.data) for e in STREAM]
    assert read(unnamed) == read(STREAM)
    trick = Event("", '{"type":"x","note":"message_delta","usage":{"output_tokens":5}}')
    assert read([trick]) is None  # the name appears, but not as the type


def test_stream_usage_from_sse_text():
    text = "".join(f"event: {e.name}\ndata: {e.data}\n\n" for e in STREAM)
    assert read(split_sse(text)) == read(STREAM)


@pytest.mark.parametrize(
    "ev",
    [
        Event("message_start", ""),
        Event("message_start", "{oops"),
        Event("message_start", "[1]"),
        Event("message_start", '{"message": []}'),
        Event("message_start", '{"message": {"usage": "lots"}}'),
        Event("message_delta", '{"usage": {"output_tokens": -1}}'),
        Event("message_delta", "[" * 100_000),
        Event("message_delta", '{"usage": {"output_tokens": 1}, "pad": "' + "x" * (1 << 20) + '"}'),
        Event("message_delta", None),  # type: ignore[arg-type]
        Event(None, '{"type": "message_delta", "usage": {"output_tokens": 1}}'),  # type: ignore[arg-type]
        Event(["unhashable"], "{}"),  # type: ignore[arg-type]
        "not an event",
        None,
    ],
)
def test_stream_usage_ignores_hostile_events(ev):
    assert read([ev]) is None


# --- requests -------------------------------------------------------------------------------


def test_render_request_exact():
    assert render_request(REQUEST) == REQUEST_TEXT


def test_render_request_string_system_and_content_and_odd_blocks():
    text = render_request(
        {
            "model": "claude-x",
            "max_tokens": 10,
            "tool_choice": {"type": "tool", "name": "f"},
            "metadata": {"user_id": "u1"},
            "system": "Be brief.",
            "tools": [
                {"name": "f", "input_schema": {"type": "object"}},
                {"type": "custom", "name": "g"},
                "junk",
            ],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "user", "content": ""},
                {"role": "user"},
                "not a message",
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.png"}},
                        {"type": "image", "source": {"type": "file", "file_id": "file_011"}},
                        {
                            "type": "document",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"},
                        },
                        {
                            "type": "document",
                            "source": {"type": "text", "media_type": "text/plain", "data": "abc"},
                        },
                        {"type": "document", "source": {"type": "content", "content": [{"type": "text"}]}},
                        {"type": "image"},
                        {"type": "search_result", "title": "t"},
                        {"type": 7},
                        {"text": "untyped"},
                        "a bare string",
                        42,
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "server_tool_use",
                            "id": "srvtoolu_1",
                            "name": "web_search",
                            "input": {"q": "x"},
                        },
                        {
                            "type": "web_search_tool_result",
                            "tool_use_id": "srvtoolu_1",
                            "content": [{"type": "web_search_result", "url": "https://r.test"}],
                        },
                        {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "echo", "server_name": "s"},
                        {"type": "tool_use", "input": "not an object"},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_3",
                            "content": [
                                {"type": "text", "text": "see chart"},
                                {
                                    "type": "image",
                                    "source": {"type": "base64", "media_type": "image/png", "data": ""},
                                },
                            ],
                        },
                        {"type": "tool_result", "tool_use_id": "toolu_4"},
                        {"type": "tool_result", "content": {"odd": 1}, "is_error": "yes"},
                    ],
                },
            ],
        }
    )
    assert text == (
        "model: claude-x\n"
        'params: max_tokens=10 · tool_choice=tool(name=f) · metadata={"user_id": "u1"}\n'
        "tools:\n"
        "  tool f()\n"
        "  tool g()\n"
        '  tool "junk"\n'
        "\n[system]\nBe brief.\n"
        "\n[user]\nhi\n"
        "\n[user]\n(empty)\n"
        "\n[user]\n(no content)\n"
        '\n[?]\n"not a message"\n'
        "\n[user]\n"
        "<image url=https://x.test/cat.png>\n"
        "<image file_id=file_011>\n"
        "<document media_type=application/pdf (8 chars base64)>\n"
        "<document media_type=text/plain text (3 chars)>\n"
        "<document content (1 parts)>\n"
        "<image>\n"
        "<search_result>\n"
        "<7>\n"
        "<block>\n"
        "a bare string\n"
        "42\n"
        "\n[assistant]\n"
        '→ server_tool_use srvtoolu_1: web_search({"q": "x"})\n'
        "← web_search_tool_result srvtoolu_1: <web_search_result>\n"
        "→ mcp_tool_use mcptoolu_1: echo()\n"
        "→ tool_use ?: ?(not an object)\n"
        "\n[user]\n"
        "← tool_result toolu_3: see chart\n<image media_type=image/png (0 chars base64)>\n"
        "← tool_result toolu_4\n"
        '← tool_result ?: {"odd": 1}\n'
    )


def test_render_request_thinking_variants_and_empty():
    assert render_request({"thinking": {"type": "adaptive"}, "messages": []}) == "params: thinking=adaptive\n"
    assert render_request({}) == "\n"
    assert render_request({"system": []}) == "\n[system]\n(empty)\n"


def test_render_request_cuts_long_text_and_media():
    long = "y" * (MAX_TEXT + 5)
    text = render_request(
        {
            "tools": [
                {"name": "bash", "description": "d " * 1000, "input_schema": {"properties": {"cmd": {}}}}
            ],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": long},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "A" * 10**6},
                        },
                    ],
                }
            ],
        }
    )
    assert f"{'y' * MAX_TEXT}… [5 more characters not shown]\n" in text
    assert "<image media_type=image/png (1000000 chars base64)>\n" in text
    tool_line = text.splitlines()[1]
    assert tool_line.startswith("  tool bash(cmd) — d d d")
    assert tool_line.endswith("… [1699 more characters not shown]")
    assert len(text) < MAX_TEXT + 1000


def test_render_request_not_an_object():
    assert render_request([1, 2]) == "(not a JSON object) [1, 2]\n"  # type: ignore[arg-type]


# --- responses ------------------------------------------------------------------------------


def test_render_response_exact():
    assert render_response(RESPONSE) == RESPONSE_TEXT


def test_render_response_stop_sequence_and_partial_usage():
    obj = {
        "type": "message",
        "content": [{"type": "text", "text": "a"}],
        "stop_reason": "stop_sequence",
        "stop_sequence": "###",
        "usage": {"input_tokens": 5},
    }
    assert (
        render_response(obj)
        == 'usage: input 5 · output ?\n\n[assistant]\na\nstop_reason: stop_sequence ("###")\n'
    )
    assert render_response({"type": "message", "content": []}) == "\n[assistant]\n(no content)\n"


def test_render_response_error_and_count_tokens():
    assert render_response(error_body(529, "Overloaded", None, "server_error")) == (
        "error: overloaded_error: Overloaded\n"
    )
    assert render_response({"type": "error", "error": "flat"}) == 'error: "flat"\n'
    assert render_response({"input_tokens": 2095}) == "input_tokens: 2095\n"
    assert render_response([]) == "(not a JSON object) []\n"  # type: ignore[arg-type]


# --- streams --------------------------------------------------------------------------------


def test_render_stream_exact():
    assert render_stream(STREAM) == STREAM_TEXT


def test_render_stream_from_sse_text_and_unnamed_events():
    text = "".join(f"event: {e.name}\ndata: {e.data}\n\n" for e in STREAM)
    assert render_stream(split_sse(text)) == STREAM_TEXT
    assert render_stream([Event("", e.data) for e in STREAM]) == STREAM_TEXT


def test_render_stream_cut_short_shows_what_arrived():
    cut = STREAM[:14]  # inside the tool call's arguments
    assert render_stream(cut) == (
        "model: claude-haiku-4-5\n"
        "id: msg_1\n"
        "usage: input 25 · output 1 · cache read 3 · cache write 5\n"
        "stream: 14 events (stream incomplete: no message_stop)\n"
        "\n[assistant]\n<thinking>\nLet me check.\n</thinking>\nHello\n"
        '→ tool_use toolu_9: get_weather({"city":)\n'
    )


def test_render_stream_error_event_and_junk():
    evs = [
        *STREAM[:2],
        Event("ping", "{oops"),
        Event("x", "[1]"),
        Event("x", ""),
        Event("error", json.dumps(error_body(529, "Overloaded", None, "server_error"))),
    ]
    assert render_stream(evs) == (
        "model: claude-haiku-4-5\n"
        "id: msg_1\n"
        "usage: input 25 · output 1 · cache read 3 · cache write 5\n"
        "stream: 6 events (2 unparseable) (stream incomplete: no message_stop)\n"
        "error: overloaded_error: Overloaded\n"
        "\n[assistant]\n<thinking>\n\n</thinking>\n"
    )


def test_render_stream_blocks_by_index_and_orphan_deltas():
    evs = events(
        [
            block_start(1, {"type": "text", "text": "B"}),
            block_start(0, {"type": "text", "text": "A"}),
            delta(1, {"type": "text_delta", "text": "b"}),
            delta(0, {"type": "text_delta", "text": "a"}),
            delta(3, {"type": "input_json_delta", "partial_json": "{}"}),  # no content_block_start
            delta(2, {"type": "text_delta", "text": "orphan"}),
            delta("0", {"type": "text_delta", "text": "bad index"}),
            delta(True, {"type": "text_delta", "text": "bool index"}),
            delta(0, {"type": "citations_delta", "citation": {"cited_text": "c"}}),
            delta(0, {"type": ["unhashable"], "text": "x"}),
            delta(0, "not a dict"),
            block_start(4, {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}),
            message_delta("max_tokens", None),
        ]
    )
    assert render_stream(evs) == (
        "stream: 13 events (stream incomplete: no message_stop)\n"
        "\n[assistant]\nAa\nBb\norphan\n→ tool_use ?: ?({})\n← web_search_tool_result srvtoolu_1\n"
        "stop_reason: max_tokens\n"
    )


def test_render_stream_empty_and_hostile_iterables():
    assert render_stream([]) == "stream: 0 events (stream incomplete: no message_stop)\n"
    assert render_stream(None) == "stream: 0 events (stream incomplete: no message_stop)\n"  # type: ignore[arg-type]
    assert render_stream([None, "x", Event("a", None)]) == (  # type: ignore[list-item]
        "stream: 3 events (3 unparseable) (stream incomplete: no message_stop)\n"
    )


def test_render_stream_is_linear_and_bounded():
    """10k tool-argument fragments and 10k text deltas: joined once per block, cut for display."""
    frag = '"k": "' + "v" * 50 + '", '
    objs = [
        START,
        block_start(0, {"type": "text", "text": ""}),
        block_start(1, {"type": "tool_use", "id": "t"}),
    ]
    for _ in range(10_000):
        objs.append(delta(0, {"type": "text_delta", "text": "word word "}))
        objs.append(delta(1, {"type": "input_json_delta", "partial_json": frag}))
    objs += [message_delta("end_turn", {"output_tokens": 20_000}), {"type": "message_stop"}]
    evs = events(objs)
    t0 = time.perf_counter()
    text = render_stream(evs)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0
    assert "stream: 20005 events, message_stop\n" in text
    words = ("word word " * 10_000)[:MAX_TEXT]
    assert f"\n{words}… [{100_000 - MAX_TEXT} more characters not shown]\n" in text
    assert f"… [{len(frag) * 10_000 - MAX_TEXT} more characters not shown])\n" in text
    assert len(text) < 2 * MAX_TEXT + 1000


def test_stream_usage_hot_path_is_cheap():
    evs = events([delta(0, {"type": "text_delta", "text": "w"})] * 10_000)
    t0 = time.perf_counter()
    assert read(evs) is None
    assert time.perf_counter() - t0 < 1.0


# --- detection ------------------------------------------------------------------------------

OPENAI_CHAT = {
    "model": "gpt-4o-mini",
    "max_tokens": 100,
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}]},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "auto",
}


@pytest.mark.parametrize(
    "obj, expected",
    [
        (REQUEST, True),
        (
            {"model": "c", "max_tokens": 5, "system": "s", "messages": [{"role": "user", "content": "hi"}]},
            True,
        ),
        ({"model": "c", "messages": [], "anthropic_version": "bedrock-2023-05-31"}, True),
        ({"messages": [{"role": "user", "content": "hi"}], "stop_sequences": ["###"]}, True),
        ({"messages": [], "tool_choice": {"type": "any"}}, True),
        ({"messages": [], "tools": [{"name": "f", "input_schema": {}}]}, True),  # count_tokens
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]}, True),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, True),
        # ambiguous: valid for both APIs -> not claimed
        ({"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, False),
        (OPENAI_CHAT, False),
        ({**OPENAI_CHAT, "system": "odd"}, False),  # a system *message* is OpenAI's
        ({"messages": [{"role": "assistant", "tool_calls": []}], "system": "s"}, False),
        ({"messages": [{"role": "tool", "tool_call_id": "c", "content": "x"}]}, False),
        ({"messages": [], "tool_choice": {"type": "function", "function": {"name": "f"}}}, False),
        ({"messages": [{"role": ["x"], "content": [{"type": {}}]}], "tool_choice": {"type": []}}, False),
        ({"system": "s"}, False),
        ({"messages": "x", "system": "s"}, False),
        ([], False),
        (None, False),
    ],
)
def test_looks_like_request(obj, expected):
    assert looks_like_request(obj) is expected


@pytest.mark.parametrize(
    "obj, expected",
    [
        (RESPONSE, True),
        (error_body(401, "x", None, "authentication_error"), True),
        ({"input_tokens": 12}, True),
        ({"input_tokens": 12, "context_management": {"original_input_tokens": 20}}, True),
        *((o, True) for o in STREAM_OBJS),
        ({"type": "message", "content": "x"}, False),
        ({"type": "error", "code": "x", "message": "Responses-style error event"}, False),
        ({"type": "response.completed", "response": {}}, False),
        ({"object": "chat.completion", "choices": []}, False),
        ({"input_tokens": "12"}, False),
        ({"input_tokens": 12, "output_tokens": 3}, False),
        ({"type": ["message"]}, False),
        ({}, False),
        ("message", False),
    ],
)
def test_looks_like_response(obj, expected):
    assert looks_like_response(obj) is expected


# --- hostile input never raises ---------------------------------------------------------------

KEYS = [
    *"type role content text source data media_type url id name input tool_use_id is_error thinking".split(),
    *"messages system tools input_schema properties description tool_choice usage input_tokens".split(),
    *"output_tokens cache_read_input_tokens cache_creation_input_tokens message index delta".split(),
    *"content_block partial_json stop_reason stop_sequence error cache_control model title".split(),
]
TYPES = [
    *"message text image document tool_use tool_result thinking redacted_thinking base64 url".split(),
    *"file error message_start message_delta content_block_start content_block_delta".split(),
    *"text_delta input_json_delta thinking_delta signature_delta server_tool_use x_tool_result".split(),
]
JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True)
    | st.text(max_size=5)
    | st.sampled_from(TYPES),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    max_leaves=25,
)
NAMES = st.sampled_from(["", "message_start", "message_delta", "content_block_delta", "error", "ping", "x"])


@settings(max_examples=300)
@given(JSONISH)
def test_never_raises_on_arbitrary_json(obj):
    for fn in (render_request, render_response):
        assert isinstance(fn(obj), str)
    assert isinstance(looks_like_request(obj), bool)
    assert isinstance(looks_like_response(obj), bool)
    u = usage_from_json(obj)
    assert u is None or isinstance(u, FamilyUsage)
    for name in ("message_start", "message_delta", ""):
        read([Event(name, json.dumps(obj))])


@settings(max_examples=200)
@given(st.lists(st.tuples(NAMES, JSONISH | st.text(max_size=20)), max_size=12))
def test_stream_functions_never_raise(pairs):
    evs = [Event(n, d if isinstance(d, str) else json.dumps(d)) for n, d in pairs]
    assert isinstance(render_stream(evs), str)
    u = read(evs)
    assert u is None or isinstance(u, FamilyUsage)


def test_deeply_nested_values_do_not_raise():
    deep: object = {"type": "text"}
    for _ in range(50_000):
        deep = [deep]
    obj = {
        "messages": [
            {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": deep}]}
        ]
    }
    assert "→ tool_use t: f(<too deeply nested>)" in render_request(obj)
    assert render_response({"content": [{"type": "tool_result", "content": {"x": deep}}]}) == (
        "\n[assistant]\n← tool_result ?: <too deeply nested>\n"
    )
    nested: object = "end"
    for _ in range(5_000):
        nested = [{"type": "tool_result", "tool_use_id": "t", "content": nested}]
    assert render_response({"content": nested}) == (
        "\n[assistant]\n← tool_result t: ← tool_result t: ← tool_result t: <too deeply nested>\n"
    )
    four = [
        {"type": "tool_result", "content": [{"type": "tool_result", "content": [{"type": "tool_result"}]}]}
    ]
    assert render_response({"content": [{"type": "tool_result", "content": four}]}) == (
        '\n[assistant]\n← tool_result ?: ← tool_result ?: ← tool_result ?: {"type": "tool_result"}\n'
    )
