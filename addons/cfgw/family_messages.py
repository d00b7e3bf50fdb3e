"""Anthropic Messages (``/v1/messages``, ``/v1/messages/count_tokens``) as a cf-gateway family.

Anthropic differs from OpenAI chat in every piece the pipeline needs: errors are
``{"type": "error", "error": {...}}``, usage has separate cache read/write counts
and no total, streams name their events (``message_start`` ... ``message_stop``)
and content is a list of typed blocks (text, image, tool_use, tool_result,
thinking...). Everything here is pure and never raises on hostile input.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cfgw import transcript as tx
from cfgw.family import Family, Usage, count, markers
from cfgw.sse import Event

__all__ = [
    "FAMILY",
    "MessagesStreamUsage",
    "error_body",
    "error_type",
    "looks_like_request",
    "looks_like_response",
    "render_request",
    "render_response",
    "render_stream",
    "usage_from_json",
]

# --- errors ----------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""Anthropic's documented status -> error.type pairs (platform.claude.com/docs/en/api/errors)."""

_FROM_OPENAI = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
}


def error_type(status: Any, openai_type: Any = None) -> str:
    """Anthropic's error.type for a status; other 5xx are ``api_error``, other 4xx follow the OpenAI type."""
    if type(status) is int:
        if status in _ERROR_TYPES:
            return _ERROR_TYPES[status]
        if status >= 500:
            return "api_error"
    if isinstance(openai_type, str) and openai_type in _FROM_OPENAI:
        return _FROM_OPENAI[openai_type]
    return "invalid_request_error"  # Anthropic: "may also be used for other 4XX status codes"


def error_body(status: int, message: str, code: str | int | None, openai_type: str) -> dict:
    """An error in Anthropic's shape, so its SDKs raise their usual exception for the status.

    The proxy/Cloudflare ``code`` rides along as ``error.code``: Anthropic has no such
    field, but its SDKs print the whole body in the exception text, so it is seen.
    """
    err: dict[str, Any] = {
        "type": error_type(status, openai_type),
        "message": message if isinstance(message, str) else tx.s(message),
    }
    if isinstance(code, str | int) and not isinstance(code, bool):
        err["code"] = code
    return {"type": "error", "error": err}


# --- usage -----------------------------------------------------------------------

_USAGE_FIELDS = (
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cache_read_input_tokens", "cached_tokens"),
    ("cache_creation_input_tokens", "cache_creation_tokens"),
)


def _usage(obj: Any, base: Usage | None = None) -> Usage | None:
    """Counts of an Anthropic ``usage`` object laid over ``base`` (a missing/invalid count keeps base's)."""
    if not isinstance(obj, dict):
        return base
    fields = {attr: getattr(base, attr) if base else None for _, attr in _USAGE_FIELDS}
    changed = False
    for key, attr in _USAGE_FIELDS:
        n = count(obj.get(key))
        if n is not None:
            fields[attr] = n
            changed = True
    if not changed:
        return base
    return Usage(**fields, cache_in_input=False)


def usage_from_json(obj: Any) -> Usage | None:
    """Usage of a ``message`` body, or the input count of a count_tokens answer (``{"input_tokens": N}``)."""
    if not isinstance(obj, dict):
        return None
    if "usage" in obj:
        return _usage(obj["usage"])
    n = count(obj.get("input_tokens"))
    return None if n is None else Usage(input_tokens=n, cache_in_input=False)


_USAGE_EVENTS = frozenset({"message_start", "message_delta"})
_MAX_USAGE_EVENT = 1 << 20  # bytes: message_start/message_delta are small; bigger data is not usage
_HEAD = 64  # characters searched for the type of an unnamed event


def _unnamed_kind(data: str) -> str | None:
    """The type of an event sent without ``event:`` (some relays drop it), from the head of its data."""
    head = data[:_HEAD]
    for kind in _USAGE_EVENTS:
        if f'"{kind}"' in head:
            return kind
    return None


