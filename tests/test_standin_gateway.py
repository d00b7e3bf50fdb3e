"""Direct tests of the stand-in gateway: it must match the real gateway's facts, since the
proxy's end-to-end tests and benchmarks trust it as their upstream."""

from __future__ import annotations

import base64
import concurrent.futures
import gzip
import http.client
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests import standin_gateway
from tests.standin_gateway import (
    REPLY_TEXT,
    STANDIN_API_TOKEN,
    THINKING_TEXT,
    TOOL_ARGUMENTS,
    StandinGateway,
)

ACCOUNT = "0123456789abcdef0123456789abcdef"
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}


# `gw` (the shared stand-in, cleared per test) comes from conftest.py.


@pytest.fixture(scope="module")
def auth_gw():
    with StandinGateway(gateway_id="auth-gw", require_token="s3cret") as gateway:
        yield gateway


@pytest.fixture(scope="module")
def client():
    # Shared: building a Client (its TLS context) costs ~50 ms, the whole suite doubled.
    with httpx.Client(timeout=5, verify=False, trust_env=False) as c:
        yield c


def compat(gw: StandinGateway, sub: str) -> str:
    return f"{gw.base_url}{gw.compat_prefix}/{sub}"


def envelope(code: int, status: int, message: str) -> dict:
    return {
        "success": False,
        "result": [],
        "messages": [],
        "error": [{"code": code, "message": message}],
        "name": "AiGatewayError",
        "httpCode": status,
        "internalCode": code,
        "message": message,
        "description": message,
    }


def sse_events(text: str) -> list:
    """Parse `data:` events; JSON payloads decoded, the terminator kept as the string."""
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def stream_chat(client: httpx.Client, gw: StandinGateway, body: dict, headers=None) -> httpx.Response:
    r = client.post(compat(gw, "chat/completions"), json={**body, "stream": True}, headers=headers)
    assert r.status_code == 200, r.text
    return r


