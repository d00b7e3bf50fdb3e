"""The OpenAI Responses transcript: requests, answers and assembled streams."""

import json

from llmview import responses, sse

REASONING_ITEM = {
    "id": "rs_1",
    "type": "reasoning",
    "summary": [{"type": "summary_text", "text": "The tool said 18 and cloudy."}],
}
MESSAGE_ITEM = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "content": [{"type": "output_text", "annotations": [], "text": "It is 18 °C and cloudy."}],
}
RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "instructions": "You are a weather bot.",
    "model": "gpt-5-mini-2025-08-07",
    "output": [REASONING_ITEM, MESSAGE_ITEM],
    "usage": {
        "input_tokens": 81,
        "input_tokens_details": {"cached_tokens": 64},
        "output_tokens": 35,
        "output_tokens_details": {"reasoning_tokens": 20},
        "total_tokens": 116,
    },
}
RESPONSE_TEXT = """\
model: gpt-5-mini-2025-08-07
id: resp_1
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
    "tool_choice": "auto",
    "stream": True,
    "tools": [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Get the current weather.",
            "parameters": {"type": "object", "properties": {"city": {}}},
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
                {"type": "input_text", "text": "Weather in Paris?"},
                {"type": "input_image", "image_url": "data:image/jpeg;base64,QUJDRA==", "detail": "low"},
                {
                    "type": "input_file",
                    "filename": "report.pdf",
                    "file_data": "data:application/pdf;base64,JVBE",
                },
            ],
        },
        {"type": "reasoning", "id": "rs_0", "summary": [], "encrypted_content": "gAAAA"},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 18}'},
        {"type": "item_reference", "id": "msg_0"},
    ],
}
REQUEST_TEXT = """\
model: gpt-5-mini
params: tool_choice=auto · stream=true
tools:
  tool get_weather(city) — Get the current weather.
  <web_search>
  <mcp deepwiki>

[instructions]
You are a weather bot.

[developer]
Answer in one sentence.

[user]
Weather in Paris?
<input_image data:image/jpeg;base64,… (8 chars) detail=low>
<input_file report.pdf>

<reasoning (encrypted, 5 chars)>

→ function_call call_1: get_weather({"city": "Paris"})

← function_call_output call_1: {"temp_c": 18}

<item_reference msg_0>
"""


def ev(typ, **fields):
    return {"type": typ, **fields}


def stream_events(response=RESPONSE):
    """A text stream: a reasoning summary, then a message, then response.completed."""
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    text = {"item_id": "msg_1", "output_index": 1, "content_index": 0}
    summary = {"item_id": "rs_1", "output_index": 0, "summary_index": 0}
    return [
        ev("response.created", response=started),
        ev("response.output_item.added", output_index=0, item={**REASONING_ITEM, "summary": []}),
        ev("response.reasoning_summary_text.delta", **summary, delta="The tool said "),
        ev("response.reasoning_summary_text.delta", **summary, delta="18 and cloudy."),
        ev("response.output_item.done", output_index=0, item=REASONING_ITEM),
        ev("response.output_item.added", output_index=1, item={**MESSAGE_ITEM, "content": []}),
        ev("response.output_text.delta", **text, delta="It is "),
        ev("response.output_text.delta", **text, delta="18 °C and cloudy."),
        ev("response.output_text.done", **text, text="It is 18 °C and cloudy."),
        ev("response.output_item.done", output_index=1, item=MESSAGE_ITEM),
        ev("response.completed", response=response),
    ]


def body(events):
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


def render(events):
    return responses.render_stream(sse.objects(sse.parse(body(events), 1000)[0]))


def test_render_request():
    assert responses.render_request(REQUEST) == REQUEST_TEXT


def test_render_request_string_input():
    assert responses.render_request({"model": "m", "input": "Hi"}) == "model: m\n\n[user]\nHi\n"


def test_render_response():
    assert responses.render_response(RESPONSE) == RESPONSE_TEXT


def test_reasoning_without_a_summary():
    items = [
        {"type": "reasoning", "summary": []},
        {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "raw"}]},
    ]
    assert responses.render_response({"output": items}) == "\n<reasoning>\n\n<reasoning>\nraw\n</reasoning>\n"


def test_render_response_incomplete_and_failed():
    obj = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "output": []}
    assert responses.render_response(obj) == "status: incomplete\nincomplete: max_output_tokens\n"
    failed = {"status": "failed", "error": {"code": "server_error", "message": "boom"}}
    assert responses.render_response(failed) == "status: failed\nerror: server_error: boom\n"


def test_render_stream_shows_the_completed_response():
    text = render(stream_events())
    assert text == RESPONSE_TEXT.replace("\n\n", "\nstream: 11 events, response.completed\n\n", 1)


def test_render_stream_cut_short_is_assembled_from_deltas():
    assert render(stream_events()[:8]) == (
        "model: gpt-5-mini-2025-08-07\nid: resp_1\nstatus: in_progress\n"
        "stream: 8 events (stream incomplete: no response.completed)\n\n"
        "<reasoning>\nThe tool said 18 and cloudy.\n</reasoning>\n\n[assistant]\nIt is 18 °C and cloudy.\n"
    )


def test_render_stream_tool_call_arguments():
    args = {"item_id": "fc_1", "output_index": 0}
    item = {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": "",
    }
    events = [
        ev("response.output_item.added", output_index=0, item=item),
        ev("response.function_call_arguments.delta", **args, delta='{"city"'),
        ev("response.function_call_arguments.delta", **args, delta=':"Paris"}'),
    ]
    assert render(events).endswith('\n→ function_call call_1: get_weather({"city":"Paris"})\n')


def test_render_stream_done_replaces_deltas_and_items_found_by_id():
    text = {"item_id": "msg_1", "content_index": 0}  # no output_index: found by the item's id
    events = [
        ev("response.output_item.added", output_index=3, item={"id": "msg_1", "type": "message"}),
        ev("response.output_text.delta", **text, delta="draft"),
        ev("response.output_text.done", **text, text="final"),
    ]
    assert render(events).endswith("\n[assistant]\nfinal\n")


def test_render_stream_errors():
    events = [ev("error", code="rate_limit_exceeded", message="slow down")]
    assert render(events) == (
        "stream: 1 events (stream incomplete: no response.completed)\nerror: rate_limit_exceeded: slow down\n"
    )


def test_detection():
    assert responses.looks_like_request(REQUEST)
    assert not responses.looks_like_request({"model": "text-embedding-3-small", "input": "hello"})
    assert not responses.looks_like_request({"model": "omni-moderation-latest", "input": "hello"})
    assert not responses.looks_like_request(RESPONSE)
    assert responses.looks_like_response(RESPONSE)
    assert all(responses.looks_like_response(e) for e in stream_events())
    assert not responses.looks_like_response({"object": "list", "data": []})
