"""Reliability: upstream failures, hostile input, load and shutdown, through a real mitmdump.

Why: a proxy that crashes, hangs, or forwards what it should refuse takes every
client with it. Each test breaks something on purpose and then checks that the
same proxy process is still alive and serves the next request normally.

Failures the stand-in cannot script (accept-and-close, garbage answers, seeing
exactly which bytes were forwarded) use ``harness.RawUpstream``, a tiny TCP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from cfgw import config
from cfgw.routes import map_target
from tests.harness import (
    ACCOUNT_ID,
    CF_ENV,
    GATEWAY_ID,
    ROOT,
    RawUpstream,
    clean_env,
    free_port,
    raw_exchange,
    read_until_end,
    split_answer,
    start_proxy,
    wait_for_port,
)
from tests.standin_gateway import REPLY_TEXT, REPLY_WORDS, StandinGateway

GATEWAY_PREFIX = f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}"
PREFIX = f"{GATEWAY_PREFIX}/compat"
# Where each route's requests must stay, written out here rather than taken from the code under test.
ROUTE_PREFIXES = {
    "compat": PREFIX,
    "anthropic": f"{GATEWAY_PREFIX}/anthropic/v1/messages",
    "openai": f"{GATEWAY_PREFIX}/openai/responses",
}
CHAT: dict[str, Any] = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
CANNED = b'{"ok":true}'


# ---- helpers -----------------------------------------------------------------------------


def assert_still_serving(proxy, gw: StandinGateway) -> None:
    """The same proxy process is alive, logged no traceback, and answers a normal request."""
    assert proxy.proc.poll() is None, proxy.output()
    r = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == REPLY_TEXT
    assert gw.requests[-1].path == f"{PREFIX}/chat/completions"
    assert "Traceback" not in proxy.output()


def addon_tracebacks(output: str) -> list[str]:
    """Tracebacks through the addon's code.

    Why not any traceback: on Python 3.11, asyncio logs a CancelledError from mitmproxy's own
    connection tasks when it shuts down with connections open; that is not the addon's.
    """
    blocks = [block.split("\n[", 1)[0] for block in output.split("Traceback (most recent call last):")[1:]]
    return [block for block in blocks if "cfgw" in block or "cf_gateway" in block]


# Overlong UTF-8 for '.', '/' and '\\', which lenient decoders have turned into the real thing.
OVERLONG = {b"\xc0\xae": b".", b"\xc0\xaf": b"/", b"\xc1\x9c": b"\\"}


def stays_under_prefix(path: str, prefix: str) -> bool:
    """Under the prefix for any lenient reader: one that percent-decodes (even repeatedly and
    overlong UTF-8), takes '\\' for '/', drops ';parameters' from segments and then normalises."""
    raw = path.encode()
    for _ in range(3):
        raw = urllib.parse.unquote_to_bytes(raw)
        for overlong, char in OVERLONG.items():
            raw = raw.replace(overlong, char)
    text = raw.decode("latin-1").replace("\\", "/")
    text = "/".join(segment.partition(";")[0] for segment in text.split("/"))
    normal = posixpath.normpath(text)
    return normal == prefix or normal.startswith(prefix + "/")


def read_head(conn: socket.socket, limit: int = 64 << 20) -> bytes:
    """Read up to the end of a request head (or EOF / limit)."""
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < limit:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
    return buf


class Behaviours:
    """What the upstreams of these tests do with each connection (harness.RawUpstream behaviours)."""

    @staticmethod
    def close_at_once(server: RawUpstream, conn: socket.socket) -> None:
        conn.close()

    @staticmethod
    def garbage(server: RawUpstream, conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\nthis is not HTTP\r\n\r\n")

    @staticmethod
    def capture(server: RawUpstream, conn: socket.socket) -> None:
        head = read_head(conn)
        server.heads.append(head)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(CANNED), CANNED)
        )


@pytest.fixture(scope="module")
def capture_upstream() -> Iterator[RawUpstream]:
    server = RawUpstream(Behaviours.capture)
    yield server
    server.close()


@pytest.fixture(scope="module")
def capture_proxy(capture_upstream, tmp_path_factory):
    """A proxy in front of the capturing upstream: shows exactly what would have been forwarded."""
    p = start_proxy(capture_upstream.url, workdir=tmp_path_factory.mktemp("capture-proxy"))
    yield p
    p.stop()


def assert_capture_proxy_serving(proxy, upstream: RawUpstream) -> None:
    assert proxy.proc.poll() is None, proxy.output()
    before = len(upstream.heads)
    r = httpx.get(proxy.url + "/v1/models", timeout=10)
    assert (r.status_code, r.content) == (200, CANNED)
    assert upstream.heads[before].startswith(f"GET {PREFIX}/models HTTP/1.1\r\n".encode())
    assert "Traceback" not in proxy.output()


# ---- upstream failures ---------------------------------------------------------------------


def test_upstream_refusing_connections_gives_502_then_recovers(make_proxy, gw):
    """Connection refused -> 502; once something listens on that port, the same proxy uses it."""
    port = free_port()
    p = make_proxy(upstream=f"http://127.0.0.1:{port}")
    for _ in range(2):  # twice: the first failure leaves nothing stuck behind
        r = httpx.post(p.url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert r.status_code == 502
    assert p.proc.poll() is None
    late = StandinGateway(port=port).start()
    try:
        r = httpx.post(p.url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == REPLY_TEXT
        assert [req.path for req in late.requests] == [f"{PREFIX}/chat/completions"]
    finally:
        late.stop()
    assert "Traceback" not in p.output()


@pytest.mark.parametrize("behaviour", [Behaviours.close_at_once, Behaviours.garbage])
def test_raw_upstream_misbehaving_gives_502_then_recovers(capture_proxy, capture_upstream, behaviour):
    """Upstream accepts and closes without reading, or answers something that is not HTTP."""
    capture_upstream.behaviour = behaviour
    try:
        r = httpx.post(capture_proxy.url + "/v1/chat/completions", json=CHAT, timeout=10)
        assert r.status_code == 502
    finally:
        capture_upstream.behaviour = Behaviours.capture
    assert_capture_proxy_serving(capture_proxy, capture_upstream)


@pytest.mark.parametrize("close", ["before-headers", "mid-body"])
def test_upstream_closing_gives_502_and_next_request_works(proxy, gw, close):
    """A buffered (JSON) answer cut short must not reach the client as if complete."""
    r = httpx.post(
        proxy.url + "/v1/chat/completions", json=CHAT, headers={"x-standin-close": close}, timeout=10
    )
    assert r.status_code == 502
    assert gw.requests[0].path == f"{PREFIX}/chat/completions"
    assert_still_serving(proxy, gw)


@pytest.mark.parametrize("reset_after", [0, 2])
def test_stream_reset_mid_body_is_visible_to_the_client(proxy, gw, reset_after):
    """Headers already went out, so no 502 is possible: the client must see a cut stream, not an end."""
    seen = []
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        with httpx.stream(
            "POST",
            proxy.url + "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"x-standin-reset-after": str(reset_after)},
            timeout=10,
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                seen.append(line)
    assert len([line for line in seen if line.startswith("data: ")]) == reset_after
    assert "data: [DONE]" not in seen
    assert_still_serving(proxy, gw)


def test_upstream_never_answering_client_gives_up(proxy, gw):
    """The upstream hangs far longer than the client waits; the proxy must not be stuck with it."""
    body = json.dumps(CHAT).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"x-standin-hang: 30\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        for _ in range(200):  # until the upstream holds it (bounded)
            if gw.requests:
                break
            time.sleep(0.05)
        assert gw.requests[0].header("x-standin-hang") == "30"
        s.settimeout(0.5)  # the client's patience: far shorter than the hang
        with pytest.raises(TimeoutError):
            s.recv(65536)
    assert_still_serving(proxy, gw)


# ---- bad input -------------------------------------------------------------------------------

# Pieces that have broken path handling somewhere, by kind. No ASCII whitespace: that
# changes how the request line splits, which test_malformed_request_lines covers.
SAFE_PIECES = b"v1 chat completions models compat messages responses a-b_c %41 %20 ~ @x a=b".split()
# Each of these tries to leave the prefix on its own, past one particular check.
TRAVERSALS = rb"""
    .. ..; %2e%2e %2E%2E .%2e %2e. %c0%ae%c0%ae %252e%252e %25%32%65%25%32%65
    %2f.. ..%2f.. %5c.. \.. ..\ ?/../.. #/../..