def raw_request(gw: StandinGateway, data: bytes) -> http.client.HTTPResponse:
    """Send exact bytes (no client normalisation) and parse the answer."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
    sock.sendall(data)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    resp.body = resp.read()  # type: ignore[attr-defined]
    sock.close()
    return resp


# ---- gateway errors ----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v1/ffffffffffffffffffffffffffffffff/test-gw/compat/chat/completions",
        f"/v1/{ACCOUNT}/other-gw/compat/chat/completions",
        f"/v1/{ACCOUNT}/test-gw",
        "/chat/completions",
    ],
)
def test_unknown_gateway_is_2001(gw, client, path):
    r = client.post(gw.base_url + path, json=CHAT)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert r.json() == envelope(2001, 400, "Please configure AI Gateway in the Cloudflare dashboard")
    assert gw.requests[-1].path == path


@pytest.mark.parametrize(
    "sub", ["responses", "messages", "moderations", "v1/chat/completions", "chat%2Fcompletions"]
)
def test_unsupported_compat_subpath_is_2019_before_auth(auth_gw, client, sub):
    r = client.post(compat(auth_gw, sub), json=CHAT)  # no token: routing must win
    assert r.status_code == 400
    msg = f"Compatibility endpoint: {sub} is not supported."
    assert r.json() == envelope(2019, 400, msg)


@pytest.mark.parametrize(
    "headers",
    [{}, {"cf-aig-authorization": "Bearer wrong"}, {"Authorization": "Bearer s3cret"}],
    ids=["missing", "wrong", "provider-header-only"],
)
def test_authenticated_gateway_rejects_with_2009(auth_gw, client, headers):
    r = client.post(compat(auth_gw, "chat/completions"), json=CHAT, headers=headers)
    assert r.status_code == 401
    assert r.json() == envelope(2009, 401, "Unauthorized")
    assert "cf-aig-cache-status" not in r.headers


def test_authenticated_gateway_accepts_token(auth_gw, client):
    r = client.post(
        compat(auth_gw, "chat/completions"), json=CHAT, headers={"cf-aig-authorization": "Bearer s3cret"}
    )
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == REPLY_TEXT


@pytest.mark.parametrize("model", ["@cf/meta/llama-3.1-8b-instruct", "gpt-4o-mini", "/gpt", None])
def test_model_without_provider_is_2008(gw, client, model):
    body = {**CHAT, "model": model} if model else {"messages": CHAT["messages"]}
    r = client.post(compat(gw, "chat/completions"), json=body)
    assert r.status_code == 400
    assert r.json() == envelope(2008, 400, "Invalid provider")


def test_chat_without_messages_is_2019_bad_format(gw, client):
    r = client.post(compat(gw, "chat/completions"), json={"model": "openai/gpt-4o-mini"})
    assert r.status_code == 400
    assert r.json() == envelope(2019, 400, "Chat completion bad format")


def test_invalid_json_gets_openai_error_shape(gw, client):
    r = client.post(
        compat(gw, "chat/completions"), content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["param"] is None and err["code"] is None
    assert gw.requests[-1].body == b'{"model": '


# ---- chat completions --------------------------------------------------------


def test_chat_completion_json_and_gateway_headers(gw, client):
    body = {
        "model": "anthropic/claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "one two"},
            {"role": "user", "content": [{"type": "text", "text": "three four five"}]},
        ],
    }
    r = client.post(compat(gw, "chat/completions"), json=body)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "anthropic/claude-sonnet-4-5"
    assert data["id"].startswith("chatcmpl-")
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == REPLY_TEXT
    assert choice["finish_reason"] == "stop"
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    h = r.headers
    assert h["server"] == "cloudflare"
    assert h["cf-aig-step"] == "0"
    assert h["cf-aig-cache-status"] == "MISS"
    assert UUID7.match(h["cf-aig-event-id"])
    assert len(h["cf-aig-log-id"]) == 26 and h["cf-aig-request-id"]
    assert re.match(r"^[0-9a-f]{16}-[A-Z]{3}$", h["cf-ray"])


def test_event_id_is_echoed(gw, client):
    r = client.post(compat(gw, "chat/completions"), json=CHAT, headers={"cf-aig-event-id": "my-event-1"})
    assert r.headers["cf-aig-event-id"] == "my-event-1"


def test_json_is_gzipped_only_when_accepted(gw, client):
    url = compat(gw, "chat/completions")
    with client.stream("POST", url, json=CHAT, headers={"Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
        assert r.headers["content-encoding"] == "gzip"
        assert int(r.headers["content-length"]) == len(raw)
    assert json.loads(gzip.decompress(raw))["choices"][0]["message"]["content"] == REPLY_TEXT

    with client.stream("POST", url, json=CHAT, headers={"Accept-Encoding": "identity"}) as r:
        raw = b"".join(r.iter_raw())
        assert "content-encoding" not in r.headers
        assert int(r.headers["content-length"]) == len(raw)
    assert json.loads(raw)["model"] == "openai/gpt-4o-mini"


def test_stream_without_usage(gw, client):
    r = stream_chat(client, gw, CHAT, headers={"Accept-Encoding": "gzip"})
    assert r.headers["content-type"] == "text/event-stream"
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["transfer-encoding"] == "chunked"
    assert "content-encoding" not in r.headers  # SSE is never compressed by the edge
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and "usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == REPLY_TEXT
    assert len(chunks) == 2 + len(REPLY_TEXT.split())
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len({c["id"] for c in chunks}) == 1


def test_stream_with_usage_chunk(gw, client):
    body = {**CHAT, "stream_options": {"include_usage": True}}
    events = sse_events(stream_chat(client, gw, body).text)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert all(e["usage"] is None for e in events[:-2])


def test_stream_event_count_and_size(gw, client):
    headers = {"x-standin-events": "7", "x-standin-event-bytes": "3000"}
    r = stream_chat(client, gw, CHAT, headers=headers)
    blocks = [b + "\n\n" for b in r.text.split("\n\n")[:-1]]
    contents = blocks[1:8]
    assert all(len(b.encode()) == 3000 for b in contents)
    events = sse_events(r.text)
    assert len(events) == 1 + 7 + 1 + 1
    assert events[1]["choices"][0]["delta"]["content"].startswith("Hello")


def test_big_stream_is_generated_not_buffered(gw, client):
    headers = {"x-standin-events": "200", "x-standin-event-bytes": "65536"}
    total = 0
    with client.stream(
        "POST", compat(gw, "chat/completions"), json={**CHAT, "stream": True}, headers=headers
    ) as r:
        for chunk in r.iter_raw():
            total += len(chunk)
    assert total >= 200 * 65536


def test_stream_delay_between_events(gw, client):
    t0 = time.monotonic()
    r = stream_chat(client, gw, CHAT, headers={"x-standin-events": "2", "x-standin-delay-ms": "60"})
    assert time.monotonic() - t0 >= 4 * 0.06 * 0.9  # role, 2 words, finish, [DONE]: 4 gaps
    assert len(sse_events(r.text)) == 5


def test_gzip_sse_decodes_event_by_event(gw, client):
    """Each event is sync-flushed: a client decodes it before the stream ends."""
    headers = {"x-standin-encoding": "gzip", "x-standin-hold": "gz"}
    url = compat(gw, "chat/completions")
    with client.stream("POST", url, json={**CHAT, "stream": True}, headers=headers) as r:
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["content-type"] == "text/event-stream"
        d = zlib.decompressobj(31)
        raw = r.iter_raw()
        first = d.decompress(next(raw)).decode()
        assert gw.wait_held("gz", 2)
        assert first.startswith("data: ") and first.endswith("\n\n")  # complete while held
        assert sse_events(first)[0]["choices"][0]["delta"]["role"] == "assistant"
        gw.release("gz")
        rest = ""
        for chunk in raw:
            rest += d.decompress(chunk).decode()
            assert rest.endswith("\n\n")
        assert d.eof
    events = sse_events(first + rest)
    assert events[-1] == "[DONE]"


def test_tool_call_stream_assembles(gw, client):
    tools = [{"type": "function", "function": {"name": "lookup_city", "parameters": {}}}]
    events = sse_events(stream_chat(client, gw, {**CHAT, "tools": tools}).text)
    chunks = [e for e in events if e != "[DONE]"]
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["index"] == 0 and first["type"] == "function"
    assert first["id"] and first["function"] == {"name": "lookup_city", "arguments": ""}
    pieces = []
    for c in chunks[1:-1]:
        (call,) = c["choices"][0]["delta"]["tool_calls"]
        assert set(call) == {"index", "function"} and call["index"] == 0
        pieces.append(call["function"]["arguments"])
    assert pieces == list(standin_gateway.TOOL_ARGUMENT_PIECES)
    assert "".join(pieces) == '{"city": "Paris"}' == TOOL_ARGUMENTS
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_call_json_via_header(gw, client):
    r = client.post(compat(gw, "chat/completions"), json=CHAT, headers={"x-standin-tool-call": "1"})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


# ---- embeddings and models ---------------------------------------------------


def test_embeddings_float_and_base64(gw, client):
    url = compat(gw, "embeddings")
    model = "workers-ai/@cf/baai/bge-base-en-v1.5"
    one = client.post(url, json={"model": model, "input": "hello world"}).json()
    assert one["object"] == "list" and one["model"] == model
    assert one["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    (item,) = one["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    assert len(item["embedding"]) == 8 and all(isinstance(x, float) for x in item["embedding"])

    two = client.post(url, json={"model": model, "input": ["hello world", "bye"]}).json()
    assert [d["index"] for d in two["data"]] == [0, 1]
    assert two["data"][0]["embedding"] == item["embedding"]  # deterministic
    assert two["data"][1]["embedding"] != item["embedding"]

    b64 = client.post(url, json={"model": model, "input": "hello world", "encoding_format": "base64"})
    packed = base64.b64decode(b64.json()["data"][0]["embedding"])
    assert list(struct.unpack("<8f", packed)) == item["embedding"]


def test_models_list(gw, client):
    r = client.get(compat(gw, "models"))
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list"
    ids = {m["id"] for m in data["data"]}
    assert "openai/gpt-4o-mini" in ids and len(ids) >= 3
    assert all(m["object"] == "model" and m["owned_by"] == m["id"].split("/")[0] for m in data["data"])
    assert client.post(compat(gw, "models")).status_code == 405


def test_head_gets_headers_only(gw, client):
    r = client.head(compat(gw, "models"))
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) > 0
    assert gw.requests[-1].method == "HEAD"


# ---- recording ---------------------------------------------------------------


def test_recording_is_exact(gw):
    path = f"{gw.compat_prefix}/chat/completions"
    body = json.dumps(CHAT).encode()
    raw = (
        f"POST {path}?a=1&b=%2F&c HTTP/1.1\r\nHost: x\r\nX-Mixed-Case: Value 1\r\n"
        f"x-dup: one\r\nx-dup: two\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    resp = raw_request(gw, raw)
    assert resp.status == 200
    (rec,) = gw.requests
    assert rec.method == "POST"
    assert rec.path == path
    assert rec.query == "a=1&b=%2F&c"
    assert rec.headers == [
        ("Host", "x"),
        ("X-Mixed-Case", "Value 1"),
        ("x-dup", "one"),
        ("x-dup", "two"),
        ("Content-Length", str(len(body))),
    ]
    assert rec.body == body
    assert rec.header("x-mixed-case") == "Value 1"
    assert rec.header_values("X-DUP") == ["one", "two"]
    assert rec.json() == CHAT


def test_recording_chunked_body_and_order(gw, client):
    def gen():
        yield b'{"model": "openai/gpt-4o-mini",'
        yield b' "messages": []}'

    r = client.post(compat(gw, "chat/completions") + "?x", content=gen())
    assert r.status_code == 200
    client.get(compat(gw, "models"))
    client.delete(gw.base_url + "/nowhere")
    first, second, third = gw.requests
    assert first.header("transfer-encoding") == "chunked"
    assert first.body == b'{"model": "openai/gpt-4o-mini", "messages": []}'
    assert first.query == "x"
    assert (second.method, second.query, second.body) == ("GET", "", b"")
    assert (third.method, third.path) == ("DELETE", "/nowhere")


def test_expect_continue_body(gw):
    body = json.dumps(CHAT).encode()
    path = f"{gw.compat_prefix}/chat/completions"
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head.encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        assert resp.status == 200
    assert gw.requests[-1].body == body


# ---- test-control headers ----------------------------------------------------


def test_held_stream_first_event_before_release(gw, client):
    got: list[tuple[float, bytes]] = []

    def reader():
        headers = {"x-standin-hold": "h1"}
        with client.stream(
            "POST", compat(gw, "chat/completions"), json={**CHAT, "stream": True}, headers=headers
        ) as r:
            for chunk in r.iter_raw():
                got.append((time.monotonic(), chunk))

    t = threading.Thread(target=reader)
    t.start()
    assert gw.wait_held("h1", 3)
    time.sleep(0.15)
    held_text = b"".join(c for _, c in got).decode()
    assert len(sse_events(held_text)) == 1  # only the role chunk so far
    released_at = time.monotonic()
    gw.release("h1")
    t.join(5)
    assert not t.is_alive()
    assert got[-1][0] >= released_at
    events = sse_events(b"".join(c for _, c in got).decode())
    assert events[-1] == "[DONE]"
    assert not gw.wait_held("never-used", 0.01)


def test_held_json_answer(gw, client):
    result = {}
    t = threading.Thread(
        target=lambda: result.update(
            r=client.post(compat(gw, "chat/completions"), json=CHAT, headers={"x-standin-hold": "j1"})
        )
    )
    t.start()
    assert gw.wait_held("j1", 3)
    time.sleep(0.05)
    assert "r" not in result
    gw.release("j1")
    t.join(5)
    assert result["r"].status_code == 200


def test_reset_after_gives_read_error(gw, client):
    received = b""
    with pytest.raises(httpx.ReadError):
        with client.stream(
            "POST",
            compat(gw, "chat/completions"),
            json={**CHAT, "stream": True},
            headers={"x-standin-reset-after": "2"},
        ) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                received += chunk
    assert len(sse_events(received.decode())) == 2


def test_status_override_with_retry_after(gw, client):
    headers = {"x-standin-status": "429", "x-standin-retry-after": "7"}
    r = client.post(compat(gw, "chat/completions"), json=CHAT, headers=headers)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "7"
    assert r.json() == {
        "error": {
            "message": "Stand-in provider error 429",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert r.headers["cf-aig-step"] == "0" and "cf-aig-cache-status" not in r.headers
    r = client.get(compat(gw, "models"), headers={"x-standin-status": "503"})
    assert r.status_code == 503 and "retry-after" not in r.headers
    assert r.json()["error"]["type"] == "server_error"


def test_echo_any_method_and_path(gw, client):
    path = f"/v1/{ACCOUNT}/test-gw/openai/some/thing"
    r = client.request(
        "PATCH", gw.base_url + path + "?q=%20x", content=b"caf\xc3\xa9 \xff", headers={"x-standin-echo": "1"}
    )
    assert r.status_code == 200
    data = r.json()
    assert (data["method"], data["path"], data["query"]) == ("PATCH", path, "q=%20x")
    assert data["body"] == "café \ufffd"
    assert ["x-standin-echo", "1"] in data["headers"]


def test_close_before_headers(gw, client):
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(compat(gw, "chat/completions"), json=CHAT, headers={"x-standin-close": "before-headers"})
    assert gw.requests[-1].header("x-standin-close") == "before-headers"


def test_close_mid_body(gw, client):
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.post(compat(gw, "chat/completions"), json=CHAT, headers={"x-standin-close": "mid-body"})


def test_hang_times_out_client(gw):
    with httpx.Client(timeout=0.3, verify=False) as c, pytest.raises(httpx.ReadTimeout):
        c.post(compat(gw, "chat/completions"), json=CHAT, headers={"x-standin-hang": "2"})


# ---- provider-native routes: shared helpers ------------------------------------

ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}
MESSAGES = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 256,
    "system": "one two",
    "messages": [{"role": "user", "content": [{"type": "text", "text": "three four five"}]}],
}
TOOLS_ANTHROPIC = [{"name": "lookup_city", "description": "d", "input_schema": {"type": "object"}}]
TOOLS_RESPONSES = [{"type": "function", "name": "lookup_city", "parameters": {"type": "object"}}]
RESPONSE_REQ = {"model": "gpt-5", "instructions": "be brief", "input": "one two three"}
ANTHROPIC_ID = re.compile(r"^(msg|toolu)_01[A-Za-z0-9]{22}$")
OPENAI_ID = re.compile(r"^(resp|msg|fc|rs)_[0-9a-f]{50}$")


def messages_url(gw: StandinGateway, sub: str = "messages") -> str:
    return f"{gw.anthropic_url}/v1/{sub}"


def responses_url(gw: StandinGateway, sub: str = "") -> str:
    return f"{gw.openai_url}/responses{sub}"


def named_events(text: str) -> list[tuple[str, dict]]:
    """Parse `event:`/`data:` SSE (Anthropic, Responses); each data's type must equal its event name."""
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: "), block
        name, data = name_line[len("event: ") :], json.loads(data_line[len("data: ") :])
        assert data["type"] == name
        events.append((name, data))
    return events


