import copy
import json
import time

import httpx
import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cfgw import family_responses as fr
from cfgw import sse
from cfgw.family import Family, Usage
from cfgw.family_chat import openai_error_body
from cfgw.family_responses import (
    FAMILY,
    ResponsesStreamUsage,
    looks_like_request,
    looks_like_response,
    render_request,
    render_response,
    render_stream,
    usage_from_json,
    usage_line,
)
from cfgw.sse import Event
from cfgw.transcript import MAX_TEXT

# --- fixtures: recorded-style Responses traffic ------------------------------------------

USAGE = {
    "input_tokens": 81,
    "input_tokens_details": {"cached_tokens": 64},
    "output_tokens": 35,
    "output_tokens_details": {"reasoning_tokens": 20},
    "total_tokens": 116,
}

REASONING_ITEM = {
    "id": "rs_68c1a2",
    "type": "reasoning",
    "summary": [{"type": "summary_text", "text": "The tool said 18 and cloudy."}],
}
MESSAGE_ITEM = {
    "id": "msg_68c1a3",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [
        {"type": "output_text", "annotations": [], "logprobs": [], "text": "It is 18 °C and cloudy."}
    ],
}

RESPONSE = {
    "id": "resp_68c1a1",
    "object": "response",
    "created_at": 1757500000,
    "status": "completed",
    "background": False,
    "error": None,
    "incomplete_details": None,
    "instructions": "You are a weather bot.",
    "max_output_tokens": None,
    "model": "gpt-5-mini-2025-08-07",
    "output": [REASONING_ITEM, MESSAGE_ITEM],
    "parallel_tool_calls": True,
    "previous_response_id": "resp_68c19f",
    "reasoning": {"effort": "low", "summary": "auto"},
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}, "verbosity": "medium"},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "usage": USAGE,
    "user": None,
    "metadata": {},
}

RESPONSE_TEXT = """\
model: gpt-5-mini-2025-08-07
id: resp_68c1a1
status: completed
usage: input 81 · output 35 · total 116 (cached 64, reasoning 20)

<reasoning>
The tool said 18 and cloudy.
</reasoning>

[assistant]
It is 18 °C and cloudy.
"""

REQUEST = {
    "model": "gpt-5-mini",
    "instructions": "You are a weather bot.",
    "previous_response_id": "resp_68c19f",
    "reasoning": {"effort": "low"},
    "tool_choice": "auto",
    "stream": True,
    "max_output_tokens": 500,
    "store": False,
    "tools": [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Get the current weather\n  for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                "required": ["city"],
            },
            "strict": True,
        },
        {"type": "web_search"},
        {"type": "mcp", "server_label": "deepwiki", "server_url": "https://mcp.deepwiki.com/mcp"},
    ],
    "input": [
        {"role": "developer", "content": "Answer in one sentence."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Weather in Paris? See photo and report."},
                {"type": "input_image", "image_url": "data:image/jpeg;base64,QUJDRA==", "detail": "low"},
                {
                    "type": "input_file",
                    "filename": "report.pdf",
                    "file_data": "data:application/pdf;base64,JVBE",
                },
            ],
        },
        {
            "type": "reasoning",
            "id": "rs_68c19e",
            "summary": [{"type": "summary_text", "text": "Need the weather tool."}],
        },
        {
            "type": "function_call",
            "id": "fc_68c19d",
            "call_id": "call_Zx9fQ2",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {
            "type": "function_call_output",
            "call_id": "call_Zx9fQ2",
            "output": '{"temp_c": 18, "sky": "cloudy"}',
        },
        {"type": "item_reference", "id": "msg_68c19c"},
    ],
}

