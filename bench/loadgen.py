"""A small, fast HTTP/1.1 load generator: asyncio raw sockets, keep-alive or a new connection per request.

Why not httpx: its per-request cost is higher than mitmproxy's, so it cannot
saturate the proxy; why not only wrk: it cannot open a new connection per
request. Requests are pre-built bytes; responses are parsed just enough to find
their end (Content-Length, chunked, or close). Every run is bounded by a
request count and a deadline.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections import Counter
from dataclasses import dataclass, field


def build_request(
    path: str,
    port: int,
    body: bytes = b"",
    method: str = "POST",
    headers: dict[str, str] | None = None,
    close: bool = False,
) -> bytes:
    """The exact bytes of one request (Host 127.0.0.1:port; Connection: close for new-connection mode)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    hdrs = {
        "content-type": "application/json",
        "authorization": "Bearer sk-bench-client",
        "user-agent": "cfgw-bench",
    }
    hdrs.update(headers or {})
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class LoadResult:
    """Outcome of one run: latencies (seconds) of good answers, and what went wrong."""

    requests: int = 0
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    elapsed: float = 0.0
    timed_out: bool = False
    connections: int = 0

    @property
    def failed(self) -> int:
        return self.requests - self.ok

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def pct(self, p: float) -> float | None:
        """Nearest-rank percentile of the good answers' latencies, in seconds."""
        if not self.latencies:
            return None
        s = sorted(self.latencies)
        k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
        return s[k]

    def summary(self) -> dict:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "failed": self.failed,
            "elapsed_s": round(self.elapsed, 4),
            "rps": round(self.rps, 1),
            "p50_ms": _ms(self.pct(50)),
            "p90_ms": _ms(self.pct(90)),
            "p99_ms": _ms(self.pct(99)),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))},
            "errors": dict(self.errors),
            "timed_out": self.timed_out,
            "connections": self.connections,
        }


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 3)


class BadResponse(Exception):
    pass


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one whole response; return (status, server wants the connection closed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    first, _, rest = head.partition(b"\r\n")
    parts = first.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise BadResponse(first[:60])
    status = int(parts[1])
    length = None
    is_chunked = False
    close = parts[0] == b"HTTP/1.0"
    for line in rest.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line[15:])
        elif line.startswith(b"transfer-encoding:"):
            is_chunked = b"chunked" in line
        elif line.startswith(b"connection:"):
            close = b"close" in line
    if is_chunked:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            await reader.readexactly(size + 2)
    elif length is not None:
        if length:
            await reader.readexactly(length)
    elif status not in (204, 304) and not 100 <= status < 200:
        await reader.read()  # body ends at close
        close = True
    return status, close


async def run_load(
    port: int,
    request: bytes,
    total: int,
    concurrency: int,
    keepalive: bool = True,
    time_limit: float = 120.0,
    request_timeout: float = 30.0,
    host: str = "127.0.0.1",
) -> LoadResult:
    """Send `total` requests from `concurrency` workers; stop early at `time_limit` seconds."""
    result = LoadResult()
    remaining = total
    start = time.perf_counter()
    deadline = start + time_limit

    def take() -> bool:
        nonlocal remaining
        if remaining <= 0:
            return False
        if time.perf_counter() > deadline:
            result.timed_out = True
            return False
        remaining -= 1
        result.requests += 1
        return True

    async def one(conn: list) -> None:
        """One request on conn ([reader, writer] or empty); reconnects as needed."""
        t0 = time.perf_counter()
        try:
            if not conn:
                r, w = await asyncio.open_connection(host, port)
                w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn[:] = [r, w]
                result.connections += 1
            reader, writer = conn
            writer.write(request)
            status, close = await asyncio.wait_for(read_response(reader), request_timeout)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            BadResponse,
            ValueError,
        ) as e:
            result.errors[type(e).__name__] += 1
            _drop(conn)
            return
        except TimeoutError:
            result.errors["Timeout"] += 1
            _drop(conn)
            return
        elapsed = time.perf_counter() - t0
        result.statuses[status] += 1
        if 200 <= status < 300:
            result.ok += 1
            result.latencies.append(elapsed)
        if close:
            # Let the server close first (it said it would): its side keeps the TIME_WAIT, so
            # thousands of new-connection requests do not use up the client's ephemeral ports.
            try:
                await asyncio.wait_for(conn[0].read(), min(request_timeout, 5.0))
            except (OSError, TimeoutError):
                pass
        if close or not keepalive:
            _drop(conn)

    async def worker() -> None:
        conn: list = []
        try:
            while take():
                await one(conn)
        finally:
            _drop(conn)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - start
    return result


def _drop(conn: list) -> None:
    if conn:
        conn[1].close()
        conn.clear()


def load(port: int, request: bytes, total: int, concurrency: int, keepalive: bool = True, **kw) -> LoadResult:
    return asyncio.run(run_load(port, request, total, concurrency, keepalive, **kw))


@dataclass
class StreamTiming:
    """One streamed response read to the end: seconds from sending the request."""

    status: int | None = None
    headers_s: float | None = None
    first_event_s: float | None = None
    last_event_s: float | None = None
    done_s: float | None = None
    body_bytes: int = 0
    error: str | None = None


def stream_once(port: int, request: bytes, timeout: float = 120.0, host: str = "127.0.0.1") -> StreamTiming:
    """Send one request (it should say Connection: close) and time its SSE events until EOF.

    first event = the first 'data:' byte after the headers; last event = 'data: [DONE]'.
    Blocking socket and recv_into: fast enough to drain hundreds of MB/s, keeps only a tail.
    """
    out = StreamTiming()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    deadline = time.perf_counter() + timeout
    t0 = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(request)
            head = b""
            tail = b""
            while True:
                if time.perf_counter() > deadline:
                    out.error = "timeout"
                    break
                n = s.recv_into(buf)
                now = time.perf_counter() - t0
                if n == 0:
                    out.done_s = now
                    break
                data = bytes(view[:n]) if (out.headers_s is None or n < 4096) else None
                if out.headers_s is None:
                    head += data
                    end = head.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    out.headers_s = now
                    out.status = int(head.split(b" ", 2)[1])
                    body = head[end + 4 :]
                    out.body_bytes += len(body)
                    tail = body[-64:]
                    window = body
                else:
                    out.body_bytes += n
                    chunk = (
                        data
                        if data is not None
                        else bytes(view[: min(n, 64)]) + bytes(view[max(0, n - 64) : n])
                    )
                    window = tail + chunk
                    tail = window[-64:]
                if out.first_event_s is None and b"data:" in window:
                    out.first_event_s = now
                if out.last_event_s is None and b"data: [DONE]" in window:
                    out.last_event_s = now
    except OSError as e:
        out.error = f"{type(e).__name__}: {e}"
    return out