def anthropic_error(r: httpx.Response, status: int, type_: str, message: str) -> None:
    assert r.status_code == status
    assert r.json() == {
        "type": "error",
        "error": {"type": type_, "message": message},
        "request_id": r.headers["request-id"],
    }
    assert r.headers["request-id"].startswith("req_011C")


def openai_error(r: httpx.Response, status: int, message: str, param=None, code=None) -> None:
    assert r.status_code == status
    assert r.json() == {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }


# ---- Anthropic Messages (.../anthropic/v1/messages) ---------------------------


def test_anthropic_message_json(gw, client):
    r = client.post(messages_url(gw) + "?beta=true", json=MESSAGES, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 200
    data = r.json()
    assert ANTHROPIC_ID.match(data.pop("id")) and data["usage"]
    assert data == {
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": REPLY_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 5,
        },
    }
    assert r.headers["request-id"].startswith("req_011C") and r.headers["cf-aig-step"] == "0"
    assert (gw.requests[-1].path, gw.requests[-1].query) == (
        f"{gw.anthropic_prefix}/v1/messages",
        "beta=true",
    )


def test_anthropic_thinking_and_tool_json(gw, client):
    body = {**MESSAGES, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    r = client.post(messages_url(gw), json=body, headers={**ANTHROPIC_HEADERS, "x-standin-tool-call": "1"})
    thinking, tool = r.json()["content"]
    assert thinking == {
        "type": "thinking",
        "thinking": THINKING_TEXT,
        "signature": standin_gateway.THINKING_SIGNATURE,
    }
    assert ANTHROPIC_ID.match(tool.pop("id"))
    assert tool == {"type": "tool_use", "name": "get_weather", "input": {"city": "Paris"}}
    assert r.json()["stop_reason"] == "tool_use"
    assert r.json()["usage"]["output_tokens"] == 6 + 2


def test_anthropic_text_stream(gw, client):
    r = client.post(messages_url(gw), json={**MESSAGES, "stream": True}, headers=ANTHROPIC_HEADERS)
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = named_events(r.text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 5,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert (start["content"], start["stop_reason"], start["model"]) == ([], None, "claude-sonnet-4-5")
    assert start["usage"] == {
        "input_tokens": 5,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas)
    assert "".join(d["text"] for d in deltas) == REPLY_TEXT
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 5},
    }


def test_anthropic_thinking_and_tool_stream(gw, client):
    body = {**MESSAGES, "stream": True, "tools": TOOLS_ANTHROPIC, "thinking": {"type": "enabled"}}
    events = named_events(client.post(messages_url(gw), json=body, headers=ANTHROPIC_HEADERS).text)
    starts = [data["content_block"] for name, data in events if name == "content_block_start"]
    assert starts[0] == {"type": "thinking", "thinking": "", "signature": ""}
    assert ANTHROPIC_ID.match(starts[1].pop("id"))
    assert starts[1] == {"type": "tool_use", "name": "lookup_city", "input": {}}
    by_index: dict[int, list[dict]] = {0: [], 1: []}
    for name, data in events:
        if name == "content_block_delta":
            by_index[data["index"]].append(data["delta"])
    thinking = [d["thinking"] for d in by_index[0] if d["type"] == "thinking_delta"]
    assert "".join(thinking) == THINKING_TEXT and len(thinking) == 2
    assert by_index[0][-1] == {"type": "signature_delta", "signature": standin_gateway.THINKING_SIGNATURE}
    assert [d["type"] for d in by_index[1]] == ["input_json_delta"] * 5
    assert "".join(d["partial_json"] for d in by_index[1]) == TOOL_ARGUMENTS
    assert [data["index"] for name, data in events if name == "content_block_stop"] == [0, 1]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert events[-2][1]["usage"] == {"output_tokens": 8}


def test_anthropic_count_tokens(gw, client):
    body = {key: value for key, value in MESSAGES.items() if key != "max_tokens"}
    r = client.post(
        messages_url(gw, "messages/count_tokens") + "?beta=true", json=body, headers=ANTHROPIC_HEADERS
    )
    assert r.status_code == 200
    assert r.json() == {"input_tokens": 5}


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": "sk-ant-api03-test"},
        {"Authorization": "Bearer sk-ant-oat01-test"},
        {"x-api-key": "sk-ant-api03-test", "Authorization": "Bearer sk-ant-api03-test"},
    ],
    ids=["x-api-key", "bearer", "both"],
)
def test_anthropic_accepts_anthropic_keys(gw, client, headers):
    r = client.post(messages_url(gw), json=MESSAGES, headers={**ANTHROPIC_HEADERS, **headers})
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-api-key": "placeholder"}, "invalid x-api-key"),
        ({"x-api-key": "sk-proj-openai"}, "invalid x-api-key"),
        ({"Authorization": "Bearer unused"}, "Invalid bearer token"),
        ({"Authorization": "sk-ant-api03-no-bearer"}, "Invalid bearer token"),
        ({"x-api-key": "sk-ant-api03-test", "Authorization": "Bearer placeholder"}, "Invalid bearer token"),
    ],
)
def test_anthropic_rejects_other_keys(gw, client, headers, message):
    r = client.post(messages_url(gw), json=MESSAGES, headers={**ANTHROPIC_HEADERS, **headers})
    anthropic_error(r, 401, "authentication_error", message)


@pytest.mark.parametrize(
    ("body", "headers", "status", "type_", "message"),
    [
        (MESSAGES, {}, 400, "invalid_request_error", "anthropic-version: header is required"),
        (
            {**MESSAGES, "model": "anthropic/claude-sonnet-4-5"},
            None,
            404,
            "not_found_error",
            "model: anthropic/claude-sonnet-4-5",
        ),
        (
            {"model": "claude-sonnet-4-5", "messages": []},
            None,
            400,
            "invalid_request_error",
            "max_tokens: Field required",
        ),
        ({"max_tokens": 5, "messages": []}, None, 400, "invalid_request_error", "model: Field required"),
        ({**MESSAGES, "messages": "hi"}, None, 400, "invalid_request_error", "messages: Field required"),
        ([1], None, 400, "invalid_request_error", "There was an issue with your request body: invalid JSON"),
    ],
    ids=["no-version", "compat-model", "no-max-tokens", "no-model", "bad-messages", "not-an-object"],
)
def test_anthropic_request_errors(gw, client, body, headers, status, type_, message):
    r = client.post(messages_url(gw), json=body, headers=ANTHROPIC_HEADERS if headers is None else headers)
    anthropic_error(r, status, type_, message)


def test_anthropic_unknown_path_and_method(gw, client):
    anthropic_error(client.get(f"{gw.anthropic_url}/v1/models"), 404, "not_found_error", "Not Found")
    r = client.get(messages_url(gw), headers=ANTHROPIC_HEADERS)
    anthropic_error(r, 405, "invalid_request_error", "Method Not Allowed")
    assert r.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("status", "type_"), [(429, "rate_limit_error"), (529, "overloaded_error"), (502, "api_error")]
)
def test_anthropic_status_override(gw, client, status, type_):
    headers = {**ANTHROPIC_HEADERS, "x-standin-status": str(status), "x-standin-retry-after": "3"}
    r = client.post(messages_url(gw), json=MESSAGES, headers=headers)
    anthropic_error(r, status, type_, f"Stand-in provider error {status}")
    assert r.headers["retry-after"] == "3"


# ---- OpenAI Responses (.../openai/responses) ----------------------------------


def test_responses_json(gw, client):
    r = client.post(responses_url(gw), json=RESPONSE_REQ)
    assert r.status_code == 200
    data = r.json()
    assert OPENAI_ID.match(data["id"]) and data["id"].startswith("resp_")
    assert (data["object"], data["status"], data["model"]) == ("response", "completed", "gpt-5")
    assert abs(data["created_at"] - time.time()) < 60
    (item,) = data["output"]
    assert OPENAI_ID.match(item.pop("id"))
    assert item == {
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": REPLY_TEXT, "annotations": [], "logprobs": []}],
    }
    assert data["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 10,
    }
    assert (data["instructions"], data["store"], data["error"]) == ("be brief", True, None)
    assert re.fullmatch(r"req_[0-9a-f]{32}", r.headers["x-request-id"])


def test_responses_reasoning_and_function_call_json(gw, client):
    body = {**RESPONSE_REQ, "tools": TOOLS_RESPONSES, "reasoning": {"effort": "low"}}
    data = client.post(responses_url(gw), json=body).json()
    reasoning, call = data["output"]
    assert OPENAI_ID.match(reasoning.pop("id")) and OPENAI_ID.match(call.pop("id"))
    assert reasoning == {"type": "reasoning", "summary": []}
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", call.pop("call_id"))
    assert call == {
        "type": "function_call",
        "name": "lookup_city",
        "arguments": TOOL_ARGUMENTS,
        "status": "completed",
    }
    assert data["usage"]["output_tokens"] == 2 + 6
    assert data["usage"]["output_tokens_details"] == {"reasoning_tokens": 6}
    assert data["reasoning"] == {"effort": "low", "summary": None}
    header_call = client.post(
        responses_url(gw), json=RESPONSE_REQ, headers={"x-standin-tool-call": "1"}
    ).json()
    assert [i["type"] for i in header_call["output"]] == ["function_call"]
    assert header_call["output"][0]["name"] == "get_weather"