REQUEST_TEXT = """\
model: gpt-5-mini
params: previous_response_id=resp_68c19f · reasoning={"effort": "low"} · tool_choice=auto · stream=true \
· max_output_tokens=500 · store=false
tools:
  tool get_weather(city, unit) — Get the current weather for a city.
  <web_search>
  <mcp deepwiki>

[instructions]
You are a weather bot.

[developer]
Answer in one sentence.

[user]
Weather in Paris? See photo and report.
<input_image data:image/jpeg;base64,… (8 chars) detail=low>
<input_file report.pdf>

<reasoning>
Need the weather tool.
</reasoning>

→ function_call call_Zx9fQ2: get_weather({"city": "Paris"})

← function_call_output call_Zx9fQ2: {"temp_c": 18, "sky": "cloudy"}

<item_reference msg_68c19c>
"""


def ev(typ, seq, **fields):
    """An event as OpenAI sends it: ``event:`` name and a data object with the same ``type``."""
    return Event(typ, json.dumps({"type": typ, "sequence_number": seq, **fields}))


def stream_events(response=RESPONSE):
    """A recorded-style text stream: reasoning summary, then a message, then response.completed."""
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    msg_added = {**MESSAGE_ITEM, "status": "in_progress", "content": []}
    text = {"item_id": "msg_68c1a3", "output_index": 1, "content_index": 0}
    summary = {"item_id": "rs_68c1a2", "output_index": 0, "summary_index": 0}
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    return [
        ev("response.created", 0, response=started),
        ev("response.in_progress", 1, response=started),
        ev("response.output_item.added", 2, output_index=0, item={**REASONING_ITEM, "summary": []}),
        ev("response.reasoning_summary_part.added", 3, **summary, part={"type": "summary_text", "text": ""}),
        ev("response.reasoning_summary_text.delta", 4, **summary, delta="The tool said "),
        ev("response.reasoning_summary_text.delta", 5, **summary, delta="18 and cloudy."),
        ev("response.reasoning_summary_text.done", 6, **summary, text="The tool said 18 and cloudy."),
        ev("response.output_item.done", 7, output_index=0, item=REASONING_ITEM),
        ev("response.output_item.added", 8, output_index=1, item=msg_added),
        ev("response.content_part.added", 9, **text, part=part),
        ev("response.output_text.delta", 10, **text, delta="It is ", logprobs=[]),
        ev("response.output_text.delta", 11, **text, delta="18 °C", logprobs=[]),
        ev("response.output_text.delta", 12, **text, delta=" and cloudy.", logprobs=[]),
        ev("response.output_text.done", 13, **text, text="It is 18 °C and cloudy.", logprobs=[]),
        ev("response.content_part.done", 14, **text, part={**part, "text": "It is 18 °C and cloudy."}),
        ev("response.output_item.done", 15, output_index=1, item=MESSAGE_ITEM),
        ev("response.completed", 16, response=response),
    ]


STREAM = stream_events()

TOOL_ITEM = {
    "id": "fc_68c1b1",
    "type": "function_call",
    "status": "completed",
    "arguments": '{"city":"Paris"}',
    "call_id": "call_Zx9fQ2",
    "name": "get_weather",
}


def tool_stream_events():
    """A function call streamed in argument fragments (cut before the item and the response are done)."""
    started = {
        "id": "resp_68c1b0",
        "object": "response",
        "status": "in_progress",
        "model": "gpt-5",
        "output": [],
    }
    args = {"item_id": "fc_68c1b1", "output_index": 0}
    return [
        ev("response.created", 0, response=started),
        ev(
            "response.output_item.added",
            1,
            output_index=0,
            item={**TOOL_ITEM, "arguments": "", "status": "in_progress"},
        ),
        ev("response.function_call_arguments.delta", 2, **args, delta='{"city"'),
        ev("response.function_call_arguments.delta", 3, **args, delta=':"Paris"}'),
    ]


def to_sse(events):
    return "".join(f"event: {e.name}\ndata: {e.data}\n\n" for e in events)


def from_sse(text):
    """Events of an SSE text, as the proxy's own parser splits them."""
    return sse.parse(text.encode())


def sdk_client(handler):
    transport = httpx.MockTransport(handler)
    return openai.OpenAI(
        api_key="sk-test-not-a-key",
        base_url="http://proxy.test/v1",
        http_client=httpx.Client(transport=transport),
        max_retries=0,
    )


