#!/usr/bin/env python3
"""A minimal, fast HTTP/1.1 upstream for the benchmarks: any path, any method.

Why: the stand-in gateway (ThreadingHTTPServer, a thread per connection) costs
more per request than the proxy under test would, so core numbers would measure
the stand-in. This server is an asyncio Protocol that answers a fixed small
chat.completion JSON with keep-alive. A body containing ``"stream": true`` gets
an SSE stream of --stream-events chunks, --stream-delay-ms apart, then
``data: [DONE]`` (so peers that cannot forward test headers still stream); with
``"include_usage": true`` a usage chunk comes before ``[DONE]``, as OpenAI sends it.
``GET /__stats`` (``?reset=1`` to start counting again) answers the number of requests
and the most streams that were open at once, so a benchmark can check its concurrency.

    python bench/fastupstream.py --port P [--stream-events 20 --stream-delay-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import sys
import time

STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
USAGE_RE = re.compile(rb'"include_usage"\s*:\s*true')
MAX_HEAD = 65536

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "openai/gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello from the bench upstream.",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9},
        "system_fingerprint": "fp_bench",
    },
    separators=(",", ":"),
).encode()


def chunk_event(text: str | None, finish: str | None = None, usage: dict | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    obj: dict = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "openai/gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        obj.update(choices=[], usage=usage)
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


WORDS = ("Hello", " from", " the", " bench", " upstream.")
WORD_EVENTS = [chunked(chunk_event(w)) for w in WORDS]
USAGE = {"prompt_tokens": 41210, "completion_tokens": 300, "total_tokens": 41510}
USAGE_EVENT = chunk_event(None, usage=USAGE)
STOP_EVENT = chunk_event(None, "stop")
DONE_EVENT = b"data: [DONE]\n\n"


def answer_bytes(events: int, usage: bool) -> int:
    """The size of one streamed answer's body (the SSE text, without the chunked framing)."""
    text = sum(len(chunk_event(WORDS[i % len(WORDS)])) for i in range(events))
    return text + len(STOP_EVENT) + (len(USAGE_EVENT) if usage else 0) + len(DONE_EVENT)


class Upstream(asyncio.Protocol):
    """One connection: parse pipelined requests from a buffer, answer each in order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Each event leaves when it is written (as a model's tokens do), not held back by Nagle.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.streaming:
            self.process()

    def process(self) -> None:
        while self.transport is not None and not self.transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.transport.close()
                return
            head = bytes(self.buf[:end]).lower()
            body_start = end + 4
            length = 0
            is_chunked = False
            for line in head.split(b"\r\n")[1:]:
                if line.startswith(b"content-length:"):
                    length = int(line[15:].strip() or 0)
                elif line.startswith(b"transfer-encoding:") and b"chunked" in line:
                    is_chunked = True
            if is_chunked:
                body, consumed = self.dechunk(body_start)
                if body is None:
                    return
            else:
                if len(self.buf) < body_start + length:
                    return
                body = bytes(self.buf[body_start : body_start + length])
                consumed = body_start + length
            del self.buf[:consumed]
            close = b"\r\nconnection: close" in head or head.split(b"\r\n", 1)[0].endswith(b"http/1.0")
            if head.startswith(b"get /__stats"):
                self.transport.write(self.server.stats(reset=b"reset=1" in head.split(b"\r\n", 1)[0]))
                continue
            self.server.requests += 1
            if STREAM_RE.search(body):
                self.streaming = True
                usage = USAGE_RE.search(body) is not None
                self.server.tasks.add(task := asyncio.ensure_future(self.stream(close, usage)))
                task.add_done_callback(self.server.tasks.discard)
                return
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
                % (len(COMPLETION), b"Connection: close\r\n" if close else b"", COMPLETION)
            )
            if close:
                self.transport.close()
                return

    def dechunk(self, start: int) -> tuple[bytes | None, int]:
        parts: list[bytes] = []
        pos = start
        while True:
            eol = self.buf.find(b"\r\n", pos)
            if eol < 0:
                return None, 0
            size = int(bytes(self.buf[pos:eol]).split(b";")[0] or b"0", 16)
            if size == 0:
                trailer_end = self.buf.find(b"\r\n", eol + 2)
                if trailer_end < 0:
                    return None, 0
                return b"".join(parts), trailer_end + 2
            if len(self.buf) < eol + 2 + size + 2:
                return None, 0
            parts.append(bytes(self.buf[eol + 2 : eol + 2 + size]))
            pos = eol + 2 + size + 2

    async def stream(self, close: bool, usage: bool = False) -> None:
        t = self.transport
        assert t is not None
        self.server.stream_opened()
        try:
            await self.send_events(t, close, usage)
        finally:
            self.server.active_streams -= 1
        if not close and not t.is_closing():
            self.streaming = False
            self.process()

    async def send_events(self, t: asyncio.Transport, close: bool, usage: bool) -> None:
        t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n%s\r\n" % (b"Connection: close\r\n" if close else b"")
        )
        delay = self.server.stream_delay
        for i in range(self.server.stream_events):
            if t.is_closing():
                return
            t.write(WORD_EVENTS[i % len(WORD_EVENTS)])
            if delay:
                await asyncio.sleep(delay)
        end = chunked(STOP_EVENT)
        if usage:
            end += chunked(USAGE_EVENT)
        t.write(end + chunked(DONE_EVENT) + b"0\r\n\r\n")
        if close:
            t.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class Server:
    def __init__(self, stream_events: int, stream_delay_ms: float) -> None:
        self.stream_events = stream_events
        self.stream_delay = stream_delay_ms / 1000
        self.requests = 0
        self.active_streams = 0
        self.max_streams = 0
        self.tasks: set[asyncio.Future] = set()  # running streams (kept so they are not collected)

    def stream_opened(self) -> None:
        self.active_streams += 1
        self.max_streams = max(self.max_streams, self.active_streams)

    def stats(self, reset: bool) -> bytes:
        """The /__stats answer; reset starts counting requests and the most concurrent streams anew."""
        body = json.dumps(
            {
                "requests": self.requests,
                "active_streams": self.active_streams,
                "max_streams": self.max_streams,
            }
        ).encode()
        if reset:
            self.requests, self.max_streams = 0, self.active_streams
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )


async def serve(host: str, port: int, stream_events: int, stream_delay_ms: float) -> None:
    state = Server(stream_events, stream_delay_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Upstream(state), host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fast upstream listening on http://{host}:{port}", flush=True)
    started = time.monotonic()
    await stop.wait()
    server.close()
    print(f"fast upstream: {state.requests} requests in {time.monotonic() - started:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--stream-events", type=int, default=20)
    p.add_argument("--stream-delay-ms", type=float, default=10)
    args = p.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.stream_events, args.stream_delay_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