def test_responses_text_stream(gw, client):
    r = client.post(responses_url(gw), json={**RESPONSE_REQ, "stream": True})
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = named_events(r.text)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 5,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    created = events[0][1]["response"]
    assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
    item_id = events[2][1]["item"]["id"]
    deltas = [data for name, data in events if name == "response.output_text.delta"]
    assert all((d["item_id"], d["output_index"], d["content_index"]) == (item_id, 0, 0) for d in deltas)
    assert "".join(d["delta"] for d in deltas) == REPLY_TEXT
    assert events[-4][1]["text"] == REPLY_TEXT
    final = events[-1][1]["response"]
    assert final["id"] == created["id"] and final["status"] == "completed"
    assert final["output"] == [events[-2][1]["item"]]
    assert final["usage"]["total_tokens"] == 5 + 5
    assert client.get(responses_url(gw, "/" + final["id"])).json() == final  # stored


def test_responses_function_call_and_reasoning_summary_stream(gw, client):
    body = {**RESPONSE_REQ, "stream": True, "tools": TOOLS_RESPONSES, "reasoning": {"summary": "auto"}}
    events = named_events(client.post(responses_url(gw), json=body).text)
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 4,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    added = events[8][1]
    assert added["output_index"] == 1
    assert (added["item"]["type"], added["item"]["arguments"], added["item"]["status"]) == (
        "function_call",
        "",
        "in_progress",
    )
    pieces = [data["delta"] for name, data in events if name == "response.function_call_arguments.delta"]
    assert "".join(pieces) == TOOL_ARGUMENTS
    assert events[13][1]["arguments"] == TOOL_ARGUMENTS and events[13][1]["name"] == "lookup_city"
    reasoning, call = events[-1][1]["response"]["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": THINKING_TEXT}]
    assert call["call_id"] == added["item"]["call_id"]


@pytest.mark.parametrize(
    ("method", "sub", "body", "headers", "status", "message", "param", "code"),
    [
        (
            "POST",
            "",
            {**RESPONSE_REQ, "model": "openai/gpt-5"},
            {},
            400,
            "The requested model 'openai/gpt-5' does not exist.",
            "model",
            "model_not_found",
        ),
        (
            "POST",
            "",
            {"input": "hi"},
            {},
            400,
            "Missing required parameter: 'model'.",
            "model",
            "missing_required_parameter",
        ),
        (
            "POST",
            "",
            RESPONSE_REQ,
            {"Authorization": "Bearer gw-token-1234"},
            401,
            "Incorrect API key provided: gw-******1234. "
            "You can find your API key at https://platform.openai.com/account/api-keys.",
            None,
            "invalid_api_key",
        ),
        (
            "GET",
            "/resp_unknown",
            None,
            {},
            404,
            "Response with id 'resp_unknown' not found.",
            "response_id",
            None,
        ),
        ("GET", "", None, {}, 405, "Invalid method for URL (GET /v1/responses)", None, None),
        (
            "POST",
            "/resp_x/nothing",
            {},
            {},
            404,
            "Invalid URL (POST /v1/responses/resp_x/nothing)",
            None,
            None,
        ),
    ],
    ids=["compat-model", "no-model", "bad-key", "unknown-id", "method", "unknown-path"],
)
def test_responses_errors(gw, client, method, sub, body, headers, status, message, param, code):
    r = client.request(method, responses_url(gw, sub), json=body, headers=headers)
    openai_error(r, status, message, param, code)


def test_responses_lifecycle(gw, client):
    body = {
        **RESPONSE_REQ,
        "input": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    }
    created = client.post(responses_url(gw), json=body, headers={"Authorization": "Bearer sk-test"}).json()
    one = responses_url(gw, "/" + created["id"])
    assert client.get(one).json() == created
    page = client.get(one + "/input_items").json()
    assert [(i["role"], i["content"]) for i in page["data"]] == [
        ("assistant", [{"type": "output_text", "text": "yo"}]),  # default order: newest first
        ("user", [{"type": "input_text", "text": "hi"}]),
    ]
    assert (page["object"], page["has_more"], page["first_id"]) == ("list", False, page["data"][0]["id"])
    asc = client.get(one + "/input_items?order=asc&limit=1").json()
    assert [i["role"] for i in asc["data"]] == ["user"] and asc["has_more"] is True
    openai_error(client.post(one + "/cancel"), 400, "Cannot cancel a synchronous response.")
    deleted = client.delete(one)
    assert deleted.json() == {"id": created["id"], "object": "response", "deleted": True}
    assert client.get(one).status_code == 404
    unstored = client.post(responses_url(gw), json={**RESPONSE_REQ, "store": False}).json()
    assert unstored["store"] is False
    assert client.get(responses_url(gw, "/" + unstored["id"])).status_code == 404


def test_responses_background_cancel_and_retrieve(gw, client):
    queued = client.post(responses_url(gw), json={**RESPONSE_REQ, "background": True}).json()
    assert (queued["status"], queued["output"], queued["usage"], queued["background"]) == (
        "queued",
        [],
        None,
        True,
    )
    cancelled = client.post(responses_url(gw, f"/{queued['id']}/cancel")).json()
    assert (cancelled["id"], cancelled["status"]) == (queued["id"], "cancelled")
    assert client.get(responses_url(gw, "/" + queued["id"])).json()["status"] == "cancelled"

    other = client.post(responses_url(gw), json={**RESPONSE_REQ, "background": True}).json()
    done = client.get(responses_url(gw, "/" + other["id"])).json()
    assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == REPLY_TEXT
    assert client.post(responses_url(gw, f"/{other['id']}/cancel")).json() == done  # idempotent


def test_responses_store_is_bounded(gw, client, monkeypatch):
    monkeypatch.setattr(standin_gateway, "MAX_STORED_RESPONSES", 2)
    ids = [client.post(responses_url(gw), json=RESPONSE_REQ).json()["id"] for _ in range(3)]
    assert [client.get(responses_url(gw, "/" + i)).status_code for i in ids] == [404, 200, 200]


