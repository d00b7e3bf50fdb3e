"""Anthropic Messages (``.../messages``): typed content blocks and named stream events.

A stream opens with ``message_start``, sends each block as ``content_block_start`` and
its ``content_block_delta`` fragments (text, thinking, tool input JSON), and closes with
``message_delta`` (stop reason, usage) and ``message_stop``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmview import sse
from llmview.text import (
    clip,
    count,
    header,
    label,
    lines,
    request_head,
    s,
    short_url,
    stream_line,
    tagged,
    tool_line,
)

REQUEST_KEYS: tuple[str, ...] = ("messages",)
"""A body sent to a Messages path is a request when it has one of these."""

_NOT_PARAMS = frozenset({"model", "messages", "system"})
_CALLS = ("tool_use", "server_tool_use", "mcp_tool_use")
_ONLY_ANTHROPIC = ("tool_use", "tool_result", "thinking", "redacted_thinking", "image", "document")
_EVENTS = (
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
)
"""A stream's event types (``error`` too, but an error answer is left to the JSON view)."""
_DELTAS: dict[Any, str] = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}
"""The field of a delta that carries its fragment (signature and citation deltas show nothing)."""
_JOINED: dict[Any, str] = {"text": "text", "thinking": "thinking", **dict.fromkeys(_CALLS, "input")}
"""The field of a block that a stream's fragments are joined into."""


def looks_like_request(obj: Any) -> bool:
    """A request with what only Anthropic has: ``system``, tools with ``input_schema``, its block types."""
    if not isinstance(obj, dict) or "messages" not in obj:
        return False
    return "system" in obj or _any(obj.get("tools"), _own_tool) or _any(obj["messages"], _own_blocks)


def _any(items: Any, test: Callable[[dict], bool]) -> bool:
    """Whether one of the first objects of a list passes ``test``."""
    return isinstance(items, list) and any(isinstance(i, dict) and test(i) for i in items[:100])


def _own_tool(tool: dict) -> bool:
    return "input_schema" in tool


def _own_blocks(msg: dict) -> bool:
    return _any(msg.get("content"), lambda block: block.get("type") in _ONLY_ANTHROPIC)


def looks_like_response(obj: Any) -> bool:
    """A ``message``, or a stream event's data."""
    typ = obj.get("type") if isinstance(obj, dict) else None
    return (typ == "message" and "content" in obj) or typ in _EVENTS


# --- blocks -------------------------------------------------------------------------------


def _media(block: dict) -> str:
    """``<image media_type=image/png (N chars base64)>``, ``<document url=https://...>``."""
    src = block["source"] if isinstance(block.get("source"), dict) else {}
    tag = f"<{label(block['type'])}" + "".join(
        f" {k}={short_url(src[k])}" for k in ("media_type", "url", "file_id") if src.get(k) is not None
    )
    if isinstance(src.get("data"), str):
        tag += f" ({len(src['data'])} chars {label(src.get('type'))})"
    return tag + (f" title={label(block['title'])}>" if block.get("title") else ">")


def _call(block: dict) -> list[str]:
    """``→ tool_use <id>: <name>(<input>)``; a stream's input is the joined JSON text."""
    inp = "" if block.get("input") is None else clip(s(block["input"]))
    return [f"→ {block['type']} {label(block.get('id'))}: {label(block.get('name'))}({inp})"]


def _result(block: dict) -> list[str]:
    """``← tool_result <id> (error): <content>``."""
    error = " (error)" if block.get("is_error") else ""
    head = f"← {label(block['type'])} {label(block.get('tool_use_id'))}{error}"
    body = "\n".join(_content(block.get("content")))
    return [f"{head}: {body}" if body else head]


def _other(block: dict) -> list[str]:
    return [f"<{label(block.get('type'))}>"]


def _redacted(block: dict) -> list[str]:
    return [f"<redacted_thinking ({len(s(block.get('data') or ''))} chars)>"]


_BLOCKS: dict[Any, Callable[[dict], list[str]]] = {
    "text": lambda block: [clip(s(block.get("text")))],
    "thinking": lambda block: tagged("thinking", block.get("thinking")) or ["<thinking>"],
    "redacted_thinking": _redacted,
    "image": lambda block: [_media(block)],
    "document": lambda block: [_media(block)],
    "tool_result": _result,
    **dict.fromkeys(_CALLS, _call),
}


def _block(block: Any) -> list[str]:
    """One content block as lines; a type without a rendering as ``<type>``."""
    if not isinstance(block, dict):
        return [clip(s(block))]
    typ = block.get("type")
    render = _BLOCKS.get(typ) or (_result if s(typ).endswith("_tool_result") else _other)
    out = render(block)
    cache = block.get("cache_control")
    return out + ([f"<cache_control {label(cache.get('type'))}>"] if isinstance(cache, dict) else [])


def _content(content: Any) -> list[str]:
    """A message's content (a string or blocks) as lines; [] when there is none."""
    if isinstance(content, list):
        return [line for block in content for line in _block(block)]
    return [clip(s(content))] if content else []


