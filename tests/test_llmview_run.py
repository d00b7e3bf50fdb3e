"""The Workers AI transcript: prompt or messages in, ``response`` text out."""

import json

from llmview import run, sse

USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}


def render(chunks):
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return run.render_stream(sse.objects(sse.parse(body.encode(), 100)[0]))


def test_render_request_prompt_inside_input():
    obj = {"model": "@cf/meta/llama-3.1-8b-instruct", "input": {"prompt": "Hi", "max_tokens": 5}}
    assert (
        run.render_request(obj)
        == "model: @cf/meta/llama-3.1-8b-instruct\nparams: max_tokens=5\n\n[user]\nHi\n"
    )


def test_render_request_messages():
    obj = {"messages": [{"role": "user", "content": "Hi"}], "stream": True}
    assert run.render_request(obj) == "params: stream=true\n\n[user]\nHi\n"


def test_render_response():
    obj = {"result": {"response": "Hello!", "usage": USAGE}, "success": True, "errors": [], "messages": []}
    assert run.render_response(obj) == "usage: prompt 9 · completion 2 · total 11\n\n[assistant]\nHello!\n"


def test_render_response_tool_calls():
    obj = {
        "result": {"response": None, "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    }
    assert run.render_response(obj).endswith('→ tool call ?: get_weather({"city": "Paris"})\n')


def test_render_response_in_chat_shape():
    obj = {"result": {"object": "chat.completion", "choices": [{"message": {"content": "Hi"}}]}}
    assert run.render_response(obj) == "\n[assistant]\nHi\n"


def test_render_stream():
    text = render([{"response": "Hel", "p": "ab"}, {"response": "lo"}, {"response": "", "usage": USAGE}])
    assert (
        text == "usage: prompt 9 · completion 2 · total 11\nstream: 3 events, [DONE]\n\n[assistant]\nHello\n"
    )


def test_render_stream_in_chat_shape():
    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
    assert render([chunk]) == "stream: 1 events, [DONE]\n\n[assistant]\nHi\n"


def test_detection():
    assert run.looks_like_request({"prompt": "Hi"})
    assert run.looks_like_response({"result": {"response": "Hi"}})
    assert run.looks_like_response({"response": "piece"})
    assert not run.looks_like_response({"data": []})