def test_openai_native_chat_completions(gw, client):
    url = f"{gw.openai_url}/chat/completions"
    r = client.post(url, json={**CHAT, "model": "gpt-4o-mini"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == REPLY_TEXT
    message = "The model `openai/gpt-4o-mini` does not exist or you do not have access to it."
    openai_error(client.post(url, json=CHAT), 404, message, None, "model_not_found")


# ---- provider-native routes: gateway checks and test-control headers -----------


@pytest.mark.parametrize("route", ["anthropic/v1/messages", "openai/responses"])
def test_native_routes_need_the_gateway_token(auth_gw, client, route):
    url = f"{auth_gw.base_url}{auth_gw.gateway_prefix}{route}"
    body = MESSAGES if route.startswith("anthropic") else RESPONSE_REQ
    r = client.post(url, json=body, headers={**ANTHROPIC_HEADERS, "Authorization": "Bearer s3cret"})
    assert r.status_code == 401
    assert r.json() == envelope(2009, 401, "Unauthorized")
    r = client.post(url, json=body, headers={**ANTHROPIC_HEADERS, "cf-aig-authorization": "Bearer s3cret"})
    assert r.status_code == 200


def test_native_route_prefix_and_provider_errors(gw, client):
    wrong_account = f"/v1/{'f' * 32}/test-gw/anthropic/v1/messages"
    r = client.post(gw.base_url + wrong_account, json=MESSAGES, headers=ANTHROPIC_HEADERS)
    assert r.json() == envelope(2001, 400, "Please configure AI Gateway in the Cloudflare dashboard")
    r = client.post(f"{gw.base_url}{gw.gateway_prefix}google-ai-studio/v1beta/models", json={})
    assert r.json() == envelope(2008, 400, "Invalid provider")


def native_stream(gw: StandinGateway, route: str) -> tuple[str, dict, dict]:
    if route == "anthropic":
        return messages_url(gw), {**MESSAGES, "stream": True}, ANTHROPIC_HEADERS
    return responses_url(gw), {**RESPONSE_REQ, "stream": True}, {}


def text_delta(name: str, data: dict) -> str | None:
    if name == "content_block_delta":
        return data["delta"]["text"]
    return data["delta"] if name == "response.output_text.delta" else None


@pytest.mark.parametrize("route", ["anthropic", "responses"])
def test_native_stream_event_count_and_size(gw, client, route):
    url, body, headers = native_stream(gw, route)
    r = client.post(
        url, json=body, headers={**headers, "x-standin-events": "7", "x-standin-event-bytes": "1500"}
    )
    blocks = [b + "\n\n" for b in r.text.split("\n\n")[:-1]]
    events = named_events(r.text)
    sized = [
        len(b.encode())
        for b, (name, data) in zip(blocks, events, strict=True)
        if text_delta(name, data) is not None
    ]
    assert sized == [1500] * 7
    texts = [text_delta(name, data) for name, data in events if text_delta(name, data) is not None]
    if route == "responses":  # padding rides in "obfuscation"; the text and the .done event stay clean
        assert "".join(texts) == "Hello from the stand-in gateway. Hello from"
        assert events[-1][1]["response"]["usage"]["output_tokens"] == 7
    else:  # Anthropic has no such field: the filler is part of the text
        assert texts[0].startswith("Hellox") and texts[0].endswith("x")
        assert events[-2][1]["usage"] == {"output_tokens": 7}


@pytest.mark.parametrize("route", ["anthropic", "responses"])
def test_native_stream_gzip_and_hold(gw, client, route):
    url, body, headers = native_stream(gw, route)
    headers = {**headers, "x-standin-encoding": "gzip", "x-standin-hold": f"hold-{route}"}
    with client.stream("POST", url, json=body, headers=headers) as r:
        assert r.headers["content-encoding"] == "gzip"
        d = zlib.decompressobj(31)
        raw = r.iter_raw()
        first = d.decompress(next(raw)).decode()
        assert gw.wait_held(f"hold-{route}", 2)
        assert [name for name, _ in named_events(first)] == [
            "message_start" if route == "anthropic" else "response.created"
        ]
        gw.release(f"hold-{route}")
        rest = "".join(d.decompress(chunk).decode() for chunk in raw)
    last = named_events(first + rest)[-1][0]
    assert last == ("message_stop" if route == "anthropic" else "response.completed")


@pytest.mark.parametrize("route", ["anthropic", "responses"])
def test_native_stream_reset_after(gw, client, route):
    url, body, headers = native_stream(gw, route)
    received = b""
    with pytest.raises(httpx.ReadError):
        with client.stream("POST", url, json=body, headers={**headers, "x-standin-reset-after": "3"}) as r:
            for chunk in r.iter_raw():
                received += chunk
    assert len(named_events(received.decode())) == 3


def test_native_close_and_delay(gw, client):
    url, body, headers = native_stream(gw, "anthropic")
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(url, json=body, headers={**headers, "x-standin-close": "before-headers"})
    t0 = time.monotonic()
    r = client.post(url, json=body, headers={**headers, "x-standin-delay-ms": "30", "x-standin-events": "1"})
    assert time.monotonic() - t0 >= 6 * 0.03 * 0.9  # 7 events: 6 gaps
    assert len(named_events(r.text)) == 7


# ---- the real SDKs against the native routes ----------------------------------


@pytest.fixture
def anthropic_client(auth_gw):
    auth_gw.clear()
    c = anthropic.Anthropic(
        base_url=auth_gw.anthropic_url,
        api_key="sk-ant-api03-test",
        default_headers={"cf-aig-authorization": "Bearer s3cret"},
        max_retries=0,
    )
    yield c
    c.close()


@pytest.fixture
def openai_client(auth_gw):
    auth_gw.clear()
    c = openai.OpenAI(
        base_url=auth_gw.openai_url,
        api_key="sk-test",
        default_headers={"cf-aig-authorization": "Bearer s3cret"},
        max_retries=0,
    )
    yield c
    c.close()


SDK_MESSAGES = [{"role": "user", "content": "one two three"}]


def test_anthropic_sdk_create_and_count(anthropic_client, auth_gw):
    msg = anthropic_client.messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=SDK_MESSAGES)
    assert [(b.type, b.text) for b in msg.content] == [("text", REPLY_TEXT)]
    assert (msg.stop_reason, msg.usage.input_tokens, msg.usage.output_tokens) == ("end_turn", 3, 5)
    count = anthropic_client.messages.count_tokens(model="claude-sonnet-4-6", messages=SDK_MESSAGES)
    assert count.input_tokens == 3
    first, second = auth_gw.requests
    assert first.path == f"{auth_gw.anthropic_prefix}/v1/messages"
    assert second.path == f"{auth_gw.anthropic_prefix}/v1/messages/count_tokens"
    # Newer SDKs send the key as a Bearer token: the stand-in accepts Anthropic keys in either header.
    key = first.header("x-api-key") or first.header("authorization")
    assert key in ("sk-ant-api03-test", "Bearer sk-ant-api03-test")
    assert first.header("anthropic-version")


def test_anthropic_sdk_stream_with_tool(anthropic_client):
    with anthropic_client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=SDK_MESSAGES, tools=TOOLS_ANTHROPIC
    ) as stream:
        json_parts = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert "".join(json_parts) == TOOL_ARGUMENTS
    (tool,) = final.content
    assert (tool.type, tool.name, tool.input) == ("tool_use", "lookup_city", {"city": "Paris"})
    assert (final.stop_reason, final.usage.output_tokens) == ("tool_use", 2)


def test_anthropic_sdk_compat_model_name_is_not_found(anthropic_client):
    with pytest.raises(anthropic.NotFoundError) as exc:
        anthropic_client.messages.create(
            model="anthropic/claude-sonnet-4-6", max_tokens=8, messages=SDK_MESSAGES
        )
    assert exc.value.body["error"] == {
        "type": "not_found_error",
        "message": "model: anthropic/claude-sonnet-4-6",
    }


def test_openai_sdk_responses(openai_client):
    created = openai_client.responses.create(model="gpt-5", input="one two three")
    assert created.output_text == REPLY_TEXT
    assert (created.usage.input_tokens, created.usage.output_tokens) == (3, 5)
    retrieved = openai_client.responses.retrieve(created.id)
    assert (retrieved.id, retrieved.output_text) == (created.id, REPLY_TEXT)

    stream = openai_client.responses.create(model="gpt-5", input="hi", stream=True)
    events = list(stream)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY_TEXT
    assert events[-1].type == "response.completed" and events[-1].response.output_text == REPLY_TEXT

    tools = [{"type": "function", "name": "lookup_city", "parameters": {"type": "object", "properties": {}}}]
    called = openai_client.responses.create(model="gpt-5", input="weather?", tools=tools)
    (call,) = called.output
    assert (call.type, call.name, json.loads(call.arguments)) == (
        "function_call",
        "lookup_city",
        {"city": "Paris"},
    )


def test_openai_sdk_compat_model_name_is_rejected(openai_client):
    with pytest.raises(openai.BadRequestError) as exc:
        openai_client.responses.create(model="openai/gpt-5", input="hi")
    assert exc.value.code == "model_not_found"


# ---- Cloudflare's REST API (/client/v4/accounts/{account}/ai/...) ---------------

REST_AUTH = {"Authorization": f"Bearer {STANDIN_API_TOKEN}"}
REST_CHAT = {"model": "openai/gpt-5", "messages": [{"role": "user", "content": "one two three"}]}
# Claude Code's Bash tool, in short.
BASH_SCHEMA = {
    "type": "object",
    "properties": {
        "command": {"type": "string", "description": "The command to run"},
        "timeout": {"type": "number"},
        "run_in_background": {"type": "boolean"},
    },
    "required": ["command"],
    "additionalProperties": False,
}


def rest(gw: StandinGateway, route: str) -> str:
    return f"{gw.rest_url}/ai/{route}"


def v4_error(r: httpx.Response, status: int, code: int, message: str) -> None:
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "result": None,
        "success": False,
        "errors": [{"code": code, "message": message}],
        "messages": [],
    }


def test_rest_urls(gw):
    assert gw.rest_prefix == f"/client/v4/accounts/{ACCOUNT}"
    assert gw.rest_url == f"{gw.base_url}/client/v4/accounts/{ACCOUNT}"
    assert gw.rest_openai_url == gw.rest_url + "/ai/v1"
    assert gw.rest_anthropic_url == gw.rest_url + "/ai"
    assert gw.api_token == STANDIN_API_TOKEN


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("run", {"model": "openai/gpt-5", "input": {"prompt": "one two three"}}),
        ("v1/chat/completions", REST_CHAT),
        ("v1/responses", {"model": "openai/gpt-5", "input": "one two three"}),
        ("v1/messages", {"model": "anthropic/claude-sonnet-4-5", "max_tokens": 64, "messages": SDK_MESSAGES}),
    ],
)
def test_rest_routes_answer_and_record_headers(gw, client, route, body):
    headers = {**REST_AUTH, "cf-aig-gateway-id": "my-gw"}
    r = client.post(rest(gw, route) + "?beta=true", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["server"] == "cloudflare" and r.headers["cf-aig-step"] == "0"
    data = r.json()
    if route == "run":
        assert data == {
            "result": {
                "response": REPLY_TEXT,
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
            },
            "success": True,
            "errors": [],
            "messages": [],
        }
    elif route == "v1/chat/completions":
        assert data["object"] == "chat.completion" and data["model"] == "openai/gpt-5"
        assert data["choices"][0]["message"]["content"] == REPLY_TEXT
    elif route == "v1/responses":
        assert data["object"] == "response" and data["output"][0]["content"][0]["text"] == REPLY_TEXT
    else:
        assert data["type"] == "message" and data["content"] == [{"type": "text", "text": REPLY_TEXT}]
    (rec,) = gw.requests
    assert (rec.method, rec.path, rec.query) == ("POST", f"{gw.rest_prefix}/ai/{route}", "beta=true")
    assert rec.authorization == f"Bearer {STANDIN_API_TOKEN}"
    assert rec.aig_gateway_id == "my-gw"


def test_rest_gateway_id_header_is_optional(gw, client):
    r = client.post(rest(gw, "v1/chat/completions"), json=REST_CHAT, headers=REST_AUTH)
    assert r.status_code == 200
    assert gw.requests[-1].aig_gateway_id is None  # third-party models: the account's default gateway


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": STANDIN_API_TOKEN},
        {"cf-aig-authorization": f"Bearer {STANDIN_API_TOKEN}"},
        {"x-api-key": STANDIN_API_TOKEN},
    ],
    ids=["missing", "wrong", "no-bearer", "gateway-header", "x-api-key"],
)
def test_rest_needs_the_api_token(gw, client, headers):
    r = client.post(rest(gw, "v1/chat/completions"), json=REST_CHAT, headers=headers)
    v4_error(r, 401, 10000, "Authentication error")
    assert "cf-aig-cache-status" not in r.headers


