"""The OpenAI Responses API family (``/v1/responses``): errors, usage and transcripts.

A Responses stream is typed events (``response.output_text.delta`` ...); only the
terminal ``response.completed``/``incomplete``/``failed`` events carry usage, so the
usage reader on the hot path parses nothing else. Output items are addressed by
``output_index``, so the stream transcript is assembled by position, in one pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from cfgw.family import Family, Usage, count, markers
from cfgw.family_chat import openai_error_body
from cfgw.sse import Event
from cfgw.transcript import (
    MAX_LABEL,
    args,
    clip,
    content_part,
    content_text,
    described,
    header,
    j,
    label,
    openai_usage_line,
    param_names,
    request_head,
    s,
    short_url,
)

__all__ = [
    "FAMILY",
    "ResponsesStreamUsage",
    "looks_like_request",
    "looks_like_response",
    "render_request",
    "render_response",
    "render_stream",
    "usage_from_json",
    "usage_line",
]

_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
"""Events that carry the whole response, usage included."""
_STARTED = frozenset({"response.created", "response.in_progress", "response.queued"})
_TERMINAL_TYPE = re.compile(r'"type"\s*:\s*"response\.(?:completed|incomplete|failed)"')
"""For servers that omit ``event:`` lines: a terminal event's data names its type."""
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})
_NOT_PARAMS = frozenset({"model", "input", "instructions", "tools"})


# --- errors and usage ---------------------------------------------------------------


def _usage(usage: Any) -> Usage | None:
    """A Responses ``usage`` object; None unless it holds at least one count."""
    if not isinstance(usage, dict):
        return None
    inp = usage.get("input_tokens_details")
    out = usage.get("output_tokens_details")
    u = Usage(
        input_tokens=count(usage.get("input_tokens")),
        output_tokens=count(usage.get("output_tokens")),
        total_tokens=count(usage.get("total_tokens")),
        cached_tokens=count(inp.get("cached_tokens")) if isinstance(inp, dict) else None,
        reasoning_tokens=count(out.get("reasoning_tokens")) if isinstance(out, dict) else None,
    )
    return None if u == Usage() else u


def usage_from_json(obj: Any) -> Usage | None:
    """Usage of a ``response`` object (created or retrieved); None for bodies without one (input_items)."""
    return _usage(obj.get("usage")) if isinstance(obj, dict) else None


class ResponsesStreamUsage:
    """Usage from a Responses event stream: json-parses only the terminal events that carry it."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def event(self, event: Event) -> None:
        """Skip deltas by name (or, without ``event:`` lines, by a substring test on the data)."""
        name, data = event.name, event.data
        if name not in _TERMINAL and (name not in ("", "message") or not _TERMINAL_TYPE.search(data)):
            return
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return
        if not isinstance(obj, dict):
            return
        typ = obj.get("type")
        if (typ if isinstance(typ, str) else name) in _TERMINAL:  # the data's type, else the event's name
            usage = usage_from_json(obj.get("response"))
            if usage is not None:
                self.usage = usage


def usage_line(usage: Any) -> str | None:
    """``usage: input 81 · output 15 · total 96 (cached 8, reasoning 4)`` (``?`` for missing counts)."""
    return openai_usage_line(_usage(usage), "input", "output")


# --- items (shared by request input and response output) ------------------------------


def _media(typ: Any, part: dict) -> str | None:
    """The Responses media parts as tags: ``<input_image URL detail=low>``, ``<input_file name>``."""
    if typ == "input_image":
        src = part.get("image_url") or part.get("file_id")
        tag = "<input_image" + (f" {short_url(src)}" if src else "")
        return tag + (f" detail={label(part['detail'])}>" if part.get("detail") else ">")
    if typ == "input_file":
        name = part.get("filename") or part.get("file_id") or part.get("file_url")
        return f"<input_file {short_url(name)}>" if name else "<input_file>"
    return None


def _part(part: Any) -> str:
    """One content part: text verbatim, media as a short ``<input_image ...>`` tag."""
    return content_part(part, _TEXT_PARTS, _media)


def _message_block(item: dict) -> list[str]:
    """``[role]`` then the content; output messages are the assistant's."""
    out = [f"[{label(item.get('role') or '?')}]"]
    text = content_text(item.get("content"), _part)
    if text:
        out.append(clip(text))
    if len(out) == 1:
        out.append("(empty)" if text == "" else "(no content)")
    return out


