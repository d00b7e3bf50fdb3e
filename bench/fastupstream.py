#!/usr/bin/env python3
"""A minimal, fast HTTP/1.1 upstream for the benchmarks: any path, any method.

Why: the stand-in gateway (ThreadingHTTPServer, a thread per connection) costs
more per request than the proxy under test would, so core numbers would measure
the stand-in. This server is an asyncio Protocol that answers a fixed small
chat.completion JSON with keep-alive. A body containing ``"stream": true`` gets
an SSE stream of --stream-events chunks, --stream-delay-ms apart, then
``data: [DONE]`` (so peers that cannot forward test headers still stream).

    python bench/fastupstream.py --port P [--stream-events 20 --stream-delay-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time

STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
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


def chunk_event(text: str | None, finish: str | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    obj = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "openai/gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream(asyncio.Protocol):
    """One connection: parse pipelined requests from a buffer, answer each in order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

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
            self.server.requests += 1
            if STREAM_RE.search(body):
                self.streaming = True
                self.server.tasks.add(task := asyncio.ensure_future(self.stream(close)))
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
        parts = []
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

    async def stream(self, close: bool) -> None:
        t = self.transport
        assert t is not None
        t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n%s\r\n" % (b"Connection: close\r\n" if close else b"")
        )
        words = ["Hello", " from", " the", " bench", " upstream."]
        delay = self.server.stream_delay
        for i in range(self.server.stream_events):
            if t.is_closing():
                return
            t.write(chunked(chunk_event(words[i % len(words)])))
            if delay:
                await asyncio.sleep(delay)
        t.write(chunked(chunk_event(None, "stop")) + chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        if close:
            t.close()
            return
        self.streaming = False
        self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class Server:
    def __init__(self, stream_events: int, stream_delay_ms: float) -> None:
        self.stream_events = stream_events
        self.stream_delay = stream_delay_ms / 1000
        self.requests = 0
        self.tasks: set[asyncio.Future] = set()  # running streams (kept so they are not collected)


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