def test_rest_api_token_is_configurable(client):
    with StandinGateway(api_token="other-token", require_token="gw-token") as gateway:
        url = f"{gateway.rest_url}/ai/v1/chat/completions"
        v4_error(client.post(url, json=REST_CHAT, headers=REST_AUTH), 401, 10000, "Authentication error")
        r = client.post(url, json=REST_CHAT, headers={"Authorization": "bearer other-token"})
        assert r.status_code == 200  # the gateway's require_token plays no part on the REST API


def test_rest_wrong_account_is_7003(gw, client):
    path = f"/client/v4/accounts/{'f' * 32}/ai/v1/chat/completions"
    r = client.post(gw.base_url + path, json=REST_CHAT, headers=REST_AUTH)
    v4_error(r, 404, 7003, f"Could not route to {path}, perhaps your object identifier is invalid?")
    # Authentication comes first.
    v4_error(client.post(gw.base_url + path, json=REST_CHAT), 401, 10000, "Authentication error")


@pytest.mark.parametrize(
    ("method", "sub"),
    [
        ("GET", "/ai/v1/models"),
        ("POST", "/ai/v1/embeddings"),
        ("POST", "/ai/v1/messages/count_tokens"),
        ("GET", "/ai/v1/responses/resp_123"),
        ("DELETE", "/ai/v1/responses/resp_123"),
        ("GET", "/ai/v1/chat/completions"),
        ("POST", "/ai/v1"),
        ("POST", "/ai/run/@cf/meta/llama-3.1-8b-instruct"),
        ("POST", "/ai/v1/compat/chat/completions"),
    ],
)
@pytest.mark.parametrize("auth", [True, False], ids=["token", "no-token"])
def test_rest_undocumented_paths_are_7000(gw, client, method, sub, auth):
    r = client.request(method, gw.rest_url + sub, json={}, headers=REST_AUTH if auth else {})
    v4_error(r, 404, 7000, "No route for that URI")


def test_rest_other_v4_paths_are_7000(gw, client):
    for path in ("/client/v4/user/tokens/verify", "/client/v4/accounts", "/client/v4/"):
        v4_error(client.post(gw.base_url + path, headers=REST_AUTH), 404, 7000, "No route for that URI")


@pytest.mark.parametrize(
    "model",
    [
        "openai/gpt-5",
        "anthropic/claude-sonnet-4-5",
        "google/gemini-3-flash",
        "xai/grok-3",
        "@cf/meta/llama-3.1-8b-instruct",
    ],
)
def test_rest_model_names_accepted(gw, client, model):
    headers = {**REST_AUTH, "cf-aig-gateway-id": "test-gw"}
    r = client.post(rest(gw, "v1/chat/completions"), json={**REST_CHAT, "model": model}, headers=headers)
    assert r.status_code == 200 and r.json()["model"] == model


@pytest.mark.parametrize(
    "model",
    [
        "gpt-5",
        "claude-opus-4-8",
        "claude-sonnet-4-5",
        "workers-ai/@cf/meta/llama-3.1-8b-instruct",
        "/gpt-5",
        "openai/",
        "@cf/meta",
        "@hf/x/y",
    ],
)
@pytest.mark.parametrize("route", ["run", "v1/chat/completions", "v1/responses", "v1/messages"])
def test_rest_bare_or_malformed_model_is_5007(gw, client, model, route):
    body = {"model": model, "input": {"prompt": "hi"}, "messages": SDK_MESSAGES, "max_tokens": 8}
    r = client.post(rest(gw, route), json=body, headers={**REST_AUTH, "cf-aig-gateway-id": "test-gw"})
    v4_error(r, 400, 5007, f"No such model {model} or task")


@pytest.mark.parametrize("route", ["run", "v1/chat/completions"])
def test_rest_workers_ai_needs_gateway_header(gw, client, route):
    body = {"model": "@cf/meta/llama-3.1-8b-instruct", "input": {"prompt": "hi"}, "messages": SDK_MESSAGES}
    r = client.post(rest(gw, route), json=body, headers=REST_AUTH)
    v4_error(r, 400, 2001, "Workers AI models need a cf-aig-gateway-id header")
    r = client.post(rest(gw, route), json=body, headers={**REST_AUTH, "cf-aig-gateway-id": "other-gw"})
    assert r.status_code == 200
    assert gw.requests[-1].aig_gateway_id == "other-gw"


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        ("v1/chat/completions", [1], "Bad input: the body is not a JSON object"),
        ("v1/chat/completions", {"messages": []}, "Bad input: model is required"),
        ("v1/chat/completions", {"model": "openai/gpt-5"}, "Bad input: messages is required"),
        ("run", {"model": "openai/gpt-5", "input": "hi"}, "Bad input: input must be an object"),
        ("run", {"model": "openai/gpt-5"}, "Bad input: input must be an object"),
        (
            "v1/messages",
            {"model": "anthropic/claude-sonnet-4-5", "messages": SDK_MESSAGES},
            "Bad input: max_tokens is required",
        ),
        (
            "v1/messages",
            {"model": "anthropic/claude-sonnet-4-5", "max_tokens": 8},
            "Bad input: messages is required",
        ),
    ],
)
def test_rest_bad_input_is_5006(gw, client, route, body, message):
    v4_error(client.post(rest(gw, route), json=body, headers=REST_AUTH), 400, 5006, message)


def test_rest_invalid_json_is_5006(gw, client):
    headers = {**REST_AUTH, "content-type": "application/json"}
    r = client.post(rest(gw, "v1/responses"), content=b'{"model": ', headers=headers)
    v4_error(r, 400, 5006, "Bad input: the body is not a JSON object")


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, 5006, "Bad input"),
        (401, 10000, "Authentication error"),
        (402, 2021, "Insufficient balance"),
        (403, 10000, "Authentication error"),
        (404, 7000, "No route for that URI"),
        (429, 2003, "Rate limited"),
        (413, 5006, "Stand-in error 413"),
        (500, 2005, "Failed to get response from provider"),
        (503, 2005, "Failed to get response from provider"),
    ],
)
def test_rest_status_override_is_a_v4_error(gw, client, status, code, message):
    headers = {**REST_AUTH, "x-standin-status": str(status), "x-standin-retry-after": "4"}
    r = client.post(rest(gw, "v1/messages"), json=MESSAGES, headers=headers)  # bare model: status wins
    v4_error(r, status, code, message)
    assert r.headers["retry-after"] == "4"


def test_rest_status_override_comes_after_auth(gw, client):
    r = client.post(rest(gw, "run"), json={}, headers={"x-standin-status": "429"})
    v4_error(r, 401, 10000, "Authentication error")