def _reasoning_block(item: dict) -> list[str]:
    """The summary (or raw reasoning text) between tags; encrypted-only reasoning as a tag."""
    texts = []
    for key in ("summary", "content"):
        parts = item.get(key)
        if isinstance(parts, list):
            texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
        if texts:
            break
    if texts:
        return ["<reasoning>", clip("\n\n".join(texts)), "</reasoning>"]
    enc = item.get("encrypted_content")
    if isinstance(enc, str) and enc:
        return [f"<reasoning (encrypted, {len(enc)} chars)>"]
    return ["<reasoning (no summary)>"]


def _output_text(output: Any) -> str:
    """A tool result: a string, or a list of content parts ('' when absent)."""
    return content_text(output, _part) or ""


def _item_block(item: Any) -> list[str]:
    """One input or output item: a message, a call, a call's output, reasoning, or a short tag."""
    if not isinstance(item, dict):
        return ["[?]", clip(j(item), MAX_LABEL)]
    typ = item.get("type")
    if typ == "message" or (typ is None and "role" in item):
        return _message_block(item)
    call_id = label(item.get("call_id") or "?")
    if typ in ("function_call", "custom_tool_call"):
        call_args = item.get("arguments") if typ == "function_call" else item.get("input")
        return [f"→ {typ} {call_id}: {label(item.get('name') or '?')}({clip(args(call_args))})"]
    if typ in ("function_call_output", "custom_tool_call_output"):
        return [f"← {typ} {call_id}: {clip(_output_text(item.get('output')))}"]
    if typ == "reasoning":
        return _reasoning_block(item)
    tag = label(typ) if typ else "item"
    return [f"<{tag} {label(item['id'])}>" if item.get("id") else f"<{tag}>"]


def _items(items: Iterable[Any]) -> list[str]:
    """Item blocks, each after a blank line."""
    out: list[str] = []
    for item in items:
        out.append("")
        out += _item_block(item)
    return out


# --- requests --------------------------------------------------------------------------


def _tool_def(tool: Any) -> str:
    """``tool <name>(<param names>) — <description>``; built-in tools as ``<web_search>`` tags."""
    if not isinstance(tool, dict):
        return f"tool {clip(j(tool), MAX_LABEL)}"
    typ = tool.get("type")
    if typ in ("function", "custom") or (typ is None and tool.get("name")):
        line = f"tool {label(tool.get('name') or '?')}({param_names(tool.get('parameters'))})"
        return described(line, tool.get("description"), MAX_LABEL)
    name = tool.get("server_label") or tool.get("name")
    tag = label(typ) if typ else "tool"
    return f"<{tag} {label(name)}>" if name else f"<{tag}>"


def render_request(obj: dict) -> str:
    """A ``POST /responses`` body: model, params, tools, instructions, then the input items."""
    if not isinstance(obj, dict):
        return f"(not a Responses request: {clip(j(obj), MAX_LABEL)})\n"
    out = request_head(obj, _NOT_PARAMS, label, _tool_def)
    instructions = obj.get("instructions")
    if isinstance(instructions, str):
        out += ["", "[instructions]", clip(instructions)]
    elif isinstance(instructions, list):  # a stored prompt's instructions come back as items
        out += _items(instructions)
    inp = obj.get("input")
    if isinstance(inp, str):
        out += ["", "[user]", clip(inp)]
    elif isinstance(inp, list):
        out += _items(inp)
    elif inp is not None:
        out += ["", "[?]", clip(j(inp), MAX_LABEL)]
    return "\n".join(out) + "\n"


# --- responses -------------------------------------------------------------------------


def _error_text(err: Any) -> str:
    """``code: message`` for OpenAI-style error objects, else the value as JSON."""
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        code = err.get("code")
        return clip(f"{label(code)}: {err['message']}" if code is not None else err["message"])
    return clip(s(err))


