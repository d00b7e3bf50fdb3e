#!/usr/bin/env python3
"""Local stand-in for Cloudflare AI Gateway: the compat endpoint, the OpenAI and Anthropic
provider-native routes, and Cloudflare's REST API (``/client/v4/accounts/{account}/ai/...``).

Why: cf-gateway's end-to-end tests and benchmarks need an upstream that behaves like
``gateway.ai.cloudflare.com/v1/{account}/{gateway}/...`` (URLs, error envelopes and codes,
``cf-aig-*`` headers, SSE streaming, gzip) without network access or real keys.
``x-standin-*`` request headers let tests that go through the proxy script failures.
Stdlib only, so it runs in any venv the proxy runs in (Python 3.11+).

In-process::

    with StandinGateway(require_token="tok") as gw:
        httpx.post(gw.compat_url + "/chat/completions", ...)
        anthropic.Anthropic(base_url=gw.anthropic_url, api_key="sk-ant-...")
        openai.OpenAI(base_url=gw.openai_url, api_key="sk-...")
        openai.OpenAI(base_url=gw.rest_openai_url, api_key=STANDIN_API_TOKEN)  # REST API
        anthropic.Anthropic(base_url=gw.rest_anthropic_url, auth_token=STANDIN_API_TOKEN)
        gw.requests[-1].path, gw.requests[-1].authorization, gw.requests[-1].aig_gateway_id

``require_token=None`` (the default) emulates a gateway created before 2026-11-03 without
authentication; real new gateways always require ``cf-aig-authorization``, so tests of the
normal case pass a token.

CLI (``./run.sh demo``, benchmarks)::

    python tests/standin_gateway.py [--host H] [--port P] [--account-id A]
        [--gateway-id G] [--require-token T] [--api-token T] [--quiet]

Routes under ``/v1/{account}/{gateway}/``:

- ``compat/chat/completions``, ``compat/embeddings`` (POST), ``compat/models`` (GET):
  OpenAI format, ``{provider}/{model}`` names.
- ``openai/responses`` (POST), ``openai/responses/{id}`` (GET, DELETE),
  ``openai/responses/{id}/input_items`` (GET), ``openai/responses/{id}/cancel`` (POST),
  ``openai/chat/completions`` (POST): OpenAI's own API, bare model names. Created responses
  are remembered (the last 1000, unless ``store: false``); ``background: true`` ones stay
  ``queued`` until the first retrieve, so cancel has something to cancel.
- ``anthropic/v1/messages``, ``anthropic/v1/messages/count_tokens`` (POST, any query):
  Anthropic's own API, bare model names.
- Other ``{provider}/...`` routes are not emulated: 400/2008.

Order of checks: record -> x-standin-echo -> x-standin-close/-hang -> prefix (2001)
-> compat sub-path (2019; skipped when x-standin-status is set) or provider (2008)
-> token (2009) -> x-standin-status -> then per route:
compat: method (405) -> body (invalid JSON, 2008 provider) -> answer;
openai/anthropic: route (provider's 404) -> method (405) -> provider key (401)
-> anthropic-version (400) -> body and fields (400) -> model (Anthropic 404, OpenAI 400/404) -> answer.

Provider keys on native routes (no header = Unified Billing / stored key, accepted): the gateway
forwards any key header, so the stand-in checks it like the provider does. Anthropic: ``x-api-key``
must start with ``sk-ant-`` (else 401 ``invalid x-api-key``); any ``Authorization`` must be
``Bearer sk-ant-...`` (else 401 ``Invalid bearer token``). OpenAI: any ``Authorization`` must be
``Bearer sk-...`` (else 401 ``invalid_api_key``).

REST API routes under ``/client/v4/accounts/{account}/ai/`` (same server, so a proxy's
CF_BASE_URL can point at it), all POST, model names ``author/model`` or ``@cf/author/model``:

- ``run``: ``{"model", "input": {...}}`` -> ``{"result": {"response", "usage": {prompt_tokens,
  completion_tokens, total_tokens}}, "success": true, "errors": [], "messages": []}``; with
  ``input.stream: true``, Workers AI's SSE: ``data: {"response": "<word>"}`` events, a last
  ``data: {"response": "", "usage": {...}}``, then ``data: [DONE]``. Always text.
- ``v1/chat/completions``, ``v1/responses``, ``v1/messages``: the OpenAI chat, Responses and
  Anthropic Messages formats, as on the gateway routes (streams, tool calls, thinking).
- Anything else under ``/client/v4/`` (``v1/models``, ``v1/embeddings``,
  ``v1/messages/count_tokens``, ``GET v1/responses/{id}``, a wrong method): 404/7000.

REST errors use Cloudflare's v4 envelope ``{"result": null, "success": false, "errors":
[{"code", "message"}], "messages": []}``. Order of checks: record -> x-standin-echo
-> x-standin-close/-hang -> route (404/7000 ``No route for that URI``)
-> ``Authorization: Bearer <api_token>`` (401/10000 ``Authentication error``; ``require_token``
plays no part) -> account (404/7003 ``Could not route to <path>, perhaps your object identifier
is invalid?``) -> x-standin-status -> body (400/5006 ``Bad input: ...``) -> model name
(400/5007 ``No such model <model> or task``) -> ``@cf/`` model without ``cf-aig-gateway-id``
(400/2001) -> answer. Inferred, not documented: 5006 and 5007 (Workers AI's codes) and 2001 for
these cases, 7000 for a wrong method. The ``cf-aig-gateway-id`` header is recorded
(``Recorded.aig_gateway_id``), not checked.

Test-control request headers (every route; streams of all formats):

- ``x-standin-echo: 1``: 200 JSON {method, path, query, headers, body} on any path.
- ``x-standin-close: before-headers`` (FIN, no answer) / ``mid-body`` (short body, RST);
  ``x-standin-hang: S``: silence for S seconds (max 60), then close.
- ``x-standin-status: 4xx|5xx`` (+ ``x-standin-retry-after``): provider error in the route's
  provider shape (OpenAI's for compat and openai, Anthropic's for anthropic); on REST routes
  a v4 error: 400/5006, 401 and 403/10000 ``Authentication error``, 402/2021 ``Insufficient
  balance``, 404/7000, 429/2003 ``Rate limited``, other 4xx/5006, 5xx/2005.
- ``x-standin-events: N``, ``x-standin-event-bytes: B`` (each text event exactly B bytes;
  Responses streams pad the ``obfuscation`` field so ``*.done`` texts stay clean),
  ``x-standin-delay-ms: D`` (between stream events; once before a JSON answer).
- ``x-standin-hold: NAME``: streams block after their first event, JSON answers before
  being sent, until ``release(NAME)`` (sticky until ``clear()``) or 30 s.
- ``x-standin-reset-after: N``: RST after N stream events (``data: [DONE]`` counts).
- ``x-standin-encoding: gzip``: gzip the SSE body, sync-flushed per event.
- ``x-standin-tool: NAME``, ``x-standin-tool-call: 1``, ``x-standin-tool-args: {JSON}``: see below.

Tool calls: chat, Responses and Messages requests (gateway and REST routes) get what a model in an
agent loop answers, so agent CLIs finish their loop:

1. The conversation ends with a tool result (chat: last message has role ``tool``; Responses:
   last ``input`` item is a ``function_call_output`` or other ``*_call_output``; Messages: the
   last user message holds ``tool_result`` blocks): text, ``Done: the tool returned N
   characters.`` (N = length of the last result's text), never a call, whatever the headers.
   One tool round per conversation: once it holds a call of the model's (chat ``tool_calls``,
   a ``tool_use`` block, a ``function_call`` item), later answers are text (REPLY_TEXT) too;
   else Claude Code's background-agent notifications would start a new round each time.
2. Else a call when there are callable tools: chat ``function`` tools, Responses ``type:
   function`` tools, Anthropic tools with an ``input_schema`` (Codex's ``local_shell`` or
   ``web_search``, Anthropic server tools are skipped). Which: ``x-standin-tool: NAME`` (text if
   no such tool), else the first. ``x-standin-tool-call: 1`` without callable tools calls
   ``get_weather``. No tools: text (REPLY_TEXT).
3. Arguments: ``x-standin-tool-args`` (a JSON object; anything else is a 400 in the route's
   error shape), else filled from the tool's schema (chat ``function.parameters``, Responses
   ``parameters``, Anthropic ``input_schema``): every required property gets its first enum value
   or an example of its type (string ``"example"``, but ``command``/``cmd`` ``"echo standin"``
   and ``path``/``file_path`` ``"README.md"``; an array ``command`` ``["echo", "standin"]``;
   integer/number 1; boolean true; array []; object: its required properties). A schema that
   requires nothing gets TOOL_ARGUMENTS ``{"city": "Paris"}``, or ``{}`` with
   ``additionalProperties: false``. Streams send the arguments in 5-character pieces
   (``tool_calls`` deltas, ``input_json_delta``, ``response.function_call_arguments.delta``).
"""