def test_rest_ai_run_stream(gw, client):
    body = {"model": "openai/gpt-5", "input": {"messages": SDK_MESSAGES, "stream": True}}
    r = client.post(rest(gw, "run"), json=body, headers=REST_AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    assert [e["response"] for e in events[:5]] == ["Hello", " from", " the", " stand-in", " gateway."]
    assert all(set(e) == {"response"} for e in events[:5])
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    assert events[5] == {"response": "", "usage": usage}
    assert len(events) == 7


def test_rest_ai_run_stream_test_headers(gw, client):
    body = {"model": "@cf/meta/llama-3.1-8b-instruct", "input": {"prompt": "hi", "stream": True}}
    headers = {
        **REST_AUTH,
        "cf-aig-gateway-id": "test-gw",
        "x-standin-events": "3",
        "x-standin-event-bytes": "200",
        "x-standin-encoding": "gzip",
    }
    with client.stream("POST", rest(gw, "run"), json=body, headers=headers) as r:
        assert r.headers["content-encoding"] == "gzip"
        text = gzip.decompress(b"".join(r.iter_raw())).decode()
    blocks = [b + "\n\n" for b in text.split("\n\n")[:-1]]
    assert [len(b.encode()) for b in blocks[:3]] == [200] * 3
    events = sse_events(text)
    assert events[3]["usage"]["completion_tokens"] == 3 and events[-1] == "[DONE]"


def test_rest_test_control_headers(gw, client):
    url = rest(gw, "v1/chat/completions")
    echoed = client.post(url, json=REST_CHAT, headers={"x-standin-echo": "1"}).json()
    assert echoed["path"] == f"{gw.rest_prefix}/ai/v1/chat/completions"
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(url, json=REST_CHAT, headers={**REST_AUTH, "x-standin-close": "before-headers"})
    received = b""
    with pytest.raises(httpx.ReadError):
        body = {**REST_CHAT, "stream": True}
        with client.stream("POST", url, json=body, headers={**REST_AUTH, "x-standin-reset-after": "2"}) as r:
            for chunk in r.iter_raw():
                received += chunk
    assert len(sse_events(received.decode())) == 2
    t0 = time.monotonic()
    r = client.post(url, json=REST_CHAT, headers={**REST_AUTH, "x-standin-delay-ms": "80"})
    assert r.status_code == 200 and time.monotonic() - t0 >= 0.08 * 0.9


def test_rest_held_json_answer(gw, client):
    result = {}
    body = {"model": "openai/gpt-5", "input": {"prompt": "hi"}}
    headers = {**REST_AUTH, "x-standin-hold": "rest-run"}
    t = threading.Thread(
        target=lambda: result.update(r=client.post(rest(gw, "run"), json=body, headers=headers))
    )
    t.start()
    assert gw.wait_held("rest-run", 3)
    assert "r" not in result
    gw.release("rest-run")
    t.join(5)
    assert result["r"].json()["success"] is True


def test_rest_with_the_sdks(gw):
    tools_chat = [{"type": "function", "function": {"name": "Bash", "parameters": BASH_SCHEMA}}]
    with openai.OpenAI(base_url=gw.rest_openai_url, api_key=STANDIN_API_TOKEN, max_retries=0) as oai:
        stream = oai.chat.completions.create(
            model="openai/gpt-5", messages=SDK_MESSAGES, tools=tools_chat, stream=True
        )
        pieces = [
            c.choices[0].delta.tool_calls[0].function.arguments
            for c in stream
            if c.choices[0].delta.tool_calls
        ]
        assert json.loads("".join(pieces)) == {"command": "echo standin"}
        tools_responses = [{"type": "function", "name": "Bash", "parameters": BASH_SCHEMA}]
        created = oai.responses.create(model="openai/gpt-5", input="run it", tools=tools_responses)
        assert [(i.type, i.name, json.loads(i.arguments)) for i in created.output] == [
            ("function_call", "Bash", {"command": "echo standin"})
        ]
        with pytest.raises(openai.BadRequestError):
            oai.responses.create(model="gpt-5", input="hi")  # bare name
    with anthropic.Anthropic(
        base_url=gw.rest_anthropic_url, auth_token=STANDIN_API_TOKEN, max_retries=0
    ) as ant:
        tools_anthropic = [{"name": "Bash", "input_schema": BASH_SCHEMA}]
        with ant.messages.stream(
            model="anthropic/claude-sonnet-4-5", max_tokens=64, messages=SDK_MESSAGES, tools=tools_anthropic
        ) as stream:
            final = stream.get_final_message()
        assert [(b.type, b.name, b.input) for b in final.content] == [
            ("tool_use", "Bash", {"command": "echo standin"})
        ]
        with pytest.raises(anthropic.NotFoundError):
            ant.messages.count_tokens(model="anthropic/claude-sonnet-4-5", messages=SDK_MESSAGES)
    paths = [rec.path.removeprefix(gw.rest_prefix) for rec in gw.requests]
    assert paths == [
        "/ai/v1/chat/completions",
        "/ai/v1/responses",
        "/ai/v1/responses",
        "/ai/v1/messages",
        "/ai/v1/messages/count_tokens",
    ]
    assert {rec.authorization for rec in gw.requests} == {f"Bearer {STANDIN_API_TOKEN}"}


# ---- the model in an agent loop: tool calls, then a final answer ---------------

# Shaped like Claude Code's tools: Task first (what the stand-in calls without x-standin-tool).
AGENT_TOOLS = [
    (
        "Task",
        {
            "type": "object",
            "properties": {
                "description": {"type": "string"},
                "prompt": {"type": "string"},
                "subagent_type": {"type": "string", "enum": ["general-purpose", "Explore"]},
            },
            "required": ["description", "prompt", "subagent_type"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    ),
    ("Bash", BASH_SCHEMA),
    (
        "Read",
        {
            "type": "object",
            "properties": {"file_path": {"type": "string"}, "offset": {"type": "integer"}},
            "required": ["file_path"],
        },
    ),
    (
        "Everything",
        {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "count": {"type": "integer"},
                "ratio": {"type": "number"},
                "force": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "mode": {"enum": ["fast", "slow"]},
                "nullable": {"type": ["null", "string"]},
                "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                "options": {
                    "type": "object",
                    "properties": {"depth": {"type": "integer"}, "label": {"type": "string"}},
                    "required": ["depth", "label"],
                },
                "optional": {"type": "string"},
            },
            "required": ["path", "count", "ratio", "force", "tags", "mode", "nullable", "either", "options"],
        },
    ),
    ("NoArgs", {"type": "object", "properties": {}, "additionalProperties": False}),
]
EVERYTHING_ARGS = {
    "path": "README.md",
    "count": 1,
    "ratio": 1,
    "force": True,
    "tags": [],
    "mode": "fast",
    "nullable": "example",
    "either": 1,
    "options": {"depth": 1, "label": "example"},
}
FORMATS = ["chat", "responses", "messages"]


def tools_for(fmt: str, tools: list[tuple[str, dict]]) -> list[dict]:
    """The (name, schema) tools in a format's request shape."""
    if fmt == "chat":
        return [
            {"type": "function", "function": {"name": n, "description": "d", "parameters": s}}
            for n, s in tools
        ]
    if fmt == "responses":
        return [{"type": "function", "name": n, "description": "d", "parameters": s} for n, s in tools]
    return [{"name": n, "description": "d", "input_schema": s} for n, s in tools]


def conversation(fmt: str, tool_output: str | None = None) -> dict:
    """A user prompt; with `tool_output`, then the model's Bash call and that tool result."""
    prompt = {"role": "user", "content": "run it"}
    if tool_output is None:
        return {"input": [prompt]} if fmt == "responses" else {"messages": [prompt]}
    args = {"command": "echo standin"}
    if fmt == "chat":
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "Bash", "arguments": json.dumps(args)},
        }
        return {
            "messages": [
                prompt,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": tool_output},
            ]
        }
    if fmt == "responses":
        return {
            "input": [
                prompt,
                {"type": "function_call", "call_id": "call_1", "name": "Bash", "arguments": json.dumps(args)},
                {"type": "function_call_output", "call_id": "call_1", "output": tool_output},
            ]
        }
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "text", "text": tool_output}],
    }
    return {
        "messages": [
            prompt,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": args}],
            },
            {
                "role": "user",
                "content": [result, {"type": "text", "text": "<system-reminder>x</system-reminder>"}],
            },
        ]
    }


def ask(
    client: httpx.Client,
    gw: StandinGateway,
    fmt: str,
    body: dict,
    headers: dict | None = None,
    rest_api: bool = False,
    stream: bool = False,
) -> httpx.Response:
    """POST a format's request on its gateway route (compat, openai, anthropic) or REST route."""
    if fmt == "chat":
        url = rest(gw, "v1/chat/completions") if rest_api else compat(gw, "chat/completions")
        model = "openai/gpt-5"
    elif fmt == "responses":
        url = rest(gw, "v1/responses") if rest_api else responses_url(gw)
        model = "openai/gpt-5" if rest_api else "gpt-5"
    else:
        url = rest(gw, "v1/messages") if rest_api else messages_url(gw)
        model = "anthropic/claude-sonnet-4-5" if rest_api else "claude-sonnet-4-5"
    base = REST_AUTH if rest_api else ANTHROPIC_HEADERS
    full = {"model": model, "max_tokens": 64, **body, "stream": stream}
    return client.post(url, json=full, headers={**base, **(headers or {})})