class MessagesStreamUsage:
    """Reads usage from message_start (input, cache, output so far) and message_delta (cumulative).

    On the hot path: every other event is skipped on its name, without parsing its data.
    """

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def event(self, event: Event) -> None:
        """Take one event; never raises."""
        try:
            name = event.name
            if name in _USAGE_EVENTS:
                kind: str | None = name
            elif name == "":
                kind = None
            else:
                return
            data = event.data
            if not isinstance(data, str) or len(data) > _MAX_USAGE_EVENT:
                return
            if kind is None:
                kind = _unnamed_kind(data)
                if kind is None:
                    return
            obj = json.loads(data)
        except (AttributeError, TypeError, ValueError, RecursionError):
            return
        if name == "" and (not isinstance(obj, dict) or obj.get("type") != kind):
            return  # the name was found in a text, not in the type
        self.update(kind, obj)

    def update(self, kind: str, obj: Any) -> None:
        """Merge an already-parsed message_start/message_delta payload."""
        if not isinstance(obj, dict):
            return
        if kind == "message_start":
            msg = obj.get("message")
            if isinstance(msg, dict):
                self.usage = _usage(msg.get("usage"), self.usage)
        elif kind == "message_delta":
            self.usage = _usage(obj.get("usage"), self.usage)


# --- rendering helpers -----------------------------------------------------------

_MAX_PARAM = 500  # one request parameter's value (ids, names and media types: transcript.MAX_LABEL)
_MAX_DESC = 300  # a tool's description (Claude Code sends kilobytes per tool)


def _option(v: Any) -> str:
    """A typed option such as ``thinking`` or ``tool_choice``: ``enabled(budget_tokens=2000)``, ``auto``.

    Any other parameter value as in the chat view (``stream=true``), cut at _MAX_PARAM.
    """
    if isinstance(v, dict) and isinstance(v.get("type"), str):
        rest = ", ".join(f"{tx.label(k)}={tx.label(x, _MAX_PARAM)}" for k, x in v.items() if k != "type")
        return f"{tx.label(v['type'])}({rest})" if rest else tx.label(v["type"])
    return tx.label(v, _MAX_PARAM)


def _media(kind: str, block: dict) -> str:
    """``<image media_type=image/png (N chars base64)>``, ``<image url=...>``, ``<document file_id=...>``."""
    src = block.get("source")
    tag = f"<{kind}"
    if isinstance(src, dict):
        st = src.get("type")
        if src.get("media_type") is not None:
            tag += f" media_type={tx.label(src['media_type'])}"
        data = src.get("data")
        if st == "base64":
            tag += f" ({len(data) if isinstance(data, str) else '?'} chars base64)"
        elif st == "url":
            tag += f" url={tx.short_url(src.get('url'))}"
        elif st == "file":
            tag += f" file_id={tx.label(src.get('file_id'))}"
        elif st == "text":
            tag += f" text ({len(data) if isinstance(data, str) else '?'} chars)"
        elif st == "content":
            content = src.get("content")
            tag += f" content ({len(content) if isinstance(content, list | str) else '?'} parts)"
        elif st is not None:
            tag += f" source={tx.label(st)}"
    elif src is not None:
        tag += f" source={tx.label(src)}"
    if isinstance(block.get("title"), str):
        tag += f" title={tx.label(block['title'])}"
    return tag + ">"


def _cache_mark(block: dict) -> str | None:
    """``<cache_control ephemeral ttl=1h>``: where a prompt-cache breakpoint sits."""
    cc = block.get("cache_control")
    if not isinstance(cc, dict):
        return None
    tag = f"<cache_control {tx.label(cc.get('type') or '?')}"
    if cc.get("ttl") is not None:
        tag += f" ttl={tx.label(cc['ttl'])}"
    return tag + ">"


_CALLS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
_MAX_DEPTH = 2  # tool results inside tool results: deeper ones are shown as JSON, never recursed into