from __future__ import annotations

import argparse
import base64
import collections
import email.utils
import functools
import hashlib
import http
import itertools
import json
import random
import signal
import socket
import socketserver
import string
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, TextIO

DEFAULT_ACCOUNT_ID = "0123456789abcdef0123456789abcdef"
DEFAULT_GATEWAY_ID = "test-gw"
DEFAULT_CLI_PORT = 8787

REPLY_TEXT = "Hello from the stand-in gateway."
REPLY_WORDS = REPLY_TEXT.split()
DEFAULT_TOOL_NAME = "get_weather"
# Arguments of a call to DEFAULT_TOOL_NAME, or to a tool whose schema requires nothing.
TOOL_ARGUMENTS = '{"city": "Paris"}'
# Streams carry a call's arguments in pieces of this many characters (as JSON text).
ARGUMENT_PIECE_CHARS = 5
TOOL_ARGUMENT_PIECES = ('{"cit', 'y": "', "Paris", '"}')  # TOOL_ARGUMENTS in pieces, as streamed
# The final answer after a tool result ("Done: the tool returned 12 characters.").
TOOL_RESULT_REPLY = "Done: the tool returned {} characters."
# Example values for required tool arguments: by property name first, then by JSON type.
EXAMPLE_BY_NAME: dict[str, Any] = {
    "command": "echo standin",  # Claude Code's Bash; an array-typed "command" (Codex's shell) gets a list
    "cmd": "echo standin",  # Codex's exec_command
    "path": "README.md",
    "file_path": "README.md",
}
EXAMPLE_BY_TYPE: dict[str, Any] = {
    "string": "example",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "null": None,
}
SYSTEM_FINGERPRINT = "fp_standin"
THINKING_TEXT = "The user wants a short greeting."
THINKING_SIGNATURE = "EqQBCkYIBxgCKkBzdGFuZC1pbiB0aGlua2luZyBzaWduYXR1cmU="
MAX_STORED_RESPONSES = 1000
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

