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

import httpx
import pytest

from tests.standin_gateway import REPLY_TEXT, StandinGateway

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


@pytest.mark.parametrize("sub", ["responses", "moderations", "v1/chat/completions", "chat%2Fcompletions"])
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
    args = ""
    for c in chunks[1:-1]:
        (call,) = c["choices"][0]["delta"]["tool_calls"]
        assert set(call) == {"index", "function"} and call["index"] == 0
        args += call["function"]["arguments"]
    assert len(chunks) - 2 >= 3
    assert json.loads(args) == {"city": "Paris"}
    assert args == '{"city": "Paris"}'
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