# --- requests and answers ------------------------------------------------------------------


def _tool_def(tool: dict) -> str:
    """``tool <name>(<input names>) — <description>``; a server tool also shows its type."""
    line = tool_line(tool.get("name"), tool.get("input_schema"), tool.get("description"))
    return line + (f" [{label(tool['type'])}]" if tool.get("type") not in (None, "custom") else "")


def render_request(obj: dict) -> str:
    """Model, parameters, tools, the system prompt, then each message."""
    out = request_head(obj, _NOT_PARAMS, _tool_def)
    if obj.get("system"):
        out += ["", "[system]", *_content(obj["system"])]
    for msg in obj.get("messages") or []:
        out += ["", f"[{label(msg.get('role'))}]", *(_content(msg.get("content")) or ["(empty)"])]
    return lines(out)


def usage_line(usage: Any) -> str | None:
    """``usage: input 12 · output 34 · cache read 8 · cache write 0``."""
    if not isinstance(usage, dict):
        return None
    line = f"usage: input {count(usage.get('input_tokens'))} · output {count(usage.get('output_tokens'))}"
    for name, key in (("read", "cache_read_input_tokens"), ("write", "cache_creation_input_tokens")):
        line += f" · cache {name} {usage[key]}" if type(usage.get(key)) is int else ""
    return line


def _error_line(err: Any) -> str:
    """``error: overloaded_error: Overloaded``."""
    if isinstance(err, dict):
        return "error: " + ": ".join(clip(s(err[k])) for k in ("type", "message") if k in err)
    return f"error: {clip(s(err))}"


def _reply(msg: dict, content: Any, stop: dict) -> list[str | None]:
    """The assistant's turn: role, blocks, stop reason."""
    reason, sequence = stop.get("stop_reason"), stop.get("stop_sequence")
    line = f"stop_reason: {label(reason)}" + (f" ({label(sequence)})" if sequence is not None else "")
    role = f"[{label(msg.get('role') or 'assistant')}]"
    return ["", role, *(_content(content) or ["(no content)"]), line if reason is not None else None]


def render_response(obj: dict) -> str:
    """A ``message`` as a transcript."""
    return lines([*header(obj), usage_line(obj.get("usage")), *_reply(obj, obj.get("content"), obj)])


# --- streams ------------------------------------------------------------------------------


class _Stream:
    """Stream events folded into the message they build: ``_<event type>`` handles each."""

    def __init__(self) -> None:
        self.message: dict = {}
        self.usage: dict = {}
        self.blocks: dict[Any, tuple[dict, list[str]]] = {}  # index -> (start, fragments)
        self.stop: dict = {}
        self.errors: list[str] = []
        self.stopped = False

    def add(self, name: str, obj: dict) -> None:
        kind = obj.get("type") or name
        if kind in _EVENTS or kind == "error":
            getattr(self, f"_{kind}")(obj)

    def _message_start(self, obj: dict) -> None:
        self.message = obj.get("message") or {}
        self.usage.update(self.message.get("usage") or {})

    def _content_block_start(self, obj: dict) -> None:
        self.blocks[obj.get("index")] = (obj.get("content_block") or {}, [])

    def _content_block_delta(self, obj: dict) -> None:
        delta = obj.get("delta") or {}
        fragment = delta.get(_DELTAS.get(delta.get("type"), ""))
        if isinstance(fragment, str):
            self.blocks.setdefault(obj.get("index"), ({"type": "text"}, []))[1].append(fragment)

    def _message_delta(self, obj: dict) -> None:
        self.stop.update(obj.get("delta") or {})
        self.usage.update({k: v for k, v in (obj.get("usage") or {}).items() if v is not None})

    def _message_stop(self, obj: dict) -> None:
        self.stopped = True

    def _content_block_stop(self, obj: dict) -> None:
        """Nothing to do: a block's fragments are joined when it is shown."""

    def _ping(self, obj: dict) -> None:
        """Nothing to show."""

    def _error(self, obj: dict) -> None:
        self.errors.append(_error_line(obj.get("error")))

    def content(self) -> list[dict]:
        """The blocks shaped like an answer's, their fragments joined."""
        out = []
        for start, fragments in self.blocks.values():
            field = _JOINED.get(start.get("type"), "text")
            joined = (start[field] if isinstance(start.get(field), str) else "") + "".join(fragments)
            out.append({**start, field: joined} if fragments else start)
        return out


def render_stream(parsed: sse.Parsed) -> str:
    """The assembled reply: header, usage, a line about the stream, then the blocks."""
    stream = _Stream()
    for name, obj in parsed.objects:
        stream.add(name, obj)
    out = [*header(stream.message), usage_line(stream.usage or None)]
    out += [stream_line(parsed.events, parsed.bad, "message_stop", stream.stopped), *stream.errors]
    if stream.blocks or stream.message or stream.stop:
        out += _reply(stream.message, stream.content(), stream.stop)
    return lines(out)