# --- the family --------------------------------------------------------------------------


def test_family_wires_this_module():
    assert isinstance(FAMILY, Family)
    assert FAMILY.name == "responses"
    assert FAMILY.error_body is openai_error_body
    assert FAMILY.usage_from_json is usage_from_json
    assert isinstance(FAMILY.stream_usage(), ResponsesStreamUsage)
    assert FAMILY.stream_usage() is not FAMILY.stream_usage()
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


def test_error_body_shape():
    assert openai_error_body(401, "Invalid proxy key", "invalid_proxy_key", "authentication_error") == {
        "error": {
            "message": "Invalid proxy key",
            "type": "authentication_error",
            "param": None,
            "code": "invalid_proxy_key",
        }
    }
    assert openai_error_body(401, "Unauthorized", 2009, "authentication_error")["error"]["code"] == 2009
    assert openai_error_body(500, "x", None, "server_error")["error"]["code"] is None


@pytest.mark.parametrize(
    "status, message, code, openai_type, exc_class",
    [
        (
            400,
            "Path /v1/files is not allowed",
            "path_not_allowed",
            "invalid_request_error",
            openai.BadRequestError,
        ),
        (401, "Invalid proxy key", "invalid_proxy_key", "authentication_error", openai.AuthenticationError),
        (401, "Unauthorized", 2009, "authentication_error", openai.AuthenticationError),
        (403, "Model not allowed", "model_not_allowed", "permission_error", openai.PermissionDeniedError),
        (404, "No response with id resp_x", None, "not_found_error", openai.NotFoundError),
        (413, "Request body too large", "body_too_large", "invalid_request_error", openai.APIStatusError),
        (429, "Rate limited", 2003, "rate_limit_error", openai.RateLimitError),
        (500, "Proxy failed closed", "fail_closed", "server_error", openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_sdk_raises_its_usual_exception(status, message, code, openai_type, exc_class, stream):
    body = openai_error_body(status, message, code, openai_type)
    seen = []

    def handler(request):
        seen.append((request.method, request.url.path))
        return httpx.Response(status, json=body)

    with pytest.raises(openai.APIStatusError) as info:
        sdk_client(handler).responses.create(model="gpt-5-mini", input="hi", stream=stream)
    exc = info.value
    assert seen == [("POST", "/v1/responses")]
    assert type(exc) is exc_class
    assert exc.status_code == status
    assert str(exc) == f"Error code: {status} - {message}"  # openai>=2: only the message is in the text
    assert exc.body == body["error"]
    assert exc.body["code"] == code  # the SDK's exc.code is typed str: 2009 reads back as "2009"
    assert (exc.code, exc.type, exc.param) == (None if code is None else str(code), openai_type, None)


def test_sdk_retrieve_raises_not_found():
    body = openai_error_body(404, "No response found with id 'resp_x'.", None, "invalid_request_error")
    client = sdk_client(lambda request: httpx.Response(404, json=body))
    with pytest.raises(openai.NotFoundError, match="No response found with id 'resp_x'"):
        client.responses.retrieve("resp_x")


def test_fixtures_are_what_the_sdk_parses():
    """The recorded-style fixtures pass through the SDK's own models and stream accumulator."""
    client = sdk_client(lambda request: httpx.Response(200, json=RESPONSE))
    got = client.responses.retrieve("resp_68c1a1")
    assert (got.output_text, got.usage.input_tokens_details.cached_tokens) == ("It is 18 °C and cloudy.", 64)

    sse = to_sse(STREAM)
    client = sdk_client(
        lambda r: httpx.Response(200, headers={"content-type": "text/event-stream"}, text=sse)
    )
    with client.responses.stream(model="gpt-5-mini", input="hi") as stream:
        types = [e.type for e in stream]
        final = stream.get_final_response()
    assert types == [e.name for e in STREAM]
    assert final.output_text == "It is 18 °C and cloudy."
    assert from_sse(sse) == STREAM


# --- usage ------------------------------------------------------------------------------------


def test_usage_from_response():
    assert usage_from_json(RESPONSE) == Usage(
        input_tokens=81, output_tokens=35, total_tokens=116, cached_tokens=64, reasoning_tokens=20
    )


def test_usage_partial_and_absent():
    assert usage_from_json({"object": "response", "usage": {"input_tokens": 5}}) == Usage(input_tokens=5)
    assert usage_from_json({"usage": {"output_tokens_details": {"reasoning_tokens": 7}}}) == Usage(
        reasoning_tokens=7
    )
    input_items = {"object": "list", "data": [{"type": "message", "role": "user", "content": "hi"}]}
    for body in (
        input_items,
        {"object": "response", "usage": None},
        {"usage": {}},
        {"usage": []},
        [],
        "x",
        None,
    ):
        assert usage_from_json(body) is None
    bad = {"input_tokens": -1, "output_tokens": 2.0, "total_tokens": True, "input_tokens_details": 3}
    assert usage_from_json({"usage": bad}) is None


def feed(events):
    reader = ResponsesStreamUsage()
    for e in events:
        reader.event(e)
    return reader.usage


def test_stream_usage_from_completed():
    assert feed(STREAM) == usage_from_json(RESPONSE)
    assert feed(STREAM[:-1]) is None


@pytest.mark.parametrize("terminal", ["response.incomplete", "response.failed"])
def test_stream_usage_from_incomplete_and_failed(terminal):
    response = {
        **RESPONSE,
        "status": terminal.split(".")[1],
        "usage": {"input_tokens": 9, "output_tokens": 1},
    }
    assert feed([*STREAM[:-1], ev(terminal, 16, response=response)]) == Usage(input_tokens=9, output_tokens=1)


def test_stream_usage_without_event_names():
    """Servers that omit ``event:`` lines: the data's type still finds the terminal event."""
    nameless = [Event("", e.data) for e in STREAM]
    assert feed(nameless) == usage_from_json(RESPONSE)
    spaced = Event("", '{"type" : "response.completed", "response": {"usage": {"total_tokens": 3}}}')
    assert feed([spaced]) == Usage(total_tokens=3)


def test_stream_usage_parses_only_terminal_events(monkeypatch):
    loads = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda s, **kw: loads.append(s) or real(s, **kw))
    delta = {"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "tok"}
    deltas = [ev("response.output_text.delta", i, **delta) for i in range(300)]
    assert feed([*deltas, STREAM[-1]]) == usage_from_json(RESPONSE)
    assert loads == [STREAM[-1].data]
    loads.clear()
    assert feed([Event("", e.data) for e in deltas]) is None
    assert loads == []
    # a delta whose text mentions the terminal type: its quotes are escaped, so the cheap test skips it
    sneaky = Event(
        "", json.dumps({"type": "response.output_text.delta", "delta": '"type":"response.completed"'})
    )
    assert feed([sneaky]) is None
    assert loads == []


def test_stream_usage_ignores_started_and_junk():
    started = ev("response.created", 0, response={"usage": {"input_tokens": 1}})
    junk = [
        Event("response.completed", "{not json"),
        Event("response.completed", "[1]"),
        Event("response.completed", '{"type": "response.completed", "response": []}'),
        Event(
            "response.completed", '{"type": "response.created", "response": {"usage": {"input_tokens": 1}}}'
        ),
        Event("response.completed", "[" * 100_000),
    ]
    assert feed([started, *junk]) is None


def test_usage_line():
    assert usage_line(USAGE) == "usage: input 81 · output 35 · total 116 (cached 64, reasoning 20)"
    assert usage_line({"input_tokens": 5, "input_tokens_details": {"cached_tokens": 4}}) == (
        "usage: input 5 · output ? · total 5 (cached 4)"
    )
    assert usage_line({"output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 0}) == (
        "usage: input ? · output ? · total 0"
    )
    assert usage_line({}) is None
    assert usage_line("x") is None


# --- requests ---------------------------------------------------------------------------------


def test_render_request_exact():
    assert render_request(REQUEST) == REQUEST_TEXT


def test_render_request_string_input_and_odd_items():
    text = render_request(
        {
            "model": "gpt-5",
            "input": [
                {"role": "user", "content": ""},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi."}]},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_image", "file_id": "file_9"}],
                },
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_file", "file_url": "https://x.test/a.pdf"}],
                },
                {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "ok"}],
                },
                {"type": "custom_tool_call", "call_id": "call_3", "name": "sh", "input": "ls -l"},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAAB"},
                {"type": "reasoning", "summary": []},
                {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                {"type": "compaction"},
                "not an item",
                {"role": "user"},
            ],
            "tools": [{"type": "custom", "name": "sh", "description": "Run a command."}, "junk"],
        }
    )
    assert text == (
        'model: gpt-5\ntools:\n  tool sh() — Run a command.\n  tool "junk"\n'
        "\n[user]\n(empty)\n"
        "\n[assistant]\nHi.\n"
        "\n[user]\n<input_image file_9>\n"
        "\n[user]\n<input_file https://x.test/a.pdf>\n"
        "\n[assistant]\nrefusal: No.\n"
        "\n← function_call_output call_2: ok\n"
        "\n→ custom_tool_call call_3: sh(ls -l)\n"
        "\n<reasoning (encrypted, 6 chars)>\n"
        "\n<reasoning (no summary)>\n"
        "\n<web_search_call ws_1>\n"
        "\n<compaction>\n"
        '\n[?]\n"not an item"\n'
        "\n[user]\n(no content)\n"
    )
    assert render_request({"model": "gpt-5", "input": "Tell me a joke."}) == (
        "model: gpt-5\n\n[user]\nTell me a joke.\n"
    )
    assert (
        render_request({"instructions": "Be brief.", "input": 7}) == "\n[instructions]\nBe brief.\n\n[?]\n7\n"
    )