def answer_of(fmt: str, r: httpx.Response) -> tuple[str | None, Any]:
    """(tool name, arguments as parsed JSON) of a call, or (None, text) of a text answer.

    Streams are reassembled from their deltas, checking that the streamed arguments (pieces of
    JSON text) join to exactly what the final event or object carries.
    """
    assert r.status_code == 200, r.text
    streamed = r.headers["content-type"].startswith("text/event-stream")
    if fmt == "chat" and not streamed:
        message = r.json()["choices"][0]["message"]
        if message.get("tool_calls"):
            (call,) = message["tool_calls"]
            return call["function"]["name"], json.loads(call["function"]["arguments"])
        return None, message["content"]
    if fmt == "chat":
        chunks = [e for e in sse_events(r.text) if e != "[DONE]" and e["choices"]]
        deltas = [c["choices"][0]["delta"] for c in chunks]
        if "tool_calls" in deltas[0]:
            name = deltas[0]["tool_calls"][0]["function"]["name"]
            pieces = [d["tool_calls"][0]["function"]["arguments"] for d in deltas if "tool_calls" in d]
            assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
            return name, json.loads("".join(pieces))
        return None, "".join(d.get("content") or "" for d in deltas)
    if fmt == "responses":
        if streamed:
            events = named_events(r.text)
            response = events[-1][1]["response"]
            pieces = [d["delta"] for name, d in events if name == "response.function_call_arguments.delta"]
            texts = [d["delta"] for name, d in events if name == "response.output_text.delta"]
        else:
            response = r.json()
            pieces = texts = None
        (item,) = [i for i in response["output"] if i["type"] != "reasoning"]
        if item["type"] == "function_call":
            assert pieces is None or "".join(pieces) == item["arguments"]
            return item["name"], json.loads(item["arguments"])
        text = item["content"][0]["text"]
        assert texts is None or "".join(texts) == text
        return None, text
    if not streamed:
        (block,) = [b for b in r.json()["content"] if b["type"] != "thinking"]
        if block["type"] == "tool_use":
            return block["name"], block["input"]
        return None, block["text"]
    events = named_events(r.text)
    (start,) = [d["content_block"] for name, d in events if name == "content_block_start"]
    deltas = [d["delta"] for name, d in events if name == "content_block_delta"]
    if start["type"] == "tool_use":
        assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
        return start["name"], json.loads("".join(d["partial_json"] for d in deltas))
    return None, "".join(d["text"] for d in deltas)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("rest_api", [False, True], ids=["gateway", "rest"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_agent_loop_calls_then_answers(gw, client, fmt, rest_api, stream):
    tools = {"tools": tools_for(fmt, AGENT_TOOLS)}
    first = ask(client, gw, fmt, {**conversation(fmt), **tools}, rest_api=rest_api, stream=stream)
    task_args = {"description": "example", "prompt": "example", "subagent_type": "general-purpose"}
    assert answer_of(fmt, first) == ("Task", task_args)  # the first tool, its schema filled in

    header = {"x-standin-tool": "Bash"}
    chosen = ask(client, gw, fmt, {**conversation(fmt), **tools}, header, rest_api, stream)
    assert answer_of(fmt, chosen) == ("Bash", {"command": "echo standin"})

    after = {**conversation(fmt, tool_output="standin\n"), **tools}
    final = ask(client, gw, fmt, after, header, rest_api, stream)
    assert answer_of(fmt, final) == (None, "Done: the tool returned 8 characters.")


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_after_tool_result_whatever_the_headers(gw, client, fmt):
    body = {**conversation(fmt, tool_output="x" * 1234), "tools": tools_for(fmt, AGENT_TOOLS)}
    headers = {"x-standin-tool-call": "1", "x-standin-tool": "Read", "x-standin-tool-args": '{"a": 1}'}
    final = ask(client, gw, fmt, body, headers, stream=True)
    assert answer_of(fmt, final) == (None, standin_gateway.TOOL_RESULT_REPLY.format(1234))
    assert answer_of(fmt, ask(client, gw, fmt, body)) == (None, "Done: the tool returned 1234 characters.")


@pytest.mark.parametrize("fmt", FORMATS)
def test_one_tool_round_per_conversation(gw, client, fmt):
    """After the final answer a new user message (e.g. Claude Code's background-task notice) gets text."""
    body = conversation(fmt, tool_output="standin")
    key = "input" if fmt == "responses" else "messages"
    body[key] += [
        {"role": "assistant", "content": "Done: the tool returned 7 characters."},
        {"role": "user", "content": "A background task finished."},
    ]
    r = ask(client, gw, fmt, {**body, "tools": tools_for(fmt, AGENT_TOOLS)}, {"x-standin-tool": "Bash"})
    assert answer_of(fmt, r) == (None, REPLY_TEXT)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_call_arguments_from_the_schema(gw, client, fmt, stream):
    body = {**conversation(fmt), "tools": tools_for(fmt, AGENT_TOOLS)}
    expected = {
        "Read": {"file_path": "README.md"},
        "Everything": EVERYTHING_ARGS,
        "NoArgs": {},  # requires nothing and allows nothing else
    }
    for name, args in expected.items():
        r = ask(client, gw, fmt, body, {"x-standin-tool": name}, stream=stream)
        assert answer_of(fmt, r) == (name, args)


@pytest.mark.parametrize("fmt", FORMATS)
def test_schema_requiring_nothing_gets_the_classic_arguments(gw, client, fmt):
    for schema in ({}, {"type": "object"}, {"type": "object", "properties": {"city": {"type": "string"}}}):
        body = {**conversation(fmt), "tools": tools_for(fmt, [("lookup_city", schema)])}
        assert answer_of(fmt, ask(client, gw, fmt, body)) == ("lookup_city", json.loads(TOOL_ARGUMENTS))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_tool_args_header_overrides_the_arguments(gw, client, fmt, stream):
    body = {**conversation(fmt), "tools": tools_for(fmt, AGENT_TOOLS)}
    args = {"command": "ls -la", "timeout": 5, "note": "caf\u00e9"}
    headers = {"x-standin-tool": "Bash", "x-standin-tool-args": json.dumps(args)}
    assert answer_of(fmt, ask(client, gw, fmt, body, headers, stream=stream)) == ("Bash", args)


@pytest.mark.parametrize("rest_api", [False, True], ids=["gateway", "rest"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_tool_args_header_is_a_400(gw, client, fmt, rest_api):
    body = {**conversation(fmt), "tools": tools_for(fmt, AGENT_TOOLS)}
    r = ask(client, gw, fmt, body, {"x-standin-tool-args": "[1]"}, rest_api)
    message = "x-standin-tool-args is not a JSON object: [1]"
    if rest_api:
        v4_error(r, 400, 5006, message)
    elif fmt == "messages":
        anthropic_error(r, 400, "invalid_request_error", message)
    else:
        openai_error(r, 400, message)


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_tool_header_answers_text(gw, client, fmt):
    body = {**conversation(fmt), "tools": tools_for(fmt, AGENT_TOOLS)}
    r = ask(client, gw, fmt, body, {"x-standin-tool": "NoSuchTool", "x-standin-tool-call": "1"})
    assert answer_of(fmt, r) == (None, REPLY_TEXT)
    r = ask(client, gw, fmt, conversation(fmt), {"x-standin-tool": "Bash"})  # no tools at all
    assert answer_of(fmt, r) == (None, REPLY_TEXT)


def test_only_function_tools_are_called(gw, client):
    shell = {
        "type": "object",
        "properties": {
            "command": {"type": "array", "items": {"type": "string"}},
            "workdir": {"type": "string"},
        },
        "required": ["command"],
    }
    codex_tools = [
        {"type": "local_shell"},
        {"type": "web_search"},
        {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
        {"type": "namespace", "name": "multi_agent_v1"},
        {"type": "function", "name": "shell", "parameters": shell},
    ]
    r = ask(client, gw, "responses", {**conversation("responses"), "tools": codex_tools}, stream=True)
    assert answer_of("responses", r) == ("shell", {"command": ["echo", "standin"]})
    r = ask(client, gw, "responses", {**conversation("responses"), "tools": codex_tools[:4]})
    assert answer_of("responses", r) == (None, REPLY_TEXT)

    server_tools = [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"type": "bash_20250124", "name": "bash"},
    ]
    body = {**conversation("messages"), "tools": server_tools}
    assert answer_of("messages", ask(client, gw, "messages", body)) == (None, REPLY_TEXT)
    body["tools"] = [*server_tools, *tools_for("messages", [("Bash", BASH_SCHEMA)])]
    assert answer_of("messages", ask(client, gw, "messages", body)) == ("Bash", {"command": "echo standin"})

    chat_tools = [
        {"type": "custom", "custom": {"name": "grammar_tool"}},
        *tools_for("chat", [("Bash", BASH_SCHEMA)]),
    ]
    body = {**conversation("chat"), "tools": chat_tools}
    assert answer_of("chat", ask(client, gw, "chat", body)) == ("Bash", {"command": "echo standin"})


def test_tool_call_header_without_callable_tools_calls_get_weather(gw, client):
    body = {**conversation("responses"), "tools": [{"type": "web_search"}]}
    r = ask(
        client, gw, "responses", body, {"x-standin-tool-call": "1", "x-standin-tool-args": '{"city": "Oslo"}'}
    )
    assert answer_of("responses", r) == ("get_weather", {"city": "Oslo"})


def test_final_answer_stream_honours_event_headers(gw, client):
    body = {**conversation("chat", tool_output="abc"), "tools": tools_for("chat", AGENT_TOOLS)}
    r = ask(client, gw, "chat", body, {"x-standin-events": "2"}, stream=True)
    assert answer_of("chat", r) == (None, "Done: the")


def test_tool_call_arguments_stream_in_pieces(gw, client):
    body = {**conversation("messages"), "tools": tools_for("messages", AGENT_TOOLS)}
    r = ask(client, gw, "messages", body, {"x-standin-tool": "Everything"}, stream=True)
    pieces = [d["delta"]["partial_json"] for name, d in named_events(r.text) if name == "content_block_delta"]
    assert pieces[0] == "" and all(len(p) == 5 for p in pieces[1:-1]) and len(pieces) > 10
    assert json.loads("".join(pieces)) == EVERYTHING_ARGS


# ---- transport ---------------------------------------------------------------


def test_keep_alive_reuses_connection(gw):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
    for _ in range(3):
        conn.request("POST", f"{gw.compat_prefix}/chat/completions", body=json.dumps(CHAT))
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["model"] == CHAT["model"]
    sock = conn.sock
    conn.request("GET", f"{gw.compat_prefix}/models")
    conn.getresponse().read()
    assert conn.sock is sock
    conn.close()


def test_250_concurrent_connections(gw):
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=10) for _ in range(250)]
    req = f"GET {gw.compat_prefix}/models HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    try:
        for s in socks:
            s.sendall(req)

        def read(s):
            resp = http.client.HTTPResponse(s)
            resp.begin()
            resp.read()
            return resp.status

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            assert list(pool.map(read, socks)) == [200] * 250
    finally:
        for s in socks:
            s.close()
    assert len(gw.requests) == 250


def test_stop_closes_keep_alive_connections():
    gateway = StandinGateway().start()
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    conn.request("GET", f"{gateway.compat_prefix}/models")
    conn.getresponse().read()
    gateway.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("GET", f"{gateway.compat_prefix}/models")
        conn.getresponse()
    conn.close()


def test_cli_serves_until_sigterm():
    script = Path(__file__).with_name("standin_gateway.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--gateway-id", "cli-gw", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        pattern = r"stand-in gateway listening on (http://127\.0\.0\.1:\d+) \(compat prefix (\S+)\)\n"
        m = re.fullmatch(pattern, line)
        assert m, line
        assert m.group(2) == f"/v1/{ACCOUNT}/cli-gw/compat"
        r = httpx.get(m.group(1) + m.group(2) + "/models", timeout=5)
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