""".split()
ODD_PIECES = [b"", *b". ... .x %2e % %2 %zz %00 %0a %7f %2f %25 * :".split()]
RAW_PIECES = [
    b"\x00",
    b"\x01",
    b"\x1c",
    b"\x7f",
    b"\x80",
    "é".encode(),
    b"http://evil.example",
    b"//evil.example",
]
DANGER_KINDS = [TRAVERSALS, TRAVERSALS, ODD_PIECES, RAW_PIECES]
TARGET_STARTS = [b"/", b"/v1/", b"/v1", b"*", b"http://evil.example/", b"http://evil.example/v1/"]


@st.composite
def targets(draw) -> bytes:
    """Mostly harmless segments with zero to two dangerous pieces, so each check must do its job alone."""
    parts = draw(st.lists(st.sampled_from(SAFE_PIECES), max_size=4))
    for _ in range(draw(st.sampled_from([0, 1, 1, 2]))):
        piece = draw(st.sampled_from(draw(st.sampled_from(DANGER_KINDS))))
        at = draw(st.integers(0, len(parts)))
        if at and draw(st.booleans()):
            parts[at - 1] += piece  # glued onto a segment
        else:
            parts.insert(at, piece)  # a segment of its own
    return draw(st.sampled_from(TARGET_STARTS)) + b"/".join(parts)


def origin_form(target: bytes) -> bytes | None:
    """The path part of an origin- or absolute-form target (None for anything else)."""
    if target.startswith(b"/"):
        return target
    if target.startswith(b"http://"):
        return b"/" + target[len(b"http://") :].partition(b"/")[2]
    return None


def with_each_traversal(test):
    """Every traversal alone, as an explicit example: random draws may miss one."""
    for piece in TRAVERSALS:
        test = example(target=b"/v1/" + piece)(test)
    return test


@with_each_traversal
@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(target=targets())
def test_path_mapping_property_through_the_proxy(proxy, gateway, target):
    """Any target: a JSON 400 and nothing forwarded, or forwarded exactly and under its route's prefix."""
    gateway.clear()
    answer = raw_exchange(
        proxy.port,
        b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nx-standin-echo: 1\r\nConnection: close\r\n\r\n",
    )
    status, head, body = split_answer(answer)
    note(f"answer: {answer[:300]!r}")
    recorded = list(gateway.requests)
    if status == 400 and b"application/json" in head.lower():
        error = json.loads(body)["error"]
        assert error["code"] == "invalid_path" and error["type"] == "invalid_request_error"
        assert error["message"].startswith("Refused request path")
        assert recorded == []
        event("refused by the addon")
        return
    path = origin_form(target)
    if status == 400 and b"Bad HTTP request line" in body:
        # mitmproxy's own parser refuses some absolute-form targets before the addon runs.
        assert not target.startswith(b"/")
        assert recorded == []
        event("refused by mitmproxy")
        return
    assert status == 200, answer[:300]
    (rec,) = recorded
    assert path is not None and path.isascii()
    destination, expected = map_target(path.decode(), GATEWAY_PREFIX)
    prefix = ROUTE_PREFIXES[destination.route]
    assert rec.path == prefix or rec.path.startswith(prefix + "/")
    assert stays_under_prefix(rec.path, prefix)
    expected_path, _, expected_query = expected.partition("?")
    assert (rec.path, rec.query) == (expected_path, expected_query)
    assert json.loads(body)["path"] == rec.path
    event(f"forwarded to {destination.route}")