# Cloudflare's REST API (api.cloudflare.com/client/v4/accounts/{account}/ai/...).
STANDIN_API_TOKEN = "StandinCloudflareApiToken_0123456789abcd"  # the default Cloudflare API token
REST_PREFIX = "/client/v4/"
REST_ROUTES = ("run", "v1/chat/completions", "v1/responses", "v1/messages")  # all POST
# x-standin-status on REST routes: status -> (code, message); others: 5006 (4xx) or 2005 (5xx).
CLOUDFLARE_STATUS_ERRORS = {
    400: (5006, "Bad input"),
    401: (10000, "Authentication error"),
    402: (2021, "Insufficient balance"),
    403: (10000, "Authentication error"),
    404: (7000, "No route for that URI"),
    429: (2003, "Rate limited"),
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

SSE_UTF8 = "text/event-stream; charset=utf-8"  # what Anthropic and OpenAI send (compat: no charset)
COMPAT_ROUTES = {"chat/completions": "POST", "embeddings": "POST", "models": "GET"}
NATIVE_PROVIDERS = ("openai", "anthropic")

# Anthropic error type for x-standin-status on the anthropic route.
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
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


def _bearer_token(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (any case of "Bearer"), else None."""
    if value is None or value[:7].lower() != "bearer ":
        return None
    return value[7:].strip()


def _int_header(value: str | None, default: int | None = None) -> int | None:
    if value is None:
        return default
    try:
        return int(value.strip())
    except ValueError:
        return default


_ID_CHARS = string.ascii_letters + string.digits


def _hex_id(prefix: str) -> str:
    """OpenAI's long ids: resp_/msg_/fc_/rs_ plus 50 hex digits."""
    return f"{prefix}{random.getrandbits(200):050x}"


def _base62_id(prefix: str, length: int = 22) -> str:
    """Anthropic's ids (msg_01..., toolu_01..., req_011C...) and OpenAI's call_ ids."""
    return prefix + "".join(random.choices(_ID_CHARS, k=length))


def _reply_pieces(n: int, text: str = REPLY_TEXT) -> Iterator[str]:
    """The streamed text: its words cycled, one per event (joined == text for n = its word count)."""
    words = text.split()
    for i in range(n):
        word = words[i % len(words)]
        yield word if i == 0 else " " + word


def _sized(render: Callable[[str], bytes], size: int, fillers: dict[int, bytes]) -> bytes:
    """``render(filler)`` grown to exactly `size` bytes (when it fits) by filler 'x's.

    The filler is spliced in as bytes at _PAD_MARK: JSON-encoding 64 KB per event halves throughput.
    """
    if size <= 0:
        return render("")
    event = render(_PAD_MARK.decode())
    pad = size - (len(event) - len(_PAD_MARK))
    if pad <= 0:
        return event.replace(_PAD_MARK, b"", 1)
    filler = fillers.get(pad)
    if filler is None:
        filler = fillers[pad] = b"x" * pad
    return event.replace(_PAD_MARK, filler, 1)


def _sse(name: str, data: dict[str, Any]) -> bytes:
    """One named SSE event, as Anthropic and the Responses API send them."""
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


# ---- the model's turn: text, or a call of one of the request's tools ----------


class Turn(NamedTuple):
    """What the stand-in model answers a request with: `text`, or a call of `tool`."""

    text: str
    tool: str | None = None
    arguments: str = TOOL_ARGUMENTS  # the call's arguments, JSON text


def _plain_text(content: Any) -> str:
    """The text of message or tool-result content: a string, or a list of strings / text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
    return "".join(texts)


def _function_tools(fmt: str, req: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, JSON schema) of each tool the model may call, in request order.

    fmt "chat": ``{"type": "function", "function": {"name", "parameters"}}``; "responses":
    ``{"type": "function", "name", "parameters"}``; "messages": ``{"name", "input_schema"}``.
    Other tools (Codex's local_shell or web_search, Anthropic's server tools) are skipped.
    """
    tools = req.get("tools")
    if not isinstance(tools, list):
        return []
    found = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        if fmt == "chat":
            function = tool.get("function")
            if tool.get("type", "function") != "function" or not isinstance(function, dict):
                continue
            name, schema = function.get("name"), function.get("parameters")
        elif fmt == "responses":
            if tool.get("type") != "function":
                continue
            name, schema = tool.get("name"), tool.get("parameters")
        else:
            name, schema = tool.get("name"), tool.get("input_schema")
            if not isinstance(schema, dict):
                continue
        if isinstance(name, str) and name:
            found.append((name, schema))
    return found


def _last_tool_result(fmt: str, req: dict[str, Any]) -> str | None:
    """The output of the tool result that ends the conversation; None when it ends otherwise.

    chat: the last message has role "tool"; responses: the last input item is a
    ``function_call_output`` (or another ``*_call_output``); messages: the last user message
    holds ``tool_result`` blocks (the last one counts).
    """
    if fmt == "chat":
        messages = req.get("messages")
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            if messages[-1].get("role") == "tool":
                return _plain_text(messages[-1].get("content"))
        return None
    if fmt == "responses":
        items = req.get("input")
        if isinstance(items, list) and items and isinstance(items[-1], dict):
            kind = items[-1].get("type")
            if isinstance(kind, str) and kind.endswith("_call_output"):
                return _plain_text(items[-1].get("output"))
        return None
    messages = req.get("messages")
    if not isinstance(messages, list):
        return None
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1].get("content"), list):
        return None
    results = [b for b in users[-1]["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
    if not results:
        return None
    return _plain_text(results[-1].get("content"))


def _has_tool_call(fmt: str, req: dict[str, Any]) -> bool:
    """Whether the conversation already holds a tool call of the model's.

    chat: an assistant message with ``tool_calls``; responses: an input item of type
    ``function_call`` (or another ``*_call``); messages: an assistant ``tool_use`` block.
    """
    if fmt == "responses":
        items = req.get("input")
        if not isinstance(items, list):
            return False
        for item in items:
            kind = item.get("type") if isinstance(item, dict) else None
            if isinstance(kind, str) and kind.endswith("_call"):
                return True
        return False
    messages = req.get("messages")
    if not isinstance(messages, list):
        return False
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        if fmt == "chat" and message.get("tool_calls"):
            return True
        content = message.get("content")
        if fmt == "messages" and isinstance(content, list):
            if any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content):
                return True
    return False


def _example_value(name: str, schema: Any) -> Any:
    """A value that fits a property's schema, so that an agent can run the tool."""
    if not isinstance(schema, dict):
        schema = {}
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first non-null type
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        options = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(options, list) and options:
            return _example_value(name, options[0])
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        return _example_object(schema)
    if kind == "array" and name == "command":
        return ["echo", "standin"]  # Codex's shell tool takes argv
    if kind == "string" and name in EXAMPLE_BY_NAME:
        return EXAMPLE_BY_NAME[name]
    return EXAMPLE_BY_TYPE.get(kind, "example")


def _example_object(schema: dict[str, Any]) -> dict[str, Any]:
    """An object with every required property of `schema` filled in."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        properties = {}
    required = schema.get("required")
    if not isinstance(required, list):
        return {}
    return {name: _example_value(name, properties.get(name)) for name in required if isinstance(name, str)}


def _schema_arguments(schema: Any) -> str:
    """A call's arguments (JSON text) for a tool's JSON schema.

    Every required property gets an example value. A schema that requires nothing gets the
    classic TOOL_ARGUMENTS, or ``{}`` when it forbids unlisted properties
    (``additionalProperties: false``, as strict agent tools do).
    """
    if isinstance(schema, dict) and schema.get("required"):
        return json.dumps(_example_object(schema))
    if isinstance(schema, dict) and schema.get("additionalProperties") is False:
        return "{}"
    return TOOL_ARGUMENTS


def _override_arguments(value: str) -> str:
    """x-standin-tool-args: a JSON object, used as the call's arguments."""
    try:
        arguments = json.loads(value)
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ValueError(f"x-standin-tool-args is not a JSON object: {value}")
    return json.dumps(arguments)


def _model_turn(fmt: str, req: dict[str, Any], headers: Any) -> Turn:
    """The agent-loop rules: text after a tool result, else a call when there are tools.

    One tool round per conversation: once it holds a tool call, every answer is text (Claude
    Code's background-agent notifications would otherwise start a new round each time).
    fmt is "chat", "responses" or "messages". Raises ValueError for a bad x-standin-tool-args.
    """
    result = _last_tool_result(fmt, req)
    if result is not None:
        return Turn(TOOL_RESULT_REPLY.format(len(result)))
    if _has_tool_call(fmt, req):
        return Turn(REPLY_TEXT)
    tools = _function_tools(fmt, req)
    wanted = headers.get("x-standin-tool")
    if wanted is not None:
        matching = [tool for tool in tools if tool[0] == wanted]
        if not matching:
            return Turn(REPLY_TEXT)
        name, schema = matching[0]
    elif tools:
        name, schema = tools[0]
    elif headers.get("x-standin-tool-call") == "1":
        name, schema = DEFAULT_TOOL_NAME, None
    else:
        return Turn(REPLY_TEXT)
    override = headers.get("x-standin-tool-args")
    if override is not None:
        return Turn(REPLY_TEXT, name, _override_arguments(override))
    return Turn(REPLY_TEXT, name, _schema_arguments(schema))


def _argument_pieces(arguments: str) -> list[str]:
    """A call's arguments as streams carry them: pieces of ARGUMENT_PIECE_CHARS characters."""
    size = ARGUMENT_PIECE_CHARS
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


# ---- Anthropic Messages ------------------------------------------------------


def _anthropic_input_tokens(req: dict[str, Any]) -> int:
    messages = req.get("messages")
    total = _count_words(req.get("system"))
    if isinstance(messages, list):
        total += sum(_count_words(m.get("content")) for m in messages if isinstance(m, dict))
    return total


def _anthropic_thinking(req: dict[str, Any]) -> bool:
    thinking = req.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


def _anthropic_message(model: str, req: dict[str, Any], turn: Turn) -> dict[str, Any]:
    """A Messages API answer: [thinking] then tool_use or text."""
    content: list[dict[str, Any]] = []
    output = 0
    if _anthropic_thinking(req):
        content.append({"type": "thinking", "thinking": THINKING_TEXT, "signature": THINKING_SIGNATURE})
        output += len(THINKING_TEXT.split())
    if turn.tool:
        block = {"type": "tool_use", "id": _base62_id("toolu_01"), "name": turn.tool}
        content.append({**block, "input": json.loads(turn.arguments)})
        output += len(turn.arguments.split())
    else:
        content.append({"type": "text", "text": turn.text})
        output += len(turn.text.split())
    return {
        "id": _base62_id("msg_01"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": "tool_use" if turn.tool else "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": _anthropic_input_tokens(req),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output,
        },
    }


def _anthropic_delta(index: int, delta: dict[str, Any]) -> bytes:
    return _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _anthropic_text_delta(index: int, text: str, filler: str) -> bytes:
    return _anthropic_delta(index, {"type": "text_delta", "text": text + filler})


def _anthropic_events(message: dict[str, Any], n_events: int, event_bytes: int) -> Iterator[bytes]:
    """`message` as Anthropic streams it; its text block becomes `n_events` word deltas."""
    opening = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**message["usage"], "output_tokens": 1},
    }
    yield _sse("message_start", {"type": "message_start", "message": opening})
    output = 0
    fillers: dict[int, bytes] = {}
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "thinking":
            start: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
        elif kind == "tool_use":
            start = {**block, "input": {}}
        else:
            start = {"type": "text", "text": ""}
        opened = {"type": "content_block_start", "index": index, "content_block": start}
        yield _sse("content_block_start", opened)
        if index == 0:
            yield _sse("ping", {"type": "ping"})
        if kind == "thinking":
            words = block["thinking"].split(" ")
            half = len(words) // 2
            for piece in (" ".join(words[:half]), " " + " ".join(words[half:])):
                yield _anthropic_delta(index, {"type": "thinking_delta", "thinking": piece})
            yield _anthropic_delta(index, {"type": "signature_delta", "signature": block["signature"]})
            output += len(words)
        elif kind == "tool_use":
            arguments = json.dumps(block["input"])
            for piece in ("", *_argument_pieces(arguments)):  # Anthropic opens with an empty fragment
                yield _anthropic_delta(index, {"type": "input_json_delta", "partial_json": piece})
            output += len(arguments.split())
        else:
            for piece in _reply_pieces(n_events, block["text"]):
                yield _sized(functools.partial(_anthropic_text_delta, index, piece), event_bytes, fillers)
            output += n_events
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield _sse("message_delta", {"type": "message_delta", "delta": delta, "usage": {"output_tokens": output}})
    yield _sse("message_stop", {"type": "message_stop"})


