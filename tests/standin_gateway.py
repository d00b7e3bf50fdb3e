#!/usr/bin/env python3
"""Local stand-in for Cloudflare AI Gateway's OpenAI-compatible ("compat") endpoint.

Why: cf-gateway's end-to-end tests and benchmarks need an upstream that behaves like
``gateway.ai.cloudflare.com/v1/{account}/{gateway}/compat`` (URLs, error envelope and
codes, ``cf-aig-*`` headers, SSE streaming, gzip) without network access or real keys.
``x-standin-*`` request headers let tests that go through the proxy script failures.
Stdlib only, so it runs in any venv the proxy runs in (Python 3.11+).

In-process::

    with StandinGateway(require_token="tok") as gw:
        httpx.post(gw.base_url + gw.compat_prefix + "/chat/completions", ...)
        gw.requests[-1].path

CLI (``./run.sh demo``, benchmarks)::

    python tests/standin_gateway.py [--host H] [--port P] [--account-id A]
        [--gateway-id G] [--require-token T] [--quiet]

Order of checks: record -> x-standin-echo -> x-standin-close/-hang -> prefix (2001)
-> compat sub-path (2019; skipped when x-standin-status is set) -> token (2009)
-> x-standin-status -> method (405) -> body (invalid JSON, 2008 provider) -> answer.

Test-control request headers:

- ``x-standin-echo: 1``: 200 JSON {method, path, query, headers, body} on any path.
- ``x-standin-close: before-headers`` (FIN, no answer) / ``mid-body`` (short body, RST);
  ``x-standin-hang: S``: silence for S seconds (max 60), then close.
- ``x-standin-status: 4xx|5xx`` (+ ``x-standin-retry-after``): OpenAI-shaped provider error.
- ``x-standin-events: N``, ``x-standin-event-bytes: B`` (each content event exactly B
  bytes), ``x-standin-delay-ms: D`` (between stream events; once before a JSON answer).
- ``x-standin-hold: NAME``: streams block after their first event, JSON answers before
  being sent, until ``release(NAME)`` (sticky until ``clear()``) or 30 s.
- ``x-standin-reset-after: N``: RST after N stream events (``data: [DONE]`` counts).
- ``x-standin-encoding: gzip``: gzip the SSE body, sync-flushed per event.
- ``x-standin-tool-call: 1`` (or a ``tools`` list): answer with a tool call.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import hashlib
import http
import json
import random
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, TextIO

DEFAULT_ACCOUNT_ID = "0123456789abcdef0123456789abcdef"
DEFAULT_GATEWAY_ID = "test-gw"
DEFAULT_CLI_PORT = 8787

REPLY_TEXT = "Hello from the stand-in gateway."
REPLY_WORDS = REPLY_TEXT.split()
DEFAULT_TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = '{"city": "Paris"}'
# How OpenAI fragments tool-call arguments across stream chunks (joined == TOOL_ARGUMENTS).
TOOL_ARGUMENT_PIECES = ('{"ci', 'ty": ', '"Par', 'is"}')
SYSTEM_FINGERPRINT = "fp_standin"
EMBEDDING_DIMS = 8
HOLD_TIMEOUT = 30.0
MAX_HANG = 60.0
IDLE_TIMEOUT = 120.0

MODELS = [
    ("openai/gpt-4o-mini", "openai"),
    ("openai/gpt-4o", "openai"),
    ("anthropic/claude-sonnet-4-5", "anthropic"),
    ("google-ai-studio/gemini-2.5-flash", "google-ai-studio"),
    ("workers-ai/@cf/meta/llama-3.1-8b-instruct", "workers-ai"),
    ("workers-ai/@cf/baai/bge-base-en-v1.5", "workers-ai"),
]

# Gateway error codes -> (HTTP status, message), as listed in the shared facts.
GATEWAY_ERRORS = {
    2001: (400, "Please configure AI Gateway in the Cloudflare dashboard"),
    2008: (400, "Invalid provider"),
    2009: (401, "Unauthorized"),
    2019: (400, "Chat completion bad format"),
}

# Provider (OpenAI-shaped) error type/code for x-standin-status.
_PROVIDER_ERRORS = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    408: ("timeout", "request_timeout"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", "server_error"),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}

_PAD_MARK = b"\x7fPAD\x7f"  # survives JSON encoding unescaped; replaced by padding bytes
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _dumps(obj: Any) -> bytes:
    return _JSON.encode(obj).encode()


def _uuid7() -> str:
    """Lowercase UUIDv7: what cf-aig-event-id looks like (since 2026-10)."""
    value = (time.time_ns() // 1_000_000) << 80
    value |= 0x7 << 76 | random.getrandbits(12) << 64
    value |= 0b10 << 62 | random.getrandbits(62)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_CROCKFORD_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]


def _ulid() -> str:
    """26-char ULID, the shape of log ids (10 bits per lookup: this runs twice per request)."""
    value = (time.time_ns() // 1_000_000) << 80 | random.getrandbits(80)
    pairs = _CROCKFORD_PAIRS
    middle = "".join(pairs[(value >> shift) & 1023] for shift in range(115, 4, -10))
    return _CROCKFORD[value >> 125] + middle + _CROCKFORD[value & 31]


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def _accepts_gzip(value: str | None) -> bool:
    if not value:
        return False
    for item in value.lower().split(","):
        coding, _, params = item.partition(";")
        if coding.strip() in ("gzip", "x-gzip"):
            params = params.replace(" ", "")
            return not (params.startswith("q=0") and params.strip("q=0.") == "")
    return False


def _count_words(value: Any) -> int:
    """Deterministic token count: whitespace-separated words in strings / text parts."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, str):
                total += len(part.split())
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"].split())
        return total
    return 0