def test_path_property_left_the_proxy_healthy(proxy, gw):
    """Runs after the property test on the same module-scoped proxy."""
    assert_still_serving(proxy, gw)


def test_oversized_header_never_succeeds_and_proxy_survives(proxy, gw):
    """200 KB of header: an error or a close, never a success (mitmproxy has no limit; the gateway has)."""
    answer = raw_exchange(
        proxy.port,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\nConnection: close\r\n\r\n",
    )
    status, _, _ = split_answer(answer)
    # 431 from the stand-in today; a 502 is fine too (the upstream may reset while reading it).
    assert status == 0 or 400 <= status < 500 or status == 502, answer[:200]
    assert gw.requests == []
    assert_still_serving(proxy, gw)


def test_oversized_header_is_not_forwarded(capture_proxy, capture_upstream):
    """mitmproxy has no header size limit; the addon refuses heads over Cloudflare's 128 KiB with 431."""
    before = len(capture_upstream.heads)
    answer = raw_exchange(
        capture_proxy.port,
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\nConnection: close\r\n\r\n",
    )
    status, _, body = split_answer(answer)
    assert status == 431 and json.loads(body)["error"]["code"] == "request_headers_too_large"
    assert_capture_proxy_serving(capture_proxy, capture_upstream)
    assert len(capture_upstream.heads) == before + 1  # only the check request above