def test_render_request_is_bounded():
    huge = "w" * (MAX_TEXT + 10)
    text = render_request(
        {"model": "m", "input": huge, "metadata": {"k": "v" * 1000}, "tools": [{"name": huge}]}
    )
    assert f"\n[user]\n{'w' * MAX_TEXT}… [10 more characters not shown]\n" in text
    assert f'params: metadata={{"k": "{"v" * 193}… [809 more characters not shown]\n' in text
    assert f"  tool {'w' * 200}… [{MAX_TEXT - 190} more characters not shown]()\n" in text


def test_renderers_do_not_raise_on_non_objects():
    assert render_request([1]) == "(not a Responses request: [1])\n"
    assert render_response("x") == '(not a Responses response: "x")\n'


# --- responses --------------------------------------------------------------------------------


def test_render_response_exact():
    assert render_response(RESPONSE) == RESPONSE_TEXT


def test_render_response_tool_call_incomplete_and_failed():
    incomplete = {
        "id": "resp_2",
        "object": "response",
        "status": "incomplete",
        "model": "gpt-5",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": [TOOL_ITEM, {"type": "message", "role": "assistant", "content": []}],
        "usage": {"input_tokens": 10, "output_tokens": 500, "total_tokens": 510},
    }
    assert render_response(incomplete) == (
        "model: gpt-5\nid: resp_2\nstatus: incomplete\nusage: input 10 · output 500 · total 510\n"
        "incomplete: max_output_tokens\n"
        '\n→ function_call call_Zx9fQ2: get_weather({"city":"Paris"})\n'
        "\n[assistant]\n(empty)\n"
    )
    failed = {
        "id": "resp_3",
        "status": "failed",
        "error": {"code": "server_error", "message": "The model failed."},
    }
    assert render_response(failed) == "id: resp_3\nstatus: failed\nerror: server_error: The model failed.\n"
    odd = {"status": "failed", "error": "boom", "incomplete_details": "why", "output": "nope"}
    assert render_response(odd) == "status: failed\nincomplete: why\nerror: boom\n"