def _embedding(item: Any) -> list[float]:
    """8 floats in [-1, 1) derived from the input; exact in float32 so base64 round-trips."""
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    return [(b - 128) / 128 for b in digest[:EMBEDDING_DIMS]]


def _int_header(value: str | None, default: int | None = None) -> int | None:
    if value is None:
        return default
    try:
        return int(value.strip())
    except ValueError:
        return default


class Recorded(NamedTuple):
    """One request exactly as the gateway saw it (path/query raw, headers in order)."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of a header, case-insensitive."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return default

    def header_values(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    def json(self) -> Any:
        return json.loads(self.body)


class _Headers:
    """Request headers in arrival order with case-insensitive get (first value wins).

    Why not http.client.parse_headers: its email-parser costs ~90 us per request,
    which alone capped the stand-in near 2k req/s.
    """

    __slots__ = ("_items", "_map")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._map: dict[str, str] = {}
        for key, value in items:
            self._map.setdefault(key.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._map.get(name.lower(), default)

    def __getitem__(self, name: str) -> str | None:
        return self._map.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)


MAX_HEADERS = 256


class _BadRequest(Exception):
    pass


class _Abort(Exception):
    """The connection was deliberately dropped; nothing more may be written."""


class _StreamWriter:
    """Writes SSE events: chunked framing (HTTP/1.1), optional gzip with sync flushes."""

    def __init__(self, wfile: Any, chunked: bool, gzip_body: bool) -> None:
        self._wfile = wfile
        self._chunked = chunked
        self._z = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip_body else None

    def _frame(self, data: bytes) -> bytes:
        if not self._chunked or not data:
            return data
        return b"".join((b"%x\r\n" % len(data), data, b"\r\n"))

    def send(self, data: bytes) -> None:
        if self._z is not None:
            data = self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        self._wfile.write(self._frame(data))

    def finish(self) -> None:
        tail = self._z.flush() if self._z is not None else b""
        out = self._frame(tail)
        if self._chunked:
            out += b"0\r\n\r\n"
        if out:
            self._wfile.write(out)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cloudflare"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT
    server: _Server

    # Every method (GET, POST, PATCH, FOO...) goes to the same dispatcher.
    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def version_string(self) -> str:
        return "cloudflare"

    def parse_request(self) -> bool:
        """Parse the request line and headers ourselves: fast, raw target, headers as sent."""
        self.command = None  # type: ignore[assignment]
        self.request_version = "HTTP/1.1"  # so send_error() writes a status line
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            self.send_error(400, "Bad request line")
            return False
        self.command, self.path, self.request_version = words
        items: list[tuple[str, str]] = []
        while True:
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            if len(line) > 65536 or len(items) >= MAX_HEADERS:
                self.send_error(431)
                return False
            text = line.decode("iso-8859-1").rstrip("\r\n")
            if text[:1] in (" ", "\t") and items:  # obsolete line folding
                key, value = items[-1]
                items[-1] = (key, f"{value} {text.strip()}")
                continue
            key, sep, value = text.partition(":")
            if not sep or not key:
                self.send_error(400, "Bad header line")
                return False
            items.append((key, value.strip(" \t")))
        self.headers = _Headers(items)  # type: ignore[assignment]
        tokens = {t.strip() for t in (self.headers.get("Connection") or "").lower().split(",")}
        # HTTP/1.0 always closes: simpler than echoing "Connection: keep-alive".
        self.close_connection = self.request_version != "HTTP/1.1" or "close" in tokens
        expect = (self.headers.get("Expect") or "").lower()
        if expect == "100-continue" and self.request_version == "HTTP/1.1":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    # ---- low-level output -------------------------------------------------

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        self._status = status
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}", f"Date: {_http_date()}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _gateway_headers(self, ok: bool) -> list[tuple[str, str]]:
        event_id = self.headers.get("cf-aig-event-id") or _uuid7()
        out = [
            ("cf-aig-log-id", _ulid()),
            ("cf-aig-request-id", _ulid()),
            ("cf-aig-event-id", event_id),
            ("cf-aig-step", "0"),
        ]
        if ok:
            out.append(("cf-aig-cache-status", "MISS"))
        out += [("cf-ray", f"{random.getrandbits(64):016x}-SJC"), ("server", "cloudflare")]
        return out

    def _send_json(self, status: int, obj: Any, extra: list[tuple[str, str]] | None = None) -> None:
        if self._pre_delay:
            self.server.gateway._sleep(self._pre_delay)
        body = _dumps(obj)
        headers = [("Content-Type", "application/json")]
        if _accepts_gzip(self.headers.get("Accept-Encoding")):
            # Cloudflare's edge gzips application/json for clients that accept it.
            body = zlib.compress(body, 6, 31)
            headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
        headers.append(("Content-Length", str(len(body))))
        headers += extra or []
        headers += self._gateway_headers(200 <= status < 300)
        head = self._head(status, headers)
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _gateway_error(self, code: int, message: str | None = None) -> None:
        status, default_message = GATEWAY_ERRORS[code]
        message = message or default_message
        self._send_json(
            status,
            {
                "success": False,
                "result": [],
                "messages": [],
                "error": [{"code": code, "message": message}],
                "name": "AiGatewayError",
                "httpCode": status,
                "internalCode": code,
                "message": message,
                "description": message,
            },
        )

    def _provider_error(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        err = {"message": message, "type": type_, "param": param, "code": code}
        self._send_json(status, {"error": err}, extra)

    def _reset(self) -> None:
        """Abort with a TCP RST: SO_LINGER 0, then a real close of the socket."""
        self.close_connection = True
        sock = self.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.rfile.close()  # drop makefile()'s reference, or close() is deferred
        except OSError:
            pass
        sock.close()
        raise _Abort

    # ---- request intake ---------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed during chunked body")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _BadRequest("bad chunk size") from None
                if size == 0:
                    break
                data = self.rfile.read(size)
                if len(data) < size:
                    raise ConnectionError("client closed during chunked body")
                parts.append(data)
                self.rfile.readline(65537)
            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        n = _int_header(length, -1)
        if n is None or n < 0:
            raise _BadRequest("bad Content-Length")
        data = self.rfile.read(n)
        if len(data) < n:
            raise ConnectionError("client closed during body")
        return data

    def _dispatch(self) -> None:
        self._status = 0
        self._pre_delay = 0.0
        gw = self.server.gateway
        target = self.path  # raw request target, exactly as sent
        if target[:8].lower().startswith(("http://", "https://")):  # absolute-form target
            slash = target.find("/", target.find("//") + 2)
            target = target[slash:] if slash >= 0 else "/"
        path, _, query = target.partition("?")
        try:
            try:
                body = self._read_body()
                bad = None
            except _BadRequest as exc:
                body, bad = b"", str(exc)
            gw._record(Recorded(self.command, path, query, list(self.headers.items()), body))
            if bad is not None:
                self.close_connection = True
                self._provider_error(400, f"Malformed request: {bad}")
                return
            self._route(gw, path, query, body)
        except _Abort:
            pass
        except OSError:
            self.close_connection = True
        finally:
            if gw._log is not None:
                q = "?" + query if query else ""
                status = self._status or "dropped"
                print(f"{self.command} {path}{q} -> {status}", file=gw._log, flush=True)

    # ---- routing ----------------------------------------------------------

    def _route(self, gw: StandinGateway, path: str, query: str, body: bytes) -> None:
        h = self.headers
        if h.get("x-standin-echo") == "1":
            self._send_json(
                200,
                {
                    "method": self.command,
                    "path": path,
                    "query": query,
                    "headers": [[k, v] for k, v in h.items()],
                    "body": body.decode("utf-8", "replace"),
                },
            )
            return
        close = (h.get("x-standin-close") or "").strip().lower()
        if close == "before-headers":
            self.close_connection = True
            return
        if close == "mid-body":
            full = _dumps(self._completion("openai/gpt-4o-mini", {}, None))
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(full) + 100))]
            self.wfile.write(self._head(200, headers + self._gateway_headers(True)) + full[: len(full) // 2])
            self._reset()
        hang = h.get("x-standin-hang")
        if hang is not None:
            try:
                seconds = min(max(float(hang), 0.0), MAX_HANG)
            except ValueError:
                seconds = 0.0
            gw._sleep(seconds)
            self.close_connection = True
            return

        if not path.startswith(gw.gateway_prefix):
            self._gateway_error(2001)
            return
        rest = path[len(gw.gateway_prefix) :]
        if rest != "compat" and not rest.startswith("compat/"):
            # Provider-native routes (.../openai/..., .../anthropic/...) are not emulated.
            self._gateway_error(2008)
            return
        sub = rest[len("compat/") :]
        status_override = _int_header(h.get("x-standin-status"))
        if status_override is not None and not 400 <= status_override <= 599:
            status_override = None
        routes = {"chat/completions": "POST", "embeddings": "POST", "models": "GET"}
        if status_override is None and sub not in routes:
            self._gateway_error(2019, f"Compatibility endpoint: {sub} is not supported.")
            return
        if gw.require_token is not None and h.get("cf-aig-authorization") != f"Bearer {gw.require_token}":
            self._gateway_error(2009)
            return
        delay_ms = _int_header(h.get("x-standin-delay-ms"), 0) or 0
        self._pre_delay = max(delay_ms, 0) / 1000
        if status_override is not None:
            type_, code = _PROVIDER_ERRORS.get(
                status_override,
                ("server_error", "server_error")
                if status_override >= 500
                else ("invalid_request_error", f"http_{status_override}"),
            )
            retry_after = h.get("x-standin-retry-after")
            self._provider_error(
                status_override,
                f"Stand-in provider error {status_override}",
                type_,
                code=code,
                extra=[("Retry-After", retry_after.strip())] if retry_after else None,
            )
            return
        allowed = routes[sub]
        method = "GET" if self.command == "HEAD" and allowed == "GET" else self.command
        if method != allowed:
            self._provider_error(
                405, f"Invalid method for URL ({self.command} {path})", extra=[("Allow", allowed)]
            )
            return
        if sub == "models":
            data = [
                {"id": mid, "object": "model", "created": 1715367049, "owned_by": owner}
                for mid, owner in MODELS
            ]
            self._send_json(200, {"object": "list", "data": data})
            return
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            req = None
        if not isinstance(req, dict):
            self._provider_error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
                "sent was not valid JSON.)",
            )
            return
        model = req.get("model")
        provider, slash, name = model.partition("/") if isinstance(model, str) else ("", "", "")
        if not (provider and slash and name) or provider.startswith("@"):
            self._gateway_error(2008)
            return
        if sub == "embeddings":
            self._embeddings(model, req)
        else:
            self._chat(model, req)

    # ---- endpoints --------------------------------------------------------

    def _embeddings(self, model: str, req: dict[str, Any]) -> None:
        inp = req.get("input")
        if isinstance(inp, str) or (isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp)):
            items = [inp]
        elif isinstance(inp, list) and inp:
            items = inp
        else:
            self._provider_error(400, "'input' is a required property", param="input")
            return
        tokens = sum(len(x) if isinstance(x, list) else _count_words(x) for x in items)
        as_base64 = req.get("encoding_format") == "base64"
        data = []
        for i, item in enumerate(items):
            vec: Any = _embedding(item)
            if as_base64:  # what the OpenAI SDK asks for by default
                vec = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self._hold_non_stream()
        self._send_json(200, {"object": "list", "data": data, "model": model, "usage": usage})

    @staticmethod
    def _prompt_tokens(req: dict[str, Any]) -> int:
        messages = req.get("messages")
        if not isinstance(messages, list):
            return 0
        return sum(_count_words(m.get("content")) for m in messages if isinstance(m, dict))

    def _tool_name(self, req: dict[str, Any]) -> str | None:
        tools = req.get("tools")
        if isinstance(tools, list) and tools:
            fn = tools[0].get("function") if isinstance(tools[0], dict) else None
            name = fn.get("name") if isinstance(fn, dict) else None
            return name if isinstance(name, str) and name else DEFAULT_TOOL_NAME
        if self.headers.get("x-standin-tool-call") == "1":
            return DEFAULT_TOOL_NAME
        return None

    def _completion(self, model: str, req: dict[str, Any], tool: str | None) -> dict[str, Any]:
        prompt = self._prompt_tokens(req)
        message: dict[str, Any] = {"role": "assistant", "content": REPLY_TEXT, "refusal": None}
        finish = "stop"
        completion = len(REPLY_WORDS)
        if tool:
            call = {
                "id": "call_standin0",
                "type": "function",
                "function": {"name": tool, "arguments": TOOL_ARGUMENTS},
            }
            message.update(content=None, tool_calls=[call])
            finish = "tool_calls"
            completion = len(TOOL_ARGUMENTS.split())
        return {
            "id": f"chatcmpl-{random.getrandbits(96):024x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    def _chat(self, model: str, req: dict[str, Any]) -> None:
        if not isinstance(req.get("messages"), list):
            self._gateway_error(2019)  # field reports: compat answers 2019 for malformed bodies
            return
        tool = self._tool_name(req)
        if req.get("stream") is True:
            self._chat_stream(model, req, tool)
        else:
            self._hold_non_stream()
            self._send_json(200, self._completion(model, req, tool))

    def _hold_non_stream(self) -> None:
        """x-standin-hold on a non-streamed call: hold before answering (in-flight tests)."""
        hold = self.headers.get("x-standin-hold")
        if hold:
            self.server.gateway._hold(hold)

    def _chunk_events(self, model: str, req: dict[str, Any], tool: str | None) -> Any:
        """Yield SSE events lazily (big streams never sit in memory)."""
        h = self.headers
        opts = req.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        base: dict[str, Any] = {
            "id": f"chatcmpl-{random.getrandbits(96):024x}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [],
        }
        if include_usage:
            base["usage"] = None  # OpenAI adds a null usage to every chunk when asked

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            base["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            return b"data: " + _dumps(base) + b"\n\n"

        if tool:
            first_call = {
                "index": 0,
                "id": "call_standin0",
                "type": "function",
                "function": {"name": tool, "arguments": ""},
            }
            yield event({"role": "assistant", "content": None, "tool_calls": [first_call], "refusal": None})
            for piece in TOOL_ARGUMENT_PIECES:
                yield event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            yield event({}, "tool_calls")
            completion = len(TOOL_ARGUMENTS.split())
        else:
            n_events = max(_int_header(h.get("x-standin-events"), len(REPLY_WORDS)) or 0, 0)
            event_bytes = max(_int_header(h.get("x-standin-event-bytes"), 0) or 0, 0)
            yield event({"role": "assistant", "content": "", "refusal": None})
            pads: dict[int, bytes] = {}
            for i in range(n_events):
                word = REPLY_WORDS[i % len(REPLY_WORDS)]
                text = word if i == 0 else " " + word
                if event_bytes:
                    # Splice the padding in as bytes: JSON-encoding 64 KB per event halves throughput.
                    ev = event({"content": text + _PAD_MARK.decode()})
                    pad = event_bytes - (len(ev) - len(_PAD_MARK))
                    if pad > 0:
                        if pad not in pads:
                            pads[pad] = b"x" * pad
                        ev = ev.replace(_PAD_MARK, pads[pad], 1)
                    else:
                        ev = ev.replace(_PAD_MARK, b"", 1)
                else:
                    ev = event({"content": text})
                yield ev
            yield event({}, "stop")
            completion = n_events
        if include_usage:
            prompt = self._prompt_tokens(req)
            base["choices"] = []
            base["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            }
            yield b"data: " + _dumps(base) + b"\n\n"
        yield b"data: [DONE]\n\n"

    def _chat_stream(self, model: str, req: dict[str, Any], tool: str | None) -> None:
        h = self.headers
        gw = self.server.gateway
        gzip_body = (h.get("x-standin-encoding") or "").strip().lower() == "gzip"
        chunked = self.request_version != "HTTP/1.0"
        if not chunked:
            self.close_connection = True  # HTTP/1.0: the body ends at close
        delay = self._pre_delay
        hold = h.get("x-standin-hold")
        reset_after = _int_header(h.get("x-standin-reset-after"))
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        if gzip_body:
            headers.append(("Content-Encoding", "gzip"))
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        self.wfile.write(self._head(200, headers + self._gateway_headers(True)))
        writer = _StreamWriter(self.wfile, chunked, gzip_body)
        sent = 0
        for ev in self._chunk_events(model, req, tool):
            if reset_after is not None and sent >= reset_after:
                self._reset()
            if sent and delay:
                gw._sleep(delay)
            writer.send(ev)
            sent += 1
            if sent == 1 and hold:
                gw._hold(hold)
        if reset_after is not None:
            self._reset()  # reset-after beyond the last event: drop the terminating chunk
        writer.finish()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024  # benchmarks open hundreds of connections at once

    def __init__(self, address: tuple[str, int], gateway: StandinGateway) -> None:
        self.gateway = gateway
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse-DNS getfqdn(); skip it (slow or hanging offline).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Unblock handler threads so keep-alive clients see the gateway go away."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # clients hanging up mid-stream is normal
        super().handle_error(request, client_address)


class StandinGateway:
    """The stand-in server; runs in a background thread, records every request."""

    def __init__(
        self,
        account_id: str = DEFAULT_ACCOUNT_ID,
        gateway_id: str = DEFAULT_GATEWAY_ID,
        require_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log: TextIO | None = None,
    ) -> None:
        for value in (account_id, gateway_id):
            if not value or "/" in value or "?" in value:
                raise ValueError(f"invalid id: {value!r}")
        self.account_id = account_id
        self.gateway_id = gateway_id
        self.require_token = require_token
        self.host = host
        self._requested_port = port
        self._log = log
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._held: dict[str, int] = {}
        self._released: set[str] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None

    # ---- addresses --------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (still known after stop(), e.g. to assert connection refused)."""
        if self._port is None:
            raise RuntimeError("StandinGateway not started")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def gateway_prefix(self) -> str:
        return f"/v1/{self.account_id}/{self.gateway_id}/"

    @property
    def compat_prefix(self) -> str:
        return f"/v1/{self.account_id}/{self.gateway_id}/compat"

    @property
    def compat_url(self) -> str:
        """What an OpenAI SDK would use as base_url against the real gateway."""
        return self.base_url + self.compat_prefix

    # ---- lifecycle --------------------------------------------------------

    def start(self) -> StandinGateway:
        if self._server is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        self._server = _Server((self.host, self._requested_port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"standin-gateway-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()  # first, so held/hanging streams die instead of finishing
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> StandinGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- recording and control --------------------------------------------

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)

    def clear(self) -> None:
        """Forget recorded requests and hold/release state."""
        with self._lock:
            self.requests.clear()
        with self._cond:
            self._held.clear()
            self._released.clear()

    def release(self, name: str) -> None:
        """Release streams held under `name`, now and later (sticky until clear())."""
        with self._cond:
            self._released.add(name)
            self._cond.notify_all()

    def wait_held(self, name: str, timeout: float = 5.0, count: int = 1) -> bool:
        """True once `count` streams with this hold name sent their first event and blocked."""
        with self._cond:
            return self._cond.wait_for(lambda: self._held.get(name, 0) >= count, timeout)

    def _hold(self, name: str) -> None:
        with self._cond:
            self._held[name] = self._held.get(name, 0) + 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: name in self._released or self._stopping.is_set(), HOLD_TIMEOUT)

    def _sleep(self, seconds: float) -> None:
        """Sleep that stop() interrupts, so no handler outlives the server by long."""
        if seconds > 0:
            self._stopping.wait(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Local stand-in for Cloudflare AI Gateway's compat endpoint."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_CLI_PORT)
    parser.add_argument("--account-id", default=DEFAULT_ACCOUNT_ID)
    parser.add_argument("--gateway-id", default=DEFAULT_GATEWAY_ID)
    parser.add_argument("--require-token", default=None, help="require cf-aig-authorization: Bearer TOKEN")
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines on stderr")
    args = parser.parse_args(argv)
    gw = StandinGateway(
        args.account_id,
        args.gateway_id,
        args.require_token,
        args.host,
        args.port,
        log=None if args.quiet else sys.stderr,
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        gw.start()
    except OSError as exc:
        print(f"stand-in gateway: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"stand-in gateway listening on {gw.base_url} (compat prefix {gw.compat_prefix})", flush=True)
    while not stop.wait(0.5):
        pass
    gw.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