def _response_lines(obj: dict, stream: str = "", errors: Iterable[str] = (), output: Any = None) -> list[str]:
    """Header (model, id, status, usage, stream note, problems) then the output items."""
    out = header(obj, ("model", "id", "status"))
    if obj.get("deleted") is True:
        out.append("deleted: true")
    u = usage_line(obj.get("usage"))
    if u:
        out.append(u)
    if stream:
        out.append(stream)
    out += [f"error: {e}" for e in errors]
    details = obj.get("incomplete_details")
    if isinstance(details, dict) and details.get("reason") is not None:
        out.append(f"incomplete: {label(details['reason'])}")
    elif details is not None:
        out.append(f"incomplete: {label(details)}")
    if obj.get("error") is not None:
        out.append(f"error: {_error_text(obj['error'])}")
    if output is None:
        output = obj.get("output")
        if output is None and obj.get("object") == "list":  # GET /responses/{id}/input_items
            output = obj.get("data")
    if isinstance(output, list):
        out += _items(output)
    return out


def render_response(obj: dict) -> str:
    """A ``response`` object (created, retrieved, cancelled) or an input_items list."""
    if not isinstance(obj, dict):
        return f"(not a Responses response: {clip(j(obj), MAX_LABEL)})\n"
    return "\n".join(_response_lines(obj)) + "\n"


# --- streams ---------------------------------------------------------------------------


_DONE_FIELD = {
    "output_text": "text",
    "refusal": "refusal",
    "reasoning_summary_text": "text",
    "reasoning_text": "text",
    "function_call_arguments": "arguments",
    "custom_tool_call_input": "input",
}
"""Streamed fields: ``response.<kind>.delta`` carries ``delta``, ``.done`` the whole value under this key."""
_FRAGMENTS = {
    "output_text": "text",
    "refusal": "refusal",
    "reasoning_summary_text": "summary",
    "reasoning_text": "reasoning",
}
"""Which ``_StreamItem`` map holds a text kind's fragments."""


def _index(v: Any) -> int:
    """A content/summary index; junk counts as 0."""
    return v if type(v) is int else 0


class _StreamItem:
    """One output item being streamed: its announced shape plus the deltas, by position."""

    __slots__ = ("args", "base", "done", "reasoning", "refusal", "summary", "text")

    def __init__(self) -> None:
        self.base: dict = {}
        self.done: dict | None = None  # the full item from response.output_item.done
        self.text: dict[int, list[str]] = {}  # content_index -> fragments
        self.refusal: dict[int, list[str]] = {}
        self.summary: dict[int, list[str]] = {}  # summary_index -> fragments
        self.reasoning: dict[int, list[str]] = {}  # raw reasoning text, by content_index
        self.args: list[str] = []

    def item(self) -> dict:
        """The finished item if one arrived, else the announced one with the deltas joined in."""
        if self.done is not None:
            return self.done
        item = dict(self.base)
        typ = item.get("type") or (
            "message"
            if self.text or self.refusal
            else "reasoning"
            if self.summary or self.reasoning
            else "function_call"
        )
        item["type"] = typ
        if typ == "message":
            parts = [(i, {"type": "output_text", "text": "".join(f)}) for i, f in self.text.items()]
            parts += [(i, {"type": "refusal", "refusal": "".join(f)}) for i, f in self.refusal.items()]
            if parts:
                item["content"] = [p for _, p in sorted(parts, key=lambda ip: ip[0])]
            item.setdefault("role", "assistant")
        elif typ == "reasoning":
            for key, frags, part in (
                ("summary", self.summary, "summary_text"),
                ("content", self.reasoning, "reasoning_text"),
            ):
                if frags:
                    item[key] = [{"type": part, "text": "".join(frags[i])} for i in sorted(frags)]
        elif self.args:
            item["input" if typ == "custom_tool_call" else "arguments"] = "".join(self.args)
        return item


