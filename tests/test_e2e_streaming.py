"""End to end: server-sent events stream through a real mitmdump + the addon and stay inspectable.

Ordering is made deterministic with the stand-in's hold: a held stream sends its
first event and then blocks until ``gw.release(name)``, so a client that has the
first event before the release proves the proxy did not buffer. Timeouts here
only bound a failure (a buffering proxy would make the client wait for the
stand-in's 30 s hold timeout, well past them); nothing asserts on speed.

HTTP/2 clients are curl over TLS: with the reverse target https (as in production)
mitmproxy offers h2 to TLS clients, and the addon still rewrites to the stand-in.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import queue
import re
import select
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from mitmproxy import io as flow_io

from tests.harness import Proxy, free_port, start_proxy, wait_for_port
from tests.standin_gateway import REPLY_TEXT, REPLY_WORDS

CHAT: dict[str, Any] = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
STREAM: dict[str, Any] = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
WAIT = 10.0  # failure bound for one step; the stand-in's hold gives up after 30 s
TLS_TARGET = "https://gateway.ai.cloudflare.com"


# -- helpers --------------------------------------------------------------------------


def hold_name() -> str:
    return f"hold-{uuid.uuid4().hex[:12]}"


def sse_data(body: bytes) -> list:
    """The data: payloads of an SSE body, [DONE] as a string."""
    out = []
    for line in body.decode().splitlines():
        if line.startswith("data: "):
            value = line[6:]
            out.append(value if value == "[DONE]" else json.loads(value))
    return out


def sse_text(body: bytes) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in sse_data(body)
        if isinstance(e, dict) and e["choices"]
    )


def expected_text(n_events: int) -> str:
    return " ".join(REPLY_WORDS[i % len(REPLY_WORDS)] for i in range(n_events))


def read_flows(path: Path) -> list:
    with open(path, "rb") as f:
        return list(flow_io.FlowReader(f).stream())


def flow_by_tag(flows: list, tag: str):
    (found,) = [f for f in flows if f.request.headers.get("x-test-tag") == tag]
    return found


def stream_raw(url: str, tag: str, headers: dict[str, str] | None = None) -> bytes:
    """POST a streaming chat; the body bytes exactly as they came off the wire (not decoded)."""
    headers = {"x-test-tag": tag, **(headers or {})}
    with (
        httpx.Client(timeout=WAIT) as c,
        c.stream("POST", url + "/v1/chat/completions", json=STREAM, headers=headers) as r,
    ):
        assert r.status_code == 200
        return b"".join(r.iter_raw())


def first_event(chunks) -> bytes:
    """Read raw chunks up to the end of the first event (one event may arrive in pieces)."""
    got = b""
    while not got.endswith(b"\n\n"):
        got += next(chunks)
    return got


def log_line(proxy: Proxy, log_id: str) -> str:
    """The proxy's per-request line for the response with this cf-aig-log-id."""
    assert proxy.wait_output(f"log_id={log_id}"), proxy.output()
    (line,) = [x for x in proxy.output().splitlines() if f"log_id={log_id}" in x]
    return line


def tls_listener_args() -> tuple[int, list[str]]:
    """A second, TLS listener (offers h2) for a proxy: its port and mitmdump arguments."""
    port = free_port()
    return port, ["--mode", f"reverse:{TLS_TARGET}@127.0.0.1:{port}"]


def tls_url(p: Proxy) -> str:
    return f"https://127.0.0.1:{p.extra_ports['tls']}"


def ca_file(p: Proxy) -> Path:
    return p.workdir / "conf" / "mitmproxy-ca-cert.pem"