@pytest.mark.parametrize(
    ("request_line", "half_close"),
    [
        pytest.param(b"\x00\x01\x02garbage\xff\xfe", False, id="garbage-bytes"),
        pytest.param(b"\x00\x01\x02garbage\xff\xfe", True, id="garbage-bytes-eof"),
        pytest.param(b"GET /v1/models", False, id="missing-version"),
        pytest.param(b"GET /v1/models HTTP/1.1 extra", False, id="extra-word"),
        pytest.param(b"GET  HTTP/1.1", False, id="missing-target"),
        pytest.param(b"GET /v1/models FTP/1.1", False, id="not-http"),
        pytest.param(b"GET /v1/mo\x0bdels HTTP/1.1", False, id="vertical-tab-in-target"),
        pytest.param(b"GET /v1/models\x00 HTTP/1.1", False, id="nul-in-target"),
        pytest.param(
            b"G(T /v1/models HTTP/1.1",
            False,
            id="bad-method-char",
        ),
        pytest.param(
            b"G\x00T /v1/models HTTP/1.1",
            False,
            id="nul-in-method",
        ),
        pytest.param(
            b"GET /v1/models HTTP/9.9",
            False,
            id="unknown-version",
        ),
    ],
)
def test_malformed_request_lines_are_refused_not_forwarded(
    capture_proxy, capture_upstream, request_line, half_close
):
    """A request line that is not HTTP/1 gets a 4xx (505: unknown version) or a close; nothing forwarded."""
    before = len(capture_upstream.heads)
    answer = raw_exchange(
        capture_proxy.port, request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n", half_close
    )
    status, _, _ = split_answer(answer)
    assert status == 0 or 400 <= status < 500 or status == 505, answer[:200]
    assert capture_upstream.heads[before:] == []
    assert_capture_proxy_serving(capture_proxy, capture_upstream)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET /v1/models\r\n", id="http09-line-only"),
        pytest.param(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n", id="unfinished-head"),
        pytest.param(b"\r\n\r\n\r\n", id="blank-lines"),
    ],
)
def test_incomplete_request_heads_end_quietly(capture_proxy, capture_upstream, data):
    """A client that sends part of a head and then nothing more: closed, nothing forwarded."""
    before = len(capture_upstream.heads)
    answer = raw_exchange(capture_proxy.port, data, half_close=True)
    status, _, _ = split_answer(answer)
    assert status == 0 or 400 <= status < 500, answer[:200]
    assert capture_upstream.heads[before:] == []
    assert_capture_proxy_serving(capture_proxy, capture_upstream)


def test_invalid_json_chat_gets_the_providers_400_passed_through(proxy, gw):
    """The proxy does not judge bodies: the stand-in gets the exact bytes and its 400 comes back."""
    body = b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"'
    r = httpx.post(
        proxy.url + "/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("We could not parse the JSON body")
    assert r.headers["server"] == "cloudflare"  # the provider's answer, not one the proxy made
    (req,) = gw.requests
    assert req.body == body
    assert_still_serving(proxy, gw)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(b"\xff\xfe\x00{not json", {"content-type": "application/json"}, id="not-utf8"),
        pytest.param(b"[" * 100_000, {"content-type": "application/json"}, id="deep-nesting"),
        pytest.param(
            b'{"model": 1, "model": {"x": []}}', {"content-type": "application/json"}, id="odd-model"
        ),
        pytest.param(b'{"model": "' + b"m" * 300_000 + b'"}', {}, id="huge-model"),
        pytest.param(b"\x1f\x8bnot really gzip", {"content-encoding": "gzip"}, id="bad-gzip"),
        pytest.param(b"\x00" * 2_000_000, {"content-encoding": "br"}, id="bad-brotli-2mb"),
        pytest.param(b"null", {"content-type": "application/json"}, id="json-null"),
    ],
)
def test_odd_bodies_are_forwarded_byte_for_byte(proxy, gw, body, headers):
    r = httpx.post(
        proxy.url + "/v1/chat/completions",
        content=body,
        headers={"x-standin-echo": "1", **headers},
        timeout=30,
    )
    assert r.status_code == 200
    (req,) = gw.requests
    assert req.body == body
    for name, value in headers.items():
        assert req.header(name) == value
    assert_still_serving(proxy, gw)


# ---- load ------------------------------------------------------------------------------------

LOAD = 200


def expected_stream_text(events: int) -> str:
    """What the stand-in streams for x-standin-events: N (its reply words, cycled)."""
    return " ".join(REPLY_WORDS[i % len(REPLY_WORDS)] for i in range(events))