def test_render_response_deleted_and_input_items():
    deleted = {"id": "resp_1", "object": "response.deleted", "deleted": True}
    assert render_response(deleted) == "id: resp_1\ndeleted: true\n"
    input_items = {
        "object": "list",
        "data": [
            {
                "id": "msg_1",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "hi"}],
            }
        ],
        "first_id": "msg_1",
        "last_id": "msg_1",
        "has_more": False,
    }
    assert render_response(input_items) == "\n[user]\nhi\n"


# --- streams ----------------------------------------------------------------------------------


def test_render_stream_prefers_completed_response():
    assert render_stream(STREAM) == RESPONSE_TEXT.replace(
        "reasoning 20)\n", "reasoning 20)\nstream: 17 events, response.completed\n"
    )


def test_render_stream_cut_short_mid_text():
    assert render_stream(STREAM[:12]) == (
        "model: gpt-5-mini-2025-08-07\nid: resp_68c1a1\n"
        "stream: 12 events (stream incomplete: no response.completed)\n"
        "\n<reasoning>\nThe tool said 18 and cloudy.\n</reasoning>\n"
        "\n[assistant]\nIt is 18 °C\n"
    )


def test_render_stream_cut_short_tool_call():
    assert render_stream(tool_stream_events()) == (
        "model: gpt-5\nid: resp_68c1b0\n"
        "stream: 4 events (stream incomplete: no response.completed)\n"
        '\n→ function_call call_Zx9fQ2: get_weather({"city":"Paris"})\n'
    )