class OutputReader:
    """Reads a child's stdout pipe without ever blocking longer than a bound (select + os.read)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.data = bytearray()

    def _more(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            raise AssertionError(f"nothing more within {timeout}s; got {bytes(self.data)!r}")
        chunk = os.read(self.fd, 65536)
        self.data += chunk
        return bool(chunk)

    def read_until(self, needle: bytes, timeout: float = WAIT) -> bytes:
        while needle not in self.data:
            if not self._more(timeout):
                raise AssertionError(f"EOF before {needle!r}; got {bytes(self.data)!r}")
        return bytes(self.data)

    def read_to_end(self, timeout: float = WAIT) -> bytes:
        while self._more(timeout):
            pass
        return bytes(self.data)


def curl_stream(
    url: str, headers: dict[str, str], extra: list[str] | tuple[str, ...] = ()
) -> subprocess.Popen:
    """curl -N (no output buffering) posting a streaming chat; read its stdout as it arrives."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    cmd = [curl, "-sS", "-N", *extra, "-H", "content-type: application/json", "-d", json.dumps(STREAM)]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    proc = subprocess.Popen([*cmd, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _curls.append(proc)
    return proc


_curls: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _reap_curls():
    """A failed test may leave a curl waiting on a held stream: end it with the test."""
    yield
    while _curls:
        proc = _curls.pop()
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def curl_h2(p: Proxy) -> list[str]:
    return ["--http2", "--cacert", str(ca_file(p))]


def curl_log_id(header_file: Path) -> str:
    m = re.search(r"(?im)^cf-aig-log-id: *(\S+)", header_file.read_text())
    assert m, header_file.read_text()
    return m.group(1)


@pytest.fixture(scope="module")
def proxy(gateway, tmp_path_factory):
    """Overrides conftest's: the default proxy, plus a TLS listener for HTTP/2 clients."""
    port, args = tls_listener_args()
    p = start_proxy(gateway.base_url, extra_args=args, workdir=tmp_path_factory.mktemp("proxy"))
    p.extra_ports["tls"] = port
    assert wait_for_port(port, p.proc), p.output()
    yield p
    p.stop()


# -- the first event reaches the client while the stand-in still holds the rest ------------