def _block(block: Any, depth: int = 0) -> list[str]:
    """One content block as transcript lines; results nested in results are shown as JSON."""
    if isinstance(block, str):
        return [tx.clip(block)]
    if not isinstance(block, dict) or depth > _MAX_DEPTH:
        return [tx.clip(tx.j(block))]
    typ = block.get("type")
    if not isinstance(typ, str):
        typ = None
    out: list[str]
    if typ == "text":
        out = [tx.clip(tx.s(block.get("text")))]
    elif typ in ("image", "document"):
        out = [_media(typ, block)]
    elif typ in _CALLS:
        call = f"{tx.label(block.get('id') or '?')}: {tx.label(block.get('name') or '?')}({_input(block)})"
        out = [f"→ {typ} {call}"]
    elif typ is not None and (typ == "tool_result" or typ.endswith("_tool_result")):
        head = f"← {typ} {tx.label(block.get('tool_use_id') or '?')}"
        if block.get("is_error") is True:
            head += " (error)"
        body = _result_content(block.get("content"), depth + 1)
        out = [f"{head}: {body}" if body else head]
    elif typ == "thinking":
        out = ["<thinking>", tx.clip(tx.s(block.get("thinking"))), "</thinking>"]
    elif typ == "redacted_thinking":
        data = block.get("data")
        out = [f"<redacted_thinking ({len(data) if isinstance(data, str) else '?'} chars)>"]
    else:
        out = [f"<{tx.label(typ or block.get('type') or 'block')}>"]
    mark = _cache_mark(block)
    if mark:
        out.append(mark)
    return out


def _input(block: dict) -> str:
    """Tool input: an object from a body, or the joined partial_json of a stream (a string, shown as-is)."""
    v = block.get("input")
    if isinstance(v, str):
        return tx.clip(v)
    return "" if v is None else tx.clip(tx.j(v))


def _result_content(content: Any, depth: int) -> str:
    """tool_result content: a string, or blocks (text, images...) one per line."""
    if content is None:
        return ""
    if isinstance(content, str):
        return tx.clip(content)
    if isinstance(content, list):
        return "\n".join(line for b in content for line in _block(b, depth))
    return tx.clip(tx.j(content))


def _content(content: Any) -> list[str]:
    """A message's content (a string or a list of blocks) as lines; [] when absent."""
    if content is None:
        return []
    if isinstance(content, str):
        return [tx.clip(content)] if content else []
    if isinstance(content, list):
        return [line for b in content for line in _block(b)]
    return [tx.clip(tx.j(content))]


def _usage_line(u: Usage | None) -> str | None:
    """``usage: input 12 · output 34 · cache read 8 · cache write 0`` (cache parts when reported)."""
    if u is None:
        return None
    line = f"usage: input {tx.count(u.input_tokens)} · output {tx.count(u.output_tokens)}"
    if u.cached_tokens is not None:
        line += f" · cache read {u.cached_tokens}"
    if u.cache_creation_tokens is not None:
        line += f" · cache write {u.cache_creation_tokens}"
    return line


def _error_line(err: Any) -> str:
    """``error: overloaded_error: Overloaded`` for an Anthropic error object."""
    if isinstance(err, dict) and ("type" in err or "message" in err):
        parts = [
            tx.label(err[k]) if k == "type" else tx.clip(tx.s(err[k]))
            for k in ("type", "message")
            if k in err
        ]
        return "error: " + ": ".join(parts)
    return f"error: {tx.clip(tx.j(err))}"


def _reply(role: Any, content: Any, stop_reason: Any, stop_sequence: Any) -> list[str]:
    """The assistant turn: role tag, blocks, stop reason."""
    out = [f"[{tx.label(role or 'assistant')}]"]
    out += _content(content)
    if len(out) == 1:
        out.append("(no content)")
    if stop_reason is not None:
        line = f"stop_reason: {tx.label(stop_reason)}"
        if stop_sequence is not None:
            line += f" ({tx.j(stop_sequence)[: tx.MAX_LABEL]})"
        out.append(line)
    return out


def _not_an_object(obj: Any) -> str:
    """What the renderers show for a body that is not a JSON object (they never raise)."""
    return f"(not a JSON object) {tx.clip(tx.j(obj))}\n"


# --- requests ----------------------------------------------------------------------

_NOT_PARAMS = frozenset({"model", "messages", "system", "tools"})


def _tool_def(tool: Any) -> str:
    """``tool <name>(<input_schema property names>) — <description>``; server tools show their type."""
    if not isinstance(tool, dict):
        return f"tool {tx.j(tool)[: tx.MAX_LABEL]}"
    schema = tool.get("input_schema")
    line = f"tool {tx.label(tool.get('name') or '?')}"
    typ = tool.get("type")
    if typ is None or typ == "custom" or isinstance(schema, dict):
        line += f"({tx.param_names(schema)})"
    if typ is not None and typ != "custom":
        line += f" [{tx.label(typ)}]"  # a server tool such as web_search_20250305
    return tx.described(line, tool.get("description"), _MAX_DESC)