def test_render_stream_done_events_replace_deltas():
    text = {"output_index": 0, "content_index": 0}
    events = [
        ev("response.output_text.delta", 0, **text, delta="garbled"),
        ev("response.output_text.done", 1, **text, text="Clean."),
        ev("response.function_call_arguments.delta", 2, output_index=1, delta="{"),
        ev("response.function_call_arguments.done", 3, output_index=1, arguments="{}"),
        ev("response.refusal.delta", 4, output_index=0, content_index=1, delta="No"),
        ev("response.reasoning_text.delta", 5, output_index=2, content_index=0, delta="raw "),
        ev("response.reasoning_text.delta", 6, output_index=2, content_index=0, delta="thought"),
        ev("response.reasoning_summary_text.delta", 7, output_index=3, summary_index=1, delta="second"),
        ev("response.reasoning_summary_text.delta", 8, output_index=3, summary_index=0, delta="first"),
    ]
    assert render_stream(events) == (
        "stream: 9 events (stream incomplete: no response.completed)\n"
        "\n[assistant]\nClean.\nrefusal: No\n"
        "\n→ function_call ?: ?({})\n"
        "\n<reasoning>\nraw thought\n</reasoning>\n"
        "\n<reasoning>\nfirst\n\nsecond\n</reasoning>\n"
    )


def test_render_stream_by_item_id_when_output_index_is_missing():
    events = [
        ev(
            "response.output_item.added",
            0,
            output_index=0,
            item={"id": "msg_a", "type": "message", "role": "assistant"},
        ),
        ev(
            "response.output_item.added",
            1,
            output_index=1,
            item={"id": "fc_b", "type": "function_call", "name": "f", "call_id": "call_b"},
        ),
        ev("response.output_text.delta", 2, item_id="msg_a", delta="A"),
        ev("response.function_call_arguments.delta", 3, item_id="fc_b", delta="{}"),
        ev("response.output_text.delta", 4, item_id="msg_a", delta="B"),
        ev("response.function_call_arguments.delta", 5, delta=""),  # neither: the latest item
    ]
    assert render_stream(events).endswith("\n[assistant]\nAB\n\n→ function_call call_b: f({})\n")