async def _one_load_request(client: httpx.AsyncClient, url: str, i: int, hold: str) -> None:
    words = i % 7 + 1
    body: dict[str, Any] = {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": " ".join(["w"] * words)}],
    }
    headers = {"x-standin-hold": hold}
    if i % 2:
        r = await client.post(url, json=body, headers=headers)
        assert r.status_code == 200, r.text
        done = r.json()
        assert done["choices"][0]["message"]["content"] == REPLY_TEXT
        assert done["usage"]["prompt_tokens"] == words
        return
    events = i % 9 + 1
    body.update(stream=True, stream_options={"include_usage": True})
    headers["x-standin-events"] = str(events)
    r = await client.post(url, json=body, headers=headers)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/event-stream"
    data = [line[len("data: ") :] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == expected_stream_text(events)
    assert chunks[-1]["usage"] == {
        "prompt_tokens": words,
        "completion_tokens": events,
        "total_tokens": words + events,
    }


def test_200_concurrent_requests_all_succeed_exactly(proxy, gw):
    """All 200 are in flight at once (held by the stand-in), then all complete with exact content."""
    hold = "load"

    async def run() -> None:
        limits = httpx.Limits(max_connections=LOAD, max_keepalive_connections=LOAD)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            url = proxy.url + "/v1/chat/completions"
            tasks = [asyncio.create_task(_one_load_request(client, url, i, hold)) for i in range(LOAD)]
            try:
                all_held = await asyncio.to_thread(gw.wait_held, hold, 60, LOAD)
                assert all_held, f"the {LOAD} requests were not all at the stand-in at once"
            finally:
                gw.release(hold)
            await asyncio.gather(*tasks)

    asyncio.run(run())
    assert len(gw.requests) == LOAD
    assert {r.path for r in gw.requests} == {f"{PREFIX}/chat/completions"}
    assert_still_serving(proxy, gw)


# ---- shutdown --------------------------------------------------------------------------------


def open_held_request(port: int, hold: str, stream: bool) -> socket.socket:
    body = json.dumps({**CHAT, "stream": stream}).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"x-standin-hold: %s\r\ncontent-length: %d\r\n\r\n%s" % (hold.encode(), len(body), body)
    )
    return s


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_proxy_with_requests_in_flight(make_proxy, gw, sig):
    p = make_proxy()
    hold = f"shutdown-{sig.name}"
    streams = [open_held_request(p.port, hold, stream=True) for _ in range(3)]
    waiting = open_held_request(p.port, hold, stream=False)
    try:
        assert gw.wait_held(hold, timeout=10, count=4)
        starts = []
        for s in streams:  # each client has its first event: these streams are really in flight
            got = b""
            for _ in range(100):
                if b"data: " in got:
                    break
                got += s.recv(65536)
            assert b"data: " in got
            starts.append(got)
        p.proc.send_signal(sig)
        p.proc.wait(timeout=10)  # hang guard, not a timing assertion
        assert p.proc.returncode == 0, p.output()
        for s, start in zip(streams, starts, strict=True):
            whole = start + read_until_end(s)
            assert b"[DONE]" not in whole
            assert not whole.endswith(b"0\r\n\r\n")  # no terminating chunk: the client sees a cut stream
        assert not read_until_end(waiting).startswith(b"HTTP/1.1 200")
    finally:
        gw.release(hold)
        for s in [*streams, waiting]:
            s.close()
    assert addon_tracebacks(p.output()) == []


def test_run_sh_propagates_sigterm(gw, tmp_path):
    """run.sh execs mitmdump, so a supervisor's SIGTERM reaches the proxy and the port closes."""
    env_file = ROOT / ".env"
    had_env_file = env_file.exists()
    port = free_port()
    # Every setting explicit (its default): the environment wins over a developer's .env, so none
    # is read. The harness strips the same variables from the environment of every other proxy.
    settings_env = {o.spec.env: o.spec.default for o in config.OPTIONS}
    assert set(settings_env) <= set(CF_ENV), "tests/harness.py CF_ENV misses an option's variable"
    settings_env.update(
        ACCOUNT_ID=ACCOUNT_ID,
        GATEWAY_ID=GATEWAY_ID,
        CF_BASE_URL=gw.base_url,
        HOST_PORT=str(port),
        HOST_ADDR="127.0.0.1",
    )
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(ROOT / "run.sh"), "--set", f"confdir={tmp_path / 'conf'}"],
            cwd=tmp_path,
            env=clean_env(**settings_env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        # Generous: on a fresh checkout run.sh installs the venv's dependencies first.
        assert wait_for_port(port, proc, timeout=120), log_path.read_text(errors="replace")
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert r.status_code == 200
        assert gw.requests[-1].path == f"{PREFIX}/models"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)  # hang guard
        for _ in range(100):  # an orphaned mitmdump would keep the port open
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"port {port} still open after run.sh exited")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of our own session only
    assert env_file.exists() == had_env_file
    assert "Traceback" not in log_path.read_text(errors="replace")