def _message(msg: Any) -> list[str]:
    """One request message as a role-tagged block."""
    if not isinstance(msg, dict):
        return ["[?]", tx.clip(tx.j(msg))]
    out = [f"[{tx.label(msg.get('role') or '?')}]"]
    content = msg.get("content")
    out += _content(content)
    if len(out) == 1:
        out.append("(empty)" if content in ("", []) else "(no content)")
    return out


def render_request(obj: dict) -> str:
    """A /v1/messages (or count_tokens) request: model, params, tools, system, then each message."""
    if not isinstance(obj, dict):
        return _not_an_object(obj)
    out = tx.request_head(obj, _NOT_PARAMS, _option, _tool_def)
    system = obj.get("system")
    if system is not None:
        out += ["", "[system]", *(_content(system) or ["(empty)"])]
    messages = obj.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            out.append("")
            out += _message(msg)
    return "\n".join(out) + "\n"


# --- responses ---------------------------------------------------------------------


def render_response(obj: dict) -> str:
    """A ``message`` body (or an error, or a count_tokens answer) as a transcript."""
    if not isinstance(obj, dict):
        return _not_an_object(obj)
    out = tx.header(obj)
    u = _usage_line(usage_from_json(obj) if "usage" in obj else None)
    if u:
        out.append(u)
    if obj.get("type") == "error" or "error" in obj:
        out.append(_error_line(obj.get("error")))
    if "usage" not in obj and "content" not in obj and "input_tokens" in obj:
        out.append(f"input_tokens: {tx.count(obj['input_tokens'])}")  # count_tokens
    if "content" in obj or obj.get("type") == "message":
        out.append("")
        out += _reply(obj.get("role"), obj.get("content"), obj.get("stop_reason"), obj.get("stop_sequence"))
    return "\n".join(out) + "\n"


# --- streams -----------------------------------------------------------------------


_DELTA_FIELDS = {"text_delta": "text", "input_json_delta": "partial_json", "thinking_delta": "thinking"}
"""Which field of a content_block_delta carries its fragment."""
_DELTA_BLOCKS = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "tool_use"}
"""The block type a delta implies, for a delta whose content_block_start is missing."""


class _Block:
    """One content block of a stream: its start, then its deltas joined once at the end."""

    __slots__ = ("parts", "start")

    def __init__(self, start: dict) -> None:
        self.start = start
        self.parts: list[str] = []

    def add(self, delta: dict) -> None:
        """Append a delta's fragment; signature/citation deltas carry nothing to show."""
        dt = delta.get("type")
        key = _DELTA_FIELDS.get(dt) if isinstance(dt, str) else None
        if key is not None and isinstance(delta.get(key), str):
            self.parts.append(delta[key])

    def assembled(self) -> dict:
        """The block shaped like a non-streamed one (tool input as the joined JSON text)."""
        block = dict(self.start)
        typ = block.get("type")
        joined = "".join(self.parts)
        if typ == "text":
            block["text"] = (block["text"] if isinstance(block.get("text"), str) else "") + joined
        elif typ == "thinking":
            block["thinking"] = (block["thinking"] if isinstance(block.get("thinking"), str) else "") + joined
        elif typ in _CALLS and self.parts:
            block["input"] = joined
        return block