def test_render_stream_errors_and_failed():
    error = Event(
        "error",
        json.dumps({"type": "error", "code": "rate_limit_exceeded", "message": "Slow down.", "param": None}),
    )
    assert render_stream([*STREAM[:3], error]) == (
        "model: gpt-5-mini-2025-08-07\nid: resp_68c1a1\n"
        "stream: 4 events (stream incomplete: no response.completed)\n"
        "error: rate_limit_exceeded: Slow down.\n"
        "\n<reasoning (no summary)>\n"
    )
    nested = Event(
        "error", json.dumps({"type": "error", "error": {"type": "server_error", "message": "Oops."}})
    )
    assert "error: Oops.\n" in render_stream([nested])
    failed = {
        "id": "resp_f",
        "status": "failed",
        "model": "gpt-5",
        "error": {"code": "server_error", "message": "The model failed."},
        "output": [],
        "usage": None,
    }
    assert render_stream([*STREAM[8:12], ev("response.failed", 12, response=failed)]) == (
        "model: gpt-5\nid: resp_f\nstatus: failed\n"
        "stream: 5 events, response.failed\n"
        "error: server_error: The model failed.\n"
        "\n[assistant]\nIt is 18 °C\n"  # the completed response had no output: what streamed is shown
    )


def test_render_stream_counts_junk_and_uses_event_names():
    events = [
        Event("", "{not json"),
        Event("", "[DONE]"),
        Event("", "[1, 2]"),
        Event("response.output_text.delta", json.dumps({"output_index": 0, "delta": "named"})),
    ]
    assert render_stream(events) == (
        "stream: 3 events (2 unparseable) (stream incomplete: no response.completed)\n\n[assistant]\nnamed\n"
    )
    assert render_stream([]) == "stream: 0 events (stream incomplete: no response.completed)\n"


def test_render_stream_large_adversarial_is_linear_and_bounded():
    """10k text deltas, 10k argument fragments, 10k reasoning fragments and 10k tiny items."""
    events = [
        ev("response.output_item.added", 0, output_index=0, item={"type": "message", "role": "assistant"})
    ]
    for i in range(10_000):
        events.append(ev("response.output_text.delta", i, output_index=0, content_index=0, delta="x" * 100))
        events.append(ev("response.function_call_arguments.delta", i, output_index=1, delta="a" * 10))
        events.append(
            ev("response.reasoning_summary_text.delta", i, output_index=2, summary_index=i % 7, delta="r")
        )
        events.append(
            ev("response.output_text.delta", i, output_index=10_000 - i + 2, content_index=i, delta="t")
        )
    start = time.perf_counter()
    text = render_stream(events)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert f"\n[assistant]\n{'x' * MAX_TEXT}… [{1_000_000 - MAX_TEXT} more characters not shown]\n" in text
    assert (
        f"\n→ function_call ?: ?({'a' * MAX_TEXT}… [{100_000 - MAX_TEXT} more characters not shown])\n"
        in text
    )
    assert text.count("\n[assistant]\nt\n") == 10_000
    assert text.startswith("stream: 40001 events (stream incomplete: no response.completed)\n")
    assert len(text) < 400_000


def test_stream_usage_is_cheap_on_many_events():
    deltas = [
        ev("response.output_text.delta", i, output_index=0, content_index=0, delta="tok")
        for i in range(10_000)
    ]
    start = time.perf_counter()
    assert feed([*deltas, STREAM[-1]]) == usage_from_json(RESPONSE)
    assert time.perf_counter() - start < 1.0


# --- detection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj, expected",
    [
        (REQUEST, True),
        ({"model": "gpt-5", "input": "hi"}, True),
        ({"model": "gpt-5", "input": []}, True),
        ({"instructions": "Be brief.", "prompt": {"id": "pmpt_1"}}, True),
        ({"model": "gpt-5", "input": "hi", "messages": []}, False),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, False),
        ({"model": "text-embedding-3-small", "input": "hello"}, False),
        ({"model": "omni-moderation-latest", "input": ["a"]}, False),
        ({"input": "hi"}, False),
        ({"model": "gpt-5", "input": 3}, False),
        (RESPONSE, False),
        ([REQUEST], False),
        ("input", False),
    ],
)
def test_looks_like_request(obj, expected):
    assert looks_like_request(obj) is expected