def test_openai_sdk_gets_first_event_while_upstream_holds(proxy, gw):
    name = hold_name()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0, timeout=WAIT)
    stream = client.chat.completions.create(**STREAM, extra_headers={"x-standin-hold": name})
    try:
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        assert gw.wait_held(name)  # the stand-in sent only this event so far
    finally:
        gw.release(name)
    rest = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in rest if c.choices) == REPLY_TEXT
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == len(REPLY_WORDS)


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_httpx_gets_first_event_while_upstream_holds(proxy, gw, encoding):
    name = hold_name()
    headers = {"x-standin-hold": name}
    if encoding:
        headers["x-standin-encoding"] = encoding
    with (
        httpx.Client(timeout=WAIT) as c,
        c.stream("POST", proxy.url + "/v1/chat/completions", json=STREAM, headers=headers) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers.get("content-encoding") == encoding  # passed on, not decoded by the proxy
        lines = r.iter_lines()  # httpx decodes gzip incrementally
        try:
            first = next(lines)
            assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
            assert gw.wait_held(name)
        finally:
            gw.release(name)
        body = "\n".join([first, *lines]).encode()
    assert sse_text(body) == REPLY_TEXT
    assert sse_data(body)[-1] == "[DONE]"


@pytest.mark.parametrize("version", ["http1.1", "http2"])
def test_curl_n_gets_first_event_while_upstream_holds(proxy, gw, version):
    name = hold_name()
    if version == "http2":
        url, extra = tls_url(proxy), [*curl_h2(proxy)]
    else:
        url, extra = proxy.url, ["--http1.1"]
    proc = curl_stream(
        url + "/v1/chat/completions", {"x-standin-hold": name}, [*extra, "-w", "v=%{http_version}"]
    )
    out = OutputReader(proc)
    try:
        first = out.read_until(b"\n\n")
        assert sse_data(first)[0]["choices"][0]["delta"]["role"] == "assistant"
        assert gw.wait_held(name)
    finally:
        gw.release(name)
        body = out.read_to_end()
        proc.wait(WAIT)
    assert proc.returncode == 0, proc.stderr and proc.stderr.read()
    body, _, used = body.rpartition(b"v=")
    assert used == {"http1.1": b"1.1", "http2": b"2"}[version]
    assert sse_text(body) == REPLY_TEXT
    assert body.endswith(b"data: [DONE]\n\n")


# -- what the flow keeps ---------------------------------------------------------------


def test_flow_file_holds_the_streamed_bodies(make_proxy, gw, tmp_path):
    flows_path = tmp_path / "flows.mitm"
    p = make_proxy(extra_args=["-w", str(flows_path)])
    plain = stream_raw(p.url, "plain", {"x-standin-events": "40"})
    zipped = stream_raw(p.url, "gzip", {"x-standin-encoding": "gzip"})
    assert p.stop() == 0
    flows = read_flows(flows_path)

    f = flow_by_tag(flows, "plain")
    assert f.response.headers["content-type"] == "text/event-stream"
    assert f.response.get_content() == plain
    assert sse_text(plain) == expected_text(40)
    assert "openai/gpt-4o-mini" in f.comment and "tok" in f.comment  # usage read from the stream

    f = flow_by_tag(flows, "gzip")
    assert f.response.headers["content-encoding"] == "gzip"
    assert f.response.raw_content == zipped  # recorded as it went to the client, still encoded
    assert f.response.get_content() == gzip.decompress(zipped)
    assert sse_text(gzip.decompress(zipped)) == REPLY_TEXT
    assert "tok" in f.comment


def test_record_limit_truncates_the_flow_and_says_so(make_proxy, gw, tmp_path):
    flows_path = tmp_path / "flows.mitm"
    p = make_proxy({"cf_record_limit": "100"}, extra_args=["-w", str(flows_path)])
    body = stream_raw(p.url, "big", {"x-standin-events": "30"})
    assert sse_text(body) == expected_text(30)  # the client got every byte
    note = f"stream record truncated at cf_record_limit: {len(body) - 100} bytes not kept"
    assert p.wait_output(note)
    assert p.stop() == 0
    f = flow_by_tag(read_flows(flows_path), "big")
    assert f.response.raw_content == body[:100]
    assert note in f.comment
    assert f"flow {f.id} {note}" in p.output()


def test_record_limit_zero_records_nothing_and_delivers_all(make_proxy, gw, tmp_path):
    flows_path = tmp_path / "flows.mitm"
    p = make_proxy({"cf_record_limit": "0"}, extra_args=["-w", str(flows_path)])
    body = stream_raw(p.url, "unrecorded", {"x-standin-events": "30"})
    assert sse_text(body) == expected_text(30)
    assert p.stop() == 0
    f = flow_by_tag(read_flows(flows_path), "unrecorded")
    assert f.response.status_code == 200
    assert not f.response.raw_content


# -- broken streams --------------------------------------------------------------------


def test_upstream_reset_mid_stream_closes_client_keeps_partial_record_and_warns(make_proxy, gw, tmp_path):
    flows_path = tmp_path / "flows.mitm"
    # termlog_verbosity=warn: only WARNING and up reach the log, so what shows is a warning.
    p = make_proxy(extra_args=["-w", str(flows_path), "--set", "termlog_verbosity=warn"])
    name = hold_name()
    got = bytearray()
    headers = {"x-standin-hold": name, "x-standin-reset-after": "3", "x-test-tag": "reset"}
    with (
        httpx.Client(timeout=WAIT) as c,
        c.stream("POST", p.url + "/v1/chat/completions", json=STREAM, headers=headers) as r,
    ):
        chunks = r.iter_raw()
        try:
            got += first_event(chunks)
            assert gw.wait_held(name)
        finally:
            gw.release(name)
        with pytest.raises(httpx.RemoteProtocolError):  # closed, not left hanging (WAIT bounds it)
            for chunk in chunks:
                got += chunk
    assert 1 <= got.count(b"data: ") <= 3 and b"[DONE]" not in got
    assert p.wait_output("upstream failed mid-stream after")
    m = re.search(r"flow (\S+): upstream failed mid-stream after (\d+) bytes", p.output())
    assert m, p.output()
    assert sse_text(stream_raw(p.url, "after")) == REPLY_TEXT  # the proxy keeps serving
    assert p.stop() == 0
    f = flow_by_tag(read_flows(flows_path), "reset")
    assert f.id == m.group(1)  # the warning names the flow
    assert int(m.group(2)) == len(got)  # and the bytes delivered, as the client counted them
    assert f.response.raw_content == bytes(got)  # the partial record
    assert f.error is not None


def test_http2_upstream_reset_mid_stream_ends_the_client_stream(proxy, gw, tmp_path):
    name = hold_name()
    head = tmp_path / "head.txt"
    proc = curl_stream(
        tls_url(proxy) + "/v1/chat/completions",
        {"x-standin-hold": name, "x-standin-reset-after": "3"},
        [*curl_h2(proxy), "-D", str(head)],
    )
    out = OutputReader(proc)
    try:
        out.read_until(b"\n\n")
        assert gw.wait_held(name)
    finally:
        gw.release(name)
        body = out.read_to_end()
        proc.wait(WAIT)
    assert proc.returncode != 0  # curl saw the stream end abnormally (and did not hang)
    assert b"[DONE]" not in body
    line = log_line(proxy, curl_log_id(head))
    assert f" {len(body)}B " in line and "error=" in line
    assert f"upstream failed mid-stream after {len(body)} bytes" in proxy.output()


@pytest.mark.parametrize("client", ["httpx", "curl-http2"])
def test_client_disconnect_mid_stream_is_logged_with_the_request(proxy, gw, tmp_path, client):
    """With cf_log_requests on, the request line carries the error; no upstream warning."""
    name = hold_name()
    warnings_before = proxy.output().count("upstream failed")
    if client == "httpx":
        with (
            httpx.Client(timeout=WAIT) as c,
            c.stream(
                "POST", proxy.url + "/v1/chat/completions", json=STREAM, headers={"x-standin-hold": name}
            ) as r,
        ):
            log_id = r.headers["cf-aig-log-id"]
            first = first_event(r.iter_raw())
            assert gw.wait_held(name)
        error = "error='Client disconnected.'"
    else:
        head = tmp_path / "head.txt"
        proc = curl_stream(
            tls_url(proxy) + "/v1/chat/completions",
            {"x-standin-hold": name},
            [*curl_h2(proxy), "-D", str(head)],
        )
        first = OutputReader(proc).read_until(b"\n\n")
        assert gw.wait_held(name)
        proc.kill()  # closes the HTTP/2 connection
        proc.wait(WAIT)
        log_id = curl_log_id(head)
        error = "error='peer closed connection'"
    # the client went away while the stand-in still holds the stream
    try:
        line = log_line(proxy, log_id)
    finally:
        gw.release(name)
    assert f" {len(first)}B " in line and " stream " in line and error in line
    assert proxy.output().count("upstream failed") == warnings_before  # it was the client
    assert sse_text(stream_raw(proxy.url, "after-disconnect")) == REPLY_TEXT  # still serving


class HeldUpstream:
    """A bare SSE upstream that shows whether the proxy closed its connection.

    The stand-in cannot tell: its held handler only notices when it writes again.
    Requests with ``x-test-hold: 1`` get one event, then the connection is held
    until the peer closes it (recv returns b"" or the socket resets), which puts
    the connection's number on ``closed``; other requests get a short stream.
    """

    FIRST = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}\n\n'
    FULL = FIRST + b"data: [DONE]\n\n"

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed: queue.Queue[int] = queue.Queue()
        threading.Thread(target=self.serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def read_request(conn: socket.socket) -> bytes:
        """Read one request; return its head."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a full request")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"(?im)^content-length: *(\d+)", head)
        while len(body) < (int(m.group(1)) if m else 0):
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a full request")
            body += chunk
        return head

    @staticmethod
    def answer(conn: socket.socket, events: bytes) -> None:
        """Response head and the events as one chunk (the body stays open)."""
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        conn.sendall(head + b"%x\r\n%s\r\n" % (len(events), events))

    def serve(self) -> None:
        number = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # close() was called
            number += 1
            threading.Thread(target=self.handle, args=(conn, number), daemon=True).start()

    def handle(self, conn: socket.socket, number: int) -> None:
        with conn:
            try:
                conn.settimeout(WAIT * 2)
                head = self.read_request(conn)
                if re.search(rb"(?im)^x-test-hold: *1", head):
                    self.answer(conn, self.FIRST)
                    try:
                        while conn.recv(65536):
                            pass  # nothing more is expected from the proxy; wait for its close
                    except ConnectionResetError:
                        pass
                    self.closed.put(number)
                else:
                    self.answer(conn, self.FULL)
                    conn.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # includes the timeout: nothing put on closed

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def held_upstream():
    up = HeldUpstream()
    yield up
    up.close()


def test_client_disconnect_closes_upstream_and_logs_info(make_proxy, held_upstream):
    """cf_log_requests off: an INFO line says the client went away; the upstream sees its close."""
    port, args = tls_listener_args()
    p = make_proxy({"cf_log_requests": "off"}, upstream=held_upstream.url, extra_args=args)
    p.extra_ports["tls"] = port
    assert wait_for_port(port, p.proc)
    info = f"client went away mid-stream after {len(HeldUpstream.FIRST)} bytes"

    # HTTP/1.1 client
    with (
        httpx.Client(timeout=WAIT) as c,
        c.stream("POST", p.url + "/v1/chat/completions", json=STREAM, headers={"x-test-hold": "1"}) as r,
    ):
        assert first_event(r.iter_raw()) == HeldUpstream.FIRST
    assert held_upstream.closed.get(timeout=WAIT), "upstream connection left open after the client left"
    assert p.wait_output(info)
    assert httpx.post(p.url + "/v1/chat/completions", json=STREAM, timeout=WAIT).content == HeldUpstream.FULL

    # HTTP/2 client
    proc = curl_stream(tls_url(p) + "/v1/chat/completions", {"x-test-hold": "1"}, curl_h2(p))
    assert OutputReader(proc).read_until(b"\n\n") == HeldUpstream.FIRST
    proc.kill()  # closes the HTTP/2 connection
    proc.wait(WAIT)
    assert held_upstream.closed.get(timeout=WAIT)
    assert p.wait_output(info) and p.output().count(info) == 2
    with httpx.Client(verify=ssl.create_default_context(cafile=ca_file(p)), timeout=WAIT) as c:
        assert c.post(tls_url(p) + "/v1/chat/completions", json=STREAM).content == HeldUpstream.FULL

    assert "upstream failed" not in p.output()


# -- many at once ------------------------------------------------------------------------


def test_fifty_concurrent_streams_complete_with_their_own_content(proxy, gw):
    """All 50 are open at once (each held after its first event), then finish with exact content."""
    n = 50
    name = hold_name()

    async def one(client: httpx.AsyncClient, i: int, all_started: asyncio.Event, started: list) -> tuple:
        events = 1 + i % 13
        headers = {"x-standin-hold": name, "x-standin-events": str(events)}
        if i % 5 == 0:
            headers["x-standin-encoding"] = "gzip"
        async with client.stream("POST", "/v1/chat/completions", json=STREAM, headers=headers) as r:
            lines = r.aiter_lines()
            first = await anext(lines)
            started.append(i)
            if len(started) == n:
                all_started.set()
            rest = [line async for line in lines]
        return events, "\n".join([first, *rest]).encode()

    async def run() -> list:
        all_started = asyncio.Event()
        started: list[int] = []
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=proxy.url, timeout=WAIT * 2, limits=limits) as client:
            tasks = [asyncio.create_task(one(client, i, all_started, started)) for i in range(n)]
            try:
                await asyncio.wait_for(all_started.wait(), WAIT * 2)  # every client has its first event
                assert await asyncio.to_thread(gw.wait_held, name, WAIT, n)  # and every stream is held
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            finally:
                gw.release(name)
            return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    assert len(results) == n
    for events, body in results:
        assert sse_text(body) == expected_text(events)
        data = sse_data(body)
        assert data[-1] == "[DONE]"
        assert data[-2]["usage"]["completion_tokens"] == events