def render_stream(events: Iterable[Event]) -> str:
    """A recorded /v1/messages event stream as the assembled reply (what arrived, if it was cut short)."""
    message: dict = {}
    reader = MessagesStreamUsage()
    blocks: dict[int, _Block] = {}
    errors: list[str] = []
    stop_reason: Any = None
    stop_sequence: Any = None
    n = bad = 0
    stopped = False
    try:
        iterator = iter(events)
    except TypeError:
        iterator = iter(())
    for ev in iterator:
        n += 1
        name = getattr(ev, "name", None)
        data = getattr(ev, "data", None)
        if not isinstance(data, str):
            bad += 1
            continue
        if not data.strip():
            continue  # an event without data (Anthropic's are never empty; skip, not "unparseable")
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if not isinstance(obj, dict):
            bad += 1
            continue
        kind = obj.get("type") if isinstance(obj.get("type"), str) else name
        if kind == "message_start":
            msg = obj.get("message")
            if isinstance(msg, dict):
                message = msg
            reader.update(kind, obj)
        elif kind == "content_block_start":
            index, start = obj.get("index"), obj.get("content_block")
            if type(index) is int and isinstance(start, dict):
                blocks[index] = _Block(start)
        elif kind == "content_block_delta":
            index, delta = obj.get("index"), obj.get("delta")
            if type(index) is int and isinstance(delta, dict):
                block = blocks.get(index)
                if block is None:  # a delta without its start: keep the text anyway
                    dt = delta.get("type")
                    implied = _DELTA_BLOCKS.get(dt, "text") if isinstance(dt, str) else "text"
                    block = blocks[index] = _Block({"type": implied})
                block.add(delta)
        elif kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict):
                stop_reason = delta.get("stop_reason", stop_reason)
                stop_sequence = delta.get("stop_sequence", stop_sequence)
            reader.update(kind, obj)
        elif kind == "message_stop":
            stopped = True
        elif kind == "error":
            errors.append(_error_line(obj.get("error")))

    out = tx.header(message)
    u = _usage_line(reader.usage)
    if u:
        out.append(u)
    stream = f"stream: {n} events"
    if bad:
        stream += f" ({bad} unparseable)"
    stream += ", message_stop" if stopped else " (stream incomplete: no message_stop)"
    out.append(stream)
    out += errors
    if blocks or message or stop_reason is not None:
        content = [blocks[i].assembled() for i in sorted(blocks)]
        out.append("")
        out += _reply(message.get("role"), content, stop_reason, stop_sequence)
    return "\n".join(out) + "\n"


# --- detection ---------------------------------------------------------------------

_ANTHROPIC_BLOCKS = frozenset(
    {"tool_use", "tool_result", "thinking", "redacted_thinking", "image", "document"}
)
"""Content block types OpenAI chat has no equivalent of (its parts are text, image_url, input_audio, file)."""
_OPENAI_ROLES = frozenset({"system", "developer", "tool", "function"})
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})


def _has_anthropic_blocks(messages: list) -> bool | None:
    """True on an Anthropic-only block, False on an OpenAI-only message, None when nothing tells."""
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        if msg.get("role") in _OPENAI_ROLES or "tool_calls" in msg or "tool_call_id" in msg:
            return False
        content = msg.get("content")
        if isinstance(content, list):
            for b in content:
                if isinstance(b, dict) and b.get("type") in _ANTHROPIC_BLOCKS:
                    return True
    return None


def looks_like_request(obj: Any) -> bool:
    """A /v1/messages request by structure (top-level ``system``, Anthropic tools/blocks); False if unsure.

    A bare ``{model, max_tokens, messages}`` is valid for both APIs, so it is not
    claimed: the route of a flow decides in practice.
    """
    try:
        if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
            return False
        by_blocks = _has_anthropic_blocks(obj["messages"])
        if by_blocks is not None:
            return by_blocks
        if "system" in obj or "anthropic_version" in obj or "stop_sequences" in obj:
            return True
        tc = obj.get("tool_choice")
        if isinstance(tc, dict) and tc.get("type") in _TOOL_CHOICES:
            return True
        tools = obj.get("tools")
        return isinstance(tools, list) and any(isinstance(t, dict) and "input_schema" in t for t in tools)
    except TypeError:  # unhashable values compared with the sets
        return False


_STREAM_EVENTS = frozenset(
    {
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "ping",
    }
)


def looks_like_response(obj: Any) -> bool:
    """A ``message`` body, an Anthropic error, a count_tokens answer, or a stream event's payload."""
    if not isinstance(obj, dict):
        return False
    typ = obj.get("type")
    if not isinstance(typ, str):
        return set(obj) in ({"input_tokens"}, {"input_tokens", "context_management"}) and (
            count(obj["input_tokens"]) is not None
        )
    if typ == "message":
        return isinstance(obj.get("content"), list)
    if typ == "error":
        return isinstance(obj.get("error"), dict)
    return typ in _STREAM_EVENTS


FAMILY = Family(
    name="messages",
    error_body=error_body,
    usage_from_json=usage_from_json,
    stream_usage=MessagesStreamUsage,
    usage_events=markers(_USAGE_EVENTS),
    render_request=render_request,
    render_response=render_response,
    render_stream=render_stream,
    looks_like_request=looks_like_request,
    looks_like_response=looks_like_response,
)