@pytest.mark.parametrize(
    "obj, expected",
    [
        (RESPONSE, True),
        ({"object": "response"}, True),
        (json.loads(STREAM[0].data), True),
        (json.loads(STREAM[10].data), True),
        ({"type": "error", "message": "x"}, False),
        ({"object": "chat.completion", "choices": []}, False),
        ({"type": "message", "role": "assistant"}, False),
        ({"type": ["response.x"]}, False),
        (REQUEST, False),
        (None, False),
    ],
)
def test_looks_like_response(obj, expected):
    assert looks_like_response(obj) is expected


# --- hostile input --------------------------------------------------------------------------------

KEYS = """
type output_index content_index summary_index item_id item delta text arguments input response usage
input_tokens output_tokens total_tokens input_tokens_details cached_tokens output_tokens_details
reasoning_tokens output content role call_id name id summary error message code model instructions tools
parameters properties description status incomplete_details reason object data messages encrypted_content
image_url file_id filename file_url detail refusal server_label deleted
""".split()
TYPES = [e.name for e in STREAM] + [
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
]
TYPES += (
    "error message function_call function_call_output reasoning input_text input_image input_file".split()
)
TYPES += "output_text refusal summary_text custom_tool_call response list response.failed function".split()
SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.sampled_from(TYPES)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    max_leaves=25,
)
EVENTS = st.lists(
    st.builds(
        Event,
        st.sampled_from(["", "message", *TYPES]),
        st.one_of(JSONISH.map(json.dumps), st.text(max_size=20)),
    ),
    max_size=12,
)


@given(JSONISH)
def test_pure_functions_survive_arbitrary_json(obj):
    usage = usage_from_json(obj)
    assert usage is None or isinstance(usage, Usage)
    assert isinstance(render_request(obj), str)
    assert isinstance(render_response(obj), str)
    assert isinstance(looks_like_request(obj), bool)
    assert isinstance(looks_like_response(obj), bool)
    assert isinstance(usage_line(obj), str | None)
    wrapped = {"type": "response.completed", "response": {"usage": obj, "output": obj}}
    assert isinstance(render_stream([Event("response.completed", json.dumps(wrapped))]), str)


@given(EVENTS)
def test_stream_functions_survive_arbitrary_events(events):
    reader = ResponsesStreamUsage()
    for e in events:
        reader.event(e)
    assert reader.usage is None or isinstance(reader.usage, Usage)
    assert isinstance(render_stream(events), str)
    original = copy.deepcopy(events)
    render_stream(events)
    assert events == original


def test_unhashable_types_anywhere():
    """``type`` values that are lists or objects (unhashable) are junk, not a crash."""
    for typ in ([], {}, ["response.completed"], {"a": 1}):
        data = json.dumps(
            {"type": typ, "response": {"usage": USAGE}, "item": {"type": typ}, "output_index": 0}
        )
        assert feed([Event("", data)]) is None
        assert feed([Event("response.completed", data)]) == usage_from_json(RESPONSE)  # junk type: the name
        request = {"model": "m", "input": [{"type": typ, "content": [{"type": typ, "text": "t"}]}]}
        request["tools"] = [{"type": typ}]
        tool, item = (json.dumps(typ), json.dumps(typ)) if typ else ("tool", "item")
        assert render_request(request) == f"model: m\ntools:\n  <{tool}>\n\n<{item}>\n"
        message = {"role": "user", "content": [{"type": typ, "text": "t"}]}
        assert render_request({"input": [message], "instructions": ""}) == (
            f"\n[instructions]\n\n\n[user]\n<{json.dumps(typ) if typ else 'part'}>\n"
        )
        assert render_stream([Event("response.completed", data)]) == (
            "usage: input 81 · output 35 · total 116 (cached 64, reasoning 20)\n"
            "stream: 1 events, response.completed\n"
        )
        assert (
            render_stream([Event("", data)])
            == "stream: 1 events (stream incomplete: no response.completed)\n"
        )


def test_module_helpers_never_mutate_fixtures():
    before = copy.deepcopy((REQUEST, RESPONSE, STREAM))
    render_request(REQUEST), render_response(RESPONSE), render_stream(STREAM), feed(STREAM)
    assert (REQUEST, RESPONSE, STREAM) == before
    assert fr.__all__ == sorted(fr.__all__)
