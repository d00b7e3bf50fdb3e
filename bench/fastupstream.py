"""A fast stand-in for the AI Gateway: any method and path, JSON or an SSE stream.

Why: the benchmarks measure the proxy, so the upstream must cost far less per request than
the proxy does. This is one asyncio Protocol, keep-alive, no parsing beyond what it needs.
A request whose body says ``"stream": true`` gets N content events D ms apart (each
written on its own, as a model's tokens arrive), then a stop event, a usage event and
``data: [DONE]``: N + 3 ``data:`` lines in all. N and D come from the request's
``x-bench-events`` and ``x-bench-delay-ms`` headers, else from ``--events`` and
``--delay-ms`` (for peers that do not pass headers on). Anything else gets a small
chat.completion JSON.

    python bench/fastupstream.py --port P [--events 300 --delay-ms 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket

STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
LENGTH_RE = re.compile(rb"\r\ncontent-length:\s*(\d+)")
EVENTS_RE = re.compile(rb"\r\nx-bench-events:\s*(\d+)")
DELAY_RE = re.compile(rb"\r\nx-bench-delay-ms:\s*([\d.]+)")
MODEL = "openai/gpt-4o-mini"
USAGE = {"prompt_tokens": 41210, "completion_tokens": 300, "total_tokens": 41510}


def compact(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


COMPLETION = compact(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9},
    }
)


def event(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    """One SSE event as one HTTP chunk."""
    obj: dict = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
    }
    obj["choices"] = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage:
        obj["usage"] = usage
    data = b"data: " + compact(obj) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


WORDS = [event({"content": w}) for w in ("Hello", " from", " the", " bench", " upstream.")]
END = event({}, "stop") + event({}, usage=USAGE) + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"


class Upstream(asyncio.Protocol):
    """One client connection: answers its requests in order, one at a time."""

    def __init__(self, events: int, delay: float) -> None:
        self.events, self.delay = events, delay
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a stream is being written; later requests wait in buf
        self.task: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.answer()

    def answer(self) -> None:
        while self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            m = LENGTH_RE.search(head)
            length = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            close = b"\r\nconnection: close" in head
            if STREAM_RE.search(body):
                self.busy = True
                events, delay = EVENTS_RE.search(head), DELAY_RE.search(head)
                n = int(events.group(1)) if events else self.events
                pause = float(delay.group(1)) / 1000 if delay else self.delay
                self.task = asyncio.ensure_future(self.stream(n, pause, close))  # kept: not collected
                return
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(COMPLETION), COMPLETION)
            )
            if close:
                self.transport.close()

    async def stream(self, events: int, delay: float, close: bool) -> None:
        t = self.transport
        if t is None:
            return
        t.write(STREAM_HEAD + b"\r\n")
        for i in range(events):
            if t.is_closing():
                return
            t.write(WORDS[i % len(WORDS)])
            if delay:
                await asyncio.sleep(delay)
        t.write(END)
        if close:
            t.close()
            return
        self.busy = False
        self.answer()


async def serve(port: int, events: int, delay_ms: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Upstream(events, delay_ms / 1000), "127.0.0.1", port, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--events", type=int, default=20)
    p.add_argument("--delay-ms", type=float, default=20)
    args = p.parse_args()
    asyncio.run(serve(args.port, args.events, args.delay_ms))