class _Assembler:
    """Output items by ``output_index`` (falling back to ``item_id``, then the latest item)."""

    def __init__(self) -> None:
        self.items: dict[int, _StreamItem] = {}
        self.by_id: dict[str, int] = {}
        self.last = 0

    def _slot(self, obj: dict) -> _StreamItem:
        idx = obj.get("output_index")
        if type(idx) is not int:
            item_id = obj.get("item_id")
            idx = self.by_id.get(item_id, self.last) if isinstance(item_id, str) else self.last
        self.last = idx
        slot = self.items.get(idx)
        if slot is None:
            slot = self.items[idx] = _StreamItem()
        return slot

    def event(self, typ: Any, obj: dict) -> None:
        """Fold one event in; events that change no item are ignored."""
        if typ in ("response.output_item.added", "response.output_item.done"):
            item = obj.get("item")
            if not isinstance(item, dict):
                return
            slot = self._slot(obj)
            if isinstance(item.get("id"), str):
                self.by_id[item["id"]] = self.last
            if typ.endswith(".done"):
                slot.done = item
            else:
                slot.base = item
            return
        if not isinstance(typ, str) or not typ.startswith("response."):
            return
        kind, _, phase = typ[9:].rpartition(".")
        field = _DONE_FIELD.get(kind) if phase == "done" else "delta" if phase == "delta" else None
        value = obj.get(field) if field and kind in _DONE_FIELD else None
        if not isinstance(value, str):
            return
        slot = self._slot(obj)
        if kind in ("function_call_arguments", "custom_tool_call_input"):
            if phase == "done":
                slot.args.clear()
            slot.args.append(value)
            return
        target = getattr(slot, _FRAGMENTS[kind])
        i = _index(obj.get("summary_index" if kind == "reasoning_summary_text" else "content_index"))
        frags = target.get(i)
        if frags is None or phase == "done":
            frags = target[i] = []
        frags.append(value)

    def output(self) -> list[dict]:
        """The items in output order."""
        return [self.items[i].item() for i in sorted(self.items)]


def _load(data: str) -> Any:
    """Parsed event data, or None when it is not JSON."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def render_stream(events: Iterable[Event]) -> str:
    """A streamed response: the final ``response.completed`` one when it came, else what arrived."""
    n = bad = 0
    started: dict | None = None
    final: dict | None = None
    final_type = ""
    errors: list[str] = []
    acc = _Assembler()
    for ev in events:
        data = getattr(ev, "data", None)
        if not isinstance(data, str) or data.strip() == "[DONE]":
            continue
        n += 1
        obj = _load(data)
        if not isinstance(obj, dict):
            bad += 1
            continue
        typ = obj.get("type")
        if not isinstance(typ, str):
            name = getattr(ev, "name", "")
            typ = name if isinstance(name, str) else ""
        resp = obj.get("response")
        if typ in _TERMINAL and isinstance(resp, dict):
            final, final_type = resp, typ
        elif typ in _STARTED and isinstance(resp, dict):
            started = started or resp
        elif typ == "error":
            errors.append(_error_text(obj["error"] if isinstance(obj.get("error"), dict) else obj))
        else:
            acc.event(typ, obj)
    stream = f"stream: {n} events" + (f" ({bad} unparseable)" if bad else "")
    if final is not None:
        output = final.get("output")
        assembled = None if isinstance(output, list) and output else acc.output()
        lines = _response_lines(final, f"{stream}, {final_type}", errors, assembled or None)
    else:
        head = {k: v for k, v in (started or {}).items() if k in ("model", "id")}
        stream += " (stream incomplete: no response.completed)"
        lines = _response_lines(head, stream, errors, acc.output())
    return "\n".join(lines) + "\n"


# --- detection -------------------------------------------------------------------------


def looks_like_request(obj: Any) -> bool:
    """A Responses request: ``input`` and ``model``, or ``instructions``; chat requests have ``messages``.

    ``{"model", "input": "text"}`` is also an embeddings/moderations request; their model names tell.
    """
    if not isinstance(obj, dict) or "messages" in obj or "object" in obj:  # responses carry "object"
        return False
    if isinstance(obj.get("instructions"), str | list):
        return True
    model = obj.get("model")
    inp = obj.get("input")
    if not isinstance(model, str) or not isinstance(inp, str | list):
        return False
    return "embed" not in model and "moderation" not in model


def looks_like_response(obj: Any) -> bool:
    """A ``response`` object, or the data of one of its stream events (``response.*``)."""
    if not isinstance(obj, dict):
        return False
    typ = obj.get("type")
    return obj.get("object") == "response" or (isinstance(typ, str) and typ.startswith("response."))


FAMILY = Family(
    name="responses",
    error_body=openai_error_body,
    usage_from_json=usage_from_json,
    stream_usage=ResponsesStreamUsage,
    usage_events=markers(_TERMINAL),
    last_usage_wins=True,
    render_request=render_request,
    render_response=render_response,
    render_stream=render_stream,
    looks_like_request=looks_like_request,
    looks_like_response=looks_like_response,
)