# ---- OpenAI Responses --------------------------------------------------------


def _responses_input_tokens(req: dict[str, Any]) -> int:
    total = _count_words(req.get("instructions"))
    inp = req.get("input")
    if isinstance(inp, str):
        return total + _count_words(inp)
    if isinstance(inp, list):
        for item in inp:
            if isinstance(item, dict):
                total += _count_words(item.get("content")) + _count_words(item.get("output"))
    return total


def _responses_input_items(req: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's input as ``input_items`` lists it: message items with ids and typed parts."""
    inp = req.get("input")
    if isinstance(inp, str):
        inp = [{"role": "user", "content": inp}]
    if not isinstance(inp, list):
        return []
    items = []
    for raw in inp:
        if not isinstance(raw, dict):
            continue
        role = raw.get("role")
        if isinstance(role, str) and raw.get("type", "message") == "message":
            content = raw.get("content")
            if isinstance(content, str):
                kind = "output_text" if role == "assistant" else "input_text"
                content = [{"type": kind, "text": content}]
            item = {"type": "message", "id": _hex_id("msg_"), "status": "completed", "role": role}
            items.append({**item, "content": content})
        else:
            items.append({"id": _hex_id("item_"), **raw})
    return items


def _response_object(model: str, req: dict[str, Any], pieces: list[str], turn: Turn) -> dict[str, Any]:
    """A completed Responses API object: [reasoning] then function_call or message (text = pieces)."""
    reasoning = req.get("reasoning") if isinstance(req.get("reasoning"), dict) else None
    output: list[dict[str, Any]] = []
    reasoning_tokens = 0
    if reasoning is not None and reasoning.get("effort") != "none":
        wants_summary = reasoning.get("summary") in ("auto", "concise", "detailed")
        summary = [{"type": "summary_text", "text": THINKING_TEXT}] if wants_summary else []
        output.append({"type": "reasoning", "id": _hex_id("rs_"), "summary": summary})
        reasoning_tokens = len(THINKING_TEXT.split())
    if turn.tool:
        output.append(
            {
                "type": "function_call",
                "id": _hex_id("fc_"),
                "call_id": _base62_id("call_", 24),
                "name": turn.tool,
                "arguments": turn.arguments,
                "status": "completed",
            }
        )
        visible = len(turn.arguments.split())
    else:
        text = {"type": "output_text", "text": "".join(pieces), "annotations": [], "logprobs": []}
        message = {"type": "message", "id": _hex_id("msg_"), "status": "completed", "role": "assistant"}
        output.append({**message, "content": [text]})
        visible = len(pieces)
    input_tokens = _responses_input_tokens(req)
    output_tokens = visible + reasoning_tokens  # OpenAI counts reasoning inside output_tokens
    return {
        "id": _hex_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "background": req.get("background") is True,
        "error": None,
        "incomplete_details": None,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": req.get("parallel_tool_calls", True),
        "previous_response_id": req.get("previous_response_id"),
        "reasoning": {
            "effort": reasoning.get("effort") if reasoning else None,
            "summary": reasoning.get("summary") if reasoning else None,
        },
        "store": req.get("store") is not False,
        "temperature": req.get("temperature", 1.0),
        "text": {"format": {"type": "text"}},
        "tool_choice": req.get("tool_choice", "auto"),
        "tools": req.get("tools") or [],
        "top_p": req.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": None,
        "metadata": req.get("metadata") or {},
    }


def _unfinished(response: dict[str, Any], status: str) -> dict[str, Any]:
    """The response as seen before (or instead of) completing: no output, no usage."""
    return {**response, "status": status, "output": [], "usage": None}


def _responses_events(response: dict[str, Any], pieces: list[str], event_bytes: int) -> Iterator[bytes]:
    """`response` as the Responses API streams it: typed events with a running sequence_number."""
    sequence = itertools.count()

    def event(type_: str, **fields: Any) -> bytes:
        return _sse(type_, {"type": type_, "sequence_number": next(sequence), **fields})

    def text_delta(where: dict[str, Any], piece: str, filler: str) -> bytes:
        # OpenAI pads deltas with random "obfuscation" text: the natural place for test padding.
        extra = {"obfuscation": filler} if filler else {}
        return event("response.output_text.delta", **where, delta=piece, logprobs=[], **extra)

    pending = _unfinished(response, "in_progress")
    yield event("response.created", response=pending)
    yield event("response.in_progress", response=pending)
    fillers: dict[int, bytes] = {}
    for index, item in enumerate(response["output"]):
        kind = item["type"]
        if kind == "message":
            added = {**item, "status": "in_progress", "content": []}
        elif kind == "function_call":
            added = {**item, "arguments": "", "status": "in_progress"}
        else:
            added = {**item, "summary": []}
        yield event("response.output_item.added", output_index=index, item=added)
        if kind == "message":
            part = item["content"][0]
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            yield event("response.content_part.added", **where, part={**part, "text": ""})
            for piece in pieces:
                yield _sized(functools.partial(text_delta, where, piece), event_bytes, fillers)
            yield event("response.output_text.done", **where, text=part["text"], logprobs=[])
            yield event("response.content_part.done", **where, part=part)
        elif kind == "function_call":
            where = {"item_id": item["id"], "output_index": index}
            for piece in _argument_pieces(item["arguments"]):
                yield event("response.function_call_arguments.delta", **where, delta=piece)
            name, arguments = item["name"], item["arguments"]
            yield event("response.function_call_arguments.done", **where, name=name, arguments=arguments)
        else:
            for s_index, part in enumerate(item["summary"]):
                where = {"item_id": item["id"], "output_index": index, "summary_index": s_index}
                yield event("response.reasoning_summary_part.added", **where, part={**part, "text": ""})
                yield event("response.reasoning_summary_text.delta", **where, delta=part["text"])
                yield event("response.reasoning_summary_text.done", **where, text=part["text"])
                yield event("response.reasoning_summary_part.done", **where, part=part)
        yield event("response.output_item.done", output_index=index, item=item)
    yield event("response.completed", response=response)


# ---- Cloudflare's REST API -----------------------------------------------------


def _rest_model_ok(model: str) -> bool:
    """REST API model names: ``author/model`` (``openai/gpt-5``), or Workers AI's ``@cf/author/model``."""
    parts = model.split("/")
    if parts[0] == "@cf":
        return len(parts) == 3 and all(parts)
    return len(parts) == 2 and all(parts) and not parts[0].startswith("@")


def _ai_run_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _ai_run_events(prompt_tokens: int, n_events: int, event_bytes: int) -> Iterator[bytes]:
    """Workers AI's stream: ``data: {"response": piece}`` per word, a last event with usage, [DONE]."""

    def text_event(piece: str, filler: str) -> bytes:
        return b"data: " + _dumps({"response": piece + filler}) + b"\n\n"

    fillers: dict[int, bytes] = {}
    for piece in _reply_pieces(n_events):
        yield _sized(functools.partial(text_event, piece), event_bytes, fillers)
    last = {"response": "", "usage": _ai_run_usage(prompt_tokens, n_events)}
    yield b"data: " + _dumps(last) + b"\n\n"
    yield b"data: [DONE]\n\n"


class _StoredResponse:
    """A created response as retrieve/cancel/input_items see it.

    state: "sync" (created without background), "queued" (background, not yet retrieved),
    "completed" (background, retrieved once), "cancelled".
    """

    __slots__ = ("input_items", "response", "state")

    def __init__(self, response: dict[str, Any], input_items: list[dict[str, Any]], state: str) -> None:
        self.response = response
        self.input_items = input_items
        self.state = state

    def view(self) -> dict[str, Any]:
        if self.state in ("queued", "cancelled"):
            return _unfinished(self.response, self.state)
        return self.response


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

    @property
    def authorization(self) -> str | None:
        """The Authorization header (REST API: ``Bearer <Cloudflare API token>``), or None."""
        return self.header("Authorization")

    @property
    def aig_gateway_id(self) -> str | None:
        """The cf-aig-gateway-id header (which gateway a REST API call goes through), or None."""
        return self.header("cf-aig-gateway-id")

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
        headers += self._provider_headers
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

    def _anthropic_error(
        self, status: int, type_: str, message: str, extra: list[tuple[str, str]] | None = None
    ) -> None:
        body: dict[str, Any] = {"type": "error", "error": {"type": type_, "message": message}}
        for key, value in self._provider_headers:
            if key == "request-id":
                body["request_id"] = value
        self._send_json(status, body, extra)

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
        self._provider_headers: list[tuple[str, str]] = []
        self._error_shape = "openai"  # "openai", "anthropic" or "cloudflare" (REST API's v4 envelope)
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
            full = _dumps(self._completion("openai/gpt-4o-mini", {}, Turn(REPLY_TEXT)))
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

        status_override = _int_header(h.get("x-standin-status"))
        if status_override is not None and not 400 <= status_override <= 599:
            status_override = None
        if path.startswith(REST_PREFIX):
            self._error_shape = "cloudflare"
            self._rest(gw, path, body, status_override)
            return
        if not path.startswith(gw.gateway_prefix):
            self._gateway_error(2001)
            return
        provider, _, sub = path[len(gw.gateway_prefix) :].partition("/")
        self._error_shape = "anthropic" if provider == "anthropic" else "openai"
        if provider == "compat":
            if status_override is None and sub not in COMPAT_ROUTES:
                self._gateway_error(2019, f"Compatibility endpoint: {sub} is not supported.")
                return
        elif provider not in NATIVE_PROVIDERS:
            self._gateway_error(2008)  # other providers' native routes are not emulated
            return
        if gw.require_token is not None and h.get("cf-aig-authorization") != f"Bearer {gw.require_token}":
            self._gateway_error(2009)
            return
        self._set_pre_delay()
        # What the provider adds to every answer (the gateway passes it through).
        if provider == "anthropic":
            self._provider_headers = [("request-id", _base62_id("req_011C", 20))]
        elif provider == "openai":
            self._provider_headers = [("x-request-id", f"req_{random.getrandbits(128):032x}")]
        if status_override is not None:
            self._status_override(provider, status_override)
        elif provider == "compat":
            self._compat(sub, path, body)
        elif provider == "openai":
            self._openai(sub, query, body)
        else:
            self._anthropic(sub, body)

    def _set_pre_delay(self) -> None:
        """x-standin-delay-ms: the pause before a JSON answer and between stream events."""
        delay_ms = _int_header(self.headers.get("x-standin-delay-ms"), 0) or 0
        self._pre_delay = max(delay_ms, 0) / 1000

    def _retry_after(self) -> list[tuple[str, str]] | None:
        """x-standin-retry-after: a Retry-After header on x-standin-status errors."""
        retry_after = self.headers.get("x-standin-retry-after")
        return [("Retry-After", retry_after.strip())] if retry_after else None

    def _turn(self, fmt: str, req: dict[str, Any]) -> Turn | None:
        """The model's turn (see _model_turn), or None after answering a bad x-standin-tool-args
        with a 400 in the route's error shape."""
        try:
            return _model_turn(fmt, req, self.headers)
        except ValueError as exc:
            if self._error_shape == "cloudflare":
                self._cloudflare_error(400, 5006, str(exc))
            elif self._error_shape == "anthropic":
                self._anthropic_error(400, "invalid_request_error", str(exc))
            else:
                self._provider_error(400, str(exc))
            return None

    def _status_override(self, provider: str, status: int) -> None:
        """x-standin-status: a provider error in the route's provider shape."""
        extra = self._retry_after()
        message = f"Stand-in provider error {status}"
        if provider == "anthropic":
            type_ = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
            self._anthropic_error(status, type_, message, extra)
            return
        fallback = ("invalid_request_error", f"http_{status}")
        if status >= 500:
            fallback = ("server_error", "server_error")
        type_, code = _PROVIDER_ERRORS.get(status, fallback)
        self._provider_error(status, message, type_, code=code, extra=extra)

    def _method_allowed(self, allowed: tuple[str, ...]) -> bool:
        return self.command in allowed or (self.command == "HEAD" and "GET" in allowed)

    def _openai_json(self, body: bytes) -> dict[str, Any] | None:
        """The JSON object body, or None after answering OpenAI's parse error."""
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            req = None
        if isinstance(req, dict):
            return req
        self._provider_error(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
            "sent was not valid JSON.)",
        )
        return None

    def _compat(self, sub: str, path: str, body: bytes) -> None:
        allowed = COMPAT_ROUTES[sub]
        if not self._method_allowed((allowed,)):
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
        req = self._openai_json(body)
        if req is None:
            return
        model = req.get("model")
        if not isinstance(model, str):
            self._gateway_error(2008)
            return
        provider, slash, name = model.partition("/")
        if not (provider and slash and name) or provider.startswith("@"):
            self._gateway_error(2008)
            return
        if sub == "embeddings":
            self._embeddings(model, req)
        else:
            self._chat(model, req)

    # ---- OpenAI's own API (.../openai) -------------------------------------

    def _openai(self, sub: str, query: str, body: bytes) -> None:
        parts = sub.split("/")
        resp_id = parts[1] if len(parts) > 1 and parts[0] == "responses" and parts[1] else None
        if sub == "chat/completions":
            allowed: tuple[str, ...] = ("POST",)
        elif sub == "responses":
            allowed = ("POST",)
        elif resp_id and len(parts) == 2:
            allowed = ("GET", "DELETE")
        elif resp_id and len(parts) == 3 and parts[2] == "input_items":
            allowed = ("GET",)
        elif resp_id and len(parts) == 3 and parts[2] == "cancel":
            allowed = ("POST",)
        else:
            self._provider_error(404, f"Invalid URL ({self.command} /v1/{sub})")
            return
        if not self._method_allowed(allowed):
            message = f"Invalid method for URL ({self.command} /v1/{sub})"
            self._provider_error(405, message, extra=[("Allow", ", ".join(allowed))])
            return
        if not self._openai_key_ok():
            return
        if resp_id is not None:
            self._stored_response_action(resp_id, parts[2] if len(parts) == 3 else "", query)
            return
        req = self._openai_json(body)
        if req is None:
            return
        model = req.get("model")
        if not isinstance(model, str) or not model:
            self._provider_error(
                400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter"
            )
            return
        if sub == "chat/completions":
            if "/" in model:  # a compat-style name sent to the provider
                message = f"The model `{model}` does not exist or you do not have access to it."
                self._provider_error(404, message, code="model_not_found")
            elif not isinstance(req.get("messages"), list):
                self._provider_error(
                    400,
                    "Missing required parameter: 'messages'.",
                    param="messages",
                    code="missing_required_parameter",
                )
            else:
                self._chat(model, req)
            return
        if "/" in model:
            message = f"The requested model '{model}' does not exist."
            self._provider_error(400, message, param="model", code="model_not_found")
            return
        self._responses_create(model, req)

    def _openai_key_ok(self) -> bool:
        """No Authorization: the gateway's stored key / Unified Billing. Any other: OpenAI checks it."""
        value = self.headers.get("Authorization")
        if value is None:
            return True
        key = _bearer_token(value) or ""
        if key.startswith("sk-"):
            return True
        shown = key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 8 else "*" * len(key)
        self._provider_error(
            401,
            f"Incorrect API key provided: {shown}. "
            "You can find your API key at https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )
        return False

    def _responses_create(self, model: str, req: dict[str, Any]) -> None:
        gw = self.server.gateway
        turn = self._turn("responses", req)
        if turn is None:
            return
        stream = req.get("stream") is True
        n_events, event_bytes = self._stream_shape(turn.text) if stream else (len(turn.text.split()), 0)
        pieces = list(_reply_pieces(n_events, turn.text))
        response = _response_object(model, req, pieces, turn)
        background = req.get("background") is True and not stream
        if req.get("store") is not False:
            state = "queued" if background else "sync"
            gw._store_response(_StoredResponse(response, _responses_input_items(req), state))
        if stream:
            self._stream(_responses_events(response, pieces, event_bytes), SSE_UTF8)
            return
        self._hold_non_stream()
        self._send_json(200, _unfinished(response, "queued") if background else response)

    def _stored_response_action(self, resp_id: str, action: str, query: str) -> None:
        """GET/DELETE responses/{id}, GET .../input_items, POST .../cancel."""
        gw = self.server.gateway
        stored = gw._stored_response(resp_id)
        if stored is None:
            self._provider_error(404, f"Response with id '{resp_id}' not found.", param="response_id")
            return
        if action == "input_items":
            self._send_json(200, _input_items_page(stored.input_items, urllib.parse.parse_qs(query)))
        elif action == "cancel":
            if stored.state == "sync":
                self._provider_error(400, "Cannot cancel a synchronous response.")
                return
            if stored.state == "queued":
                stored.state = "cancelled"
            self._send_json(200, stored.view())
        elif self.command == "DELETE":
            gw._delete_response(resp_id)
            self._send_json(200, {"id": resp_id, "object": "response", "deleted": True})
        else:
            if stored.state == "queued":
                stored.state = "completed"  # a background response has "run" by its first retrieve
            self._send_json(200, stored.view())

    # ---- Anthropic's own API (.../anthropic) --------------------------------

    def _anthropic(self, sub: str, body: bytes) -> None:
        if sub not in ("v1/messages", "v1/messages/count_tokens"):
            self._anthropic_error(404, "not_found_error", "Not Found")
            return
        if self.command != "POST":
            self._anthropic_error(405, "invalid_request_error", "Method Not Allowed", [("Allow", "POST")])
            return
        if not self._anthropic_key_ok():
            return
        if not self.headers.get("anthropic-version"):
            self._anthropic_error(400, "invalid_request_error", "anthropic-version: header is required")
            return
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            req = None
        if not isinstance(req, dict):
            message = "There was an issue with your request body: invalid JSON"
            self._anthropic_error(400, "invalid_request_error", message)
            return
        counting = sub.endswith("count_tokens")
        for field, kind in (("model", str), ("max_tokens", int), ("messages", list)):
            value = req.get(field)
            if counting and field == "max_tokens":
                continue  # count_tokens takes no max_tokens
            if not isinstance(value, kind) or isinstance(value, bool) or value == "":
                self._anthropic_error(400, "invalid_request_error", f"{field}: Field required")
                return
        model: str = req["model"]
        if "/" in model:  # a compat-style name sent to the provider
            self._anthropic_error(404, "not_found_error", f"model: {model}")
            return
        if sub.endswith("count_tokens"):
            self._hold_non_stream()
            self._send_json(200, {"input_tokens": _anthropic_input_tokens(req)})
            return
        self._messages(model, req)

    def _messages(self, model: str, req: dict[str, Any]) -> None:
        """Answer a checked Messages API request (anthropic route and REST API)."""
        turn = self._turn("messages", req)
        if turn is None:
            return
        answer = _anthropic_message(model, req, turn)
        if req.get("stream") is True:
            n_events, event_bytes = self._stream_shape(turn.text)
            self._stream(_anthropic_events(answer, n_events, event_bytes), SSE_UTF8)
            return
        self._hold_non_stream()
        self._send_json(200, answer)

    def _anthropic_key_ok(self) -> bool:
        """No key header: the gateway's stored key / Unified Billing. Any key header: Anthropic checks it."""
        key = self.headers.get("x-api-key")
        if key is not None and not key.startswith("sk-ant-"):
            self._anthropic_error(401, "authentication_error", "invalid x-api-key")
            return False
        auth = self.headers.get("Authorization")
        if auth is not None:
            token = _bearer_token(auth) or ""
            if not token.startswith("sk-ant-"):
                self._anthropic_error(401, "authentication_error", "Invalid bearer token")
                return False
        return True

    # ---- Cloudflare's REST API (/client/v4/accounts/{account}/ai/...) ---------

    def _cloudflare_error(
        self, status: int, code: int, message: str, extra: list[tuple[str, str]] | None = None
    ) -> None:
        """An error in Cloudflare's v4 API envelope."""
        errors = [{"code": code, "message": message}]
        body = {"result": None, "success": False, "errors": errors, "messages": []}
        self._send_json(status, body, extra)

    def _rest(self, gw: StandinGateway, path: str, body: bytes, status_override: int | None) -> None:
        """POST .../ai/run, .../ai/v1/chat/completions, .../ai/v1/responses, .../ai/v1/messages."""
        h = self.headers
        parts = path[len(REST_PREFIX) :].split("/", 3)  # "accounts", account id, "ai", route
        known = len(parts) == 4 and parts[0] == "accounts" and parts[2] == "ai" and parts[3] in REST_ROUTES
        if not known or self.command != "POST":
            self._cloudflare_error(404, 7000, "No route for that URI")
            return
        account, route = parts[1], parts[3]
        if _bearer_token(h.get("Authorization")) != gw.api_token:
            self._cloudflare_error(401, 10000, "Authentication error")
            return
        if account != gw.account_id:
            message = f"Could not route to {path}, perhaps your object identifier is invalid?"
            self._cloudflare_error(404, 7003, message)
            return
        self._set_pre_delay()
        if status_override is not None:
            if status_override in CLOUDFLARE_STATUS_ERRORS:
                code, message = CLOUDFLARE_STATUS_ERRORS[status_override]
            elif status_override >= 500:
                code, message = 2005, "Failed to get response from provider"
            else:
                code, message = 5006, f"Stand-in error {status_override}"
            self._cloudflare_error(status_override, code, message, self._retry_after())
            return
        try:
            req = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            req = None
        if not isinstance(req, dict):
            self._cloudflare_error(400, 5006, "Bad input: the body is not a JSON object")
            return
        model = req.get("model")
        if not isinstance(model, str) or not model:
            self._cloudflare_error(400, 5006, "Bad input: model is required")
            return
        if not _rest_model_ok(model):
            self._cloudflare_error(400, 5007, f"No such model {model} or task")
            return
        if model.startswith("@cf/") and not h.get("cf-aig-gateway-id"):
            message = "Workers AI models need a cf-aig-gateway-id header"
            self._cloudflare_error(400, 2001, message)
            return
        if route == "run":
            self._ai_run(model, req)
        elif route == "v1/chat/completions":
            if not isinstance(req.get("messages"), list):
                self._cloudflare_error(400, 5006, "Bad input: messages is required")
                return
            self._chat(model, req)
        elif route == "v1/responses":
            self._responses_create(model, req)
        else:
            for field, kind in (("max_tokens", int), ("messages", list)):
                value = req.get(field)
                if not isinstance(value, kind) or isinstance(value, bool):
                    self._cloudflare_error(400, 5006, f"Bad input: {field} is required")
                    return
            self._messages(model, req)

    def _ai_run(self, model: str, req: dict[str, Any]) -> None:
        """``{"model", "input": {...}}``: Workers AI's answer shape, streamed when input.stream is true."""
        inp = req.get("input")
        if not isinstance(inp, dict):
            self._cloudflare_error(400, 5006, "Bad input: input must be an object")
            return
        prompt = _count_words(inp.get("prompt"))
        messages = inp.get("messages")
        if isinstance(messages, list):
            prompt += sum(_count_words(m.get("content")) for m in messages if isinstance(m, dict))
        if inp.get("stream") is True:
            n_events, event_bytes = self._stream_shape()
            self._stream(_ai_run_events(prompt, n_events, event_bytes))
            return
        result = {"response": REPLY_TEXT, "usage": _ai_run_usage(prompt, len(REPLY_WORDS))}
        self._hold_non_stream()
        self._send_json(200, {"result": result, "success": True, "errors": [], "messages": []})

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

    def _completion(self, model: str, req: dict[str, Any], turn: Turn) -> dict[str, Any]:
        prompt = self._prompt_tokens(req)
        message: dict[str, Any] = {"role": "assistant", "content": turn.text, "refusal": None}
        finish = "stop"
        completion = len(turn.text.split())
        if turn.tool:
            call = {
                "id": "call_standin0",
                "type": "function",
                "function": {"name": turn.tool, "arguments": turn.arguments},
            }
            message.update(content=None, tool_calls=[call])
            finish = "tool_calls"
            completion = len(turn.arguments.split())
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
        turn = self._turn("chat", req)
        if turn is None:
            return
        if req.get("stream") is True:
            self._stream(self._chunk_events(model, req, turn))
        else:
            self._hold_non_stream()
            self._send_json(200, self._completion(model, req, turn))

    def _hold_non_stream(self) -> None:
        """x-standin-hold on a non-streamed call: hold before answering (in-flight tests)."""
        hold = self.headers.get("x-standin-hold")
        if hold:
            self.server.gateway._hold(hold)

    def _chunk_events(self, model: str, req: dict[str, Any], turn: Turn) -> Any:
        """Yield SSE events lazily (big streams never sit in memory)."""
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

        def content_event(text: str, filler: str) -> bytes:
            return event({"content": text + filler})

        if turn.tool:
            first_call = {
                "index": 0,
                "id": "call_standin0",
                "type": "function",
                "function": {"name": turn.tool, "arguments": ""},
            }
            yield event({"role": "assistant", "content": None, "tool_calls": [first_call], "refusal": None})
            for piece in _argument_pieces(turn.arguments):
                yield event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            yield event({}, "tool_calls")
            completion = len(turn.arguments.split())
        else:
            n_events, event_bytes = self._stream_shape(turn.text)
            yield event({"role": "assistant", "content": "", "refusal": None})
            fillers: dict[int, bytes] = {}
            for text in _reply_pieces(n_events, turn.text):
                yield _sized(functools.partial(content_event, text), event_bytes, fillers)
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

    def _stream_shape(self, text: str = REPLY_TEXT) -> tuple[int, int]:
        """(text events, bytes per text event; 0 = natural size) from x-standin-events/-event-bytes.

        Without x-standin-events a stream sends `text`, one word per event.
        """
        h = self.headers
        n_events = max(_int_header(h.get("x-standin-events"), len(text.split())) or 0, 0)
        event_bytes = max(_int_header(h.get("x-standin-event-bytes"), 0) or 0, 0)
        return n_events, event_bytes

    def _stream(self, events: Iterable[bytes], content_type: str = "text/event-stream") -> None:
        """Send SSE events as they are generated, honouring the stream test-control headers."""
        h = self.headers
        gw = self.server.gateway
        gzip_body = (h.get("x-standin-encoding") or "").strip().lower() == "gzip"
        chunked = self.request_version != "HTTP/1.0"
        if not chunked:
            self.close_connection = True  # HTTP/1.0: the body ends at close
        delay = self._pre_delay
        hold = h.get("x-standin-hold")
        reset_after = _int_header(h.get("x-standin-reset-after"))
        headers = [("Content-Type", content_type), ("Cache-Control", "no-cache")]
        if gzip_body:
            headers.append(("Content-Encoding", "gzip"))
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        headers += self._provider_headers
        self.wfile.write(self._head(200, headers + self._gateway_headers(True)))
        writer = _StreamWriter(self.wfile, chunked, gzip_body)
        sent = 0
        for ev in events:
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


def _input_items_page(items: list[dict[str, Any]], params: dict[str, list[str]]) -> dict[str, Any]:
    """OpenAI's input_items list: order (default desc), after (an item id), limit (1-100, default 20)."""
    ordered = items if params.get("order", ["desc"])[-1] == "asc" else items[::-1]
    after = params.get("after", [None])[-1]
    if after is not None:
        ids = [item.get("id") for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    limit = min(max(_int_header(params.get("limit", ["20"])[-1], 20) or 20, 1), 100)
    page = ordered[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > limit,
    }


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
        api_token: str = STANDIN_API_TOKEN,
        log: TextIO | None = None,
    ) -> None:
        for value in (account_id, gateway_id):
            if not value or "/" in value or "?" in value:
                raise ValueError(f"invalid id: {value!r}")
        self.account_id = account_id
        self.gateway_id = gateway_id
        self.require_token = require_token
        self.api_token = api_token  # REST API: Authorization: Bearer <api_token>
        self.host = host
        self._requested_port = port
        self._log = log
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._held: dict[str, int] = {}
        self._released: set[str] = set()
        self._responses: collections.OrderedDict[str, _StoredResponse] = collections.OrderedDict()
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

    @property
    def openai_prefix(self) -> str:
        return f"/v1/{self.account_id}/{self.gateway_id}/openai"

    @property
    def openai_url(self) -> str:
        """base_url for an OpenAI SDK using OpenAI's own API (Responses) through the gateway."""
        return self.base_url + self.openai_prefix

    @property
    def anthropic_prefix(self) -> str:
        return f"/v1/{self.account_id}/{self.gateway_id}/anthropic"

    @property
    def anthropic_url(self) -> str:
        """base_url for an Anthropic SDK (or ANTHROPIC_BASE_URL for Claude Code)."""
        return self.base_url + self.anthropic_prefix

    @property
    def rest_prefix(self) -> str:
        return f"/client/v4/accounts/{self.account_id}"

    @property
    def rest_url(self) -> str:
        """Cloudflare's REST API for the account (``.../ai/run``, ``.../ai/v1/...`` below it)."""
        return self.base_url + self.rest_prefix

    @property
    def rest_openai_url(self) -> str:
        """base_url for an OpenAI SDK using the REST API: ``.../accounts/{id}/ai/v1``."""
        return self.rest_url + "/ai/v1"

    @property
    def rest_anthropic_url(self) -> str:
        """base_url for an Anthropic SDK using the REST API (it appends ``/v1/messages``)."""
        return self.rest_url + "/ai"

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
        """Forget recorded requests, stored Responses API responses and hold/release state."""
        with self._lock:
            self.requests.clear()
            self._responses.clear()
        with self._cond:
            self._held.clear()
            self._released.clear()

    def _store_response(self, stored: _StoredResponse) -> None:
        with self._lock:
            self._responses[stored.response["id"]] = stored
            while len(self._responses) > MAX_STORED_RESPONSES:
                self._responses.popitem(last=False)

    def _stored_response(self, resp_id: str) -> _StoredResponse | None:
        with self._lock:
            return self._responses.get(resp_id)

    def _delete_response(self, resp_id: str) -> None:
        with self._lock:
            self._responses.pop(resp_id, None)

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
        description="Local stand-in for Cloudflare AI Gateway (compat, openai and anthropic routes)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_CLI_PORT)
    parser.add_argument("--account-id", default=DEFAULT_ACCOUNT_ID)
    parser.add_argument("--gateway-id", default=DEFAULT_GATEWAY_ID)
    parser.add_argument("--require-token", default=None, help="require cf-aig-authorization: Bearer TOKEN")
    parser.add_argument(
        "--api-token", default=STANDIN_API_TOKEN, help="the REST API's token (Authorization: Bearer TOKEN)"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines on stderr")
    args = parser.parse_args(argv)
    gw = StandinGateway(
        args.account_id,
        args.gateway_id,
        args.require_token,
        args.host,
        args.port,
        api_token=args.api_token,
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
