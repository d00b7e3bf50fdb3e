"""OpenAI Responses (``.../responses``): input and output items, typed ``response.*`` stream events.

A complete stream ends with ``response.completed`` (or ``incomplete``/``failed``) carrying
the whole response; a stream cut short is assembled from its deltas, by ``output_index``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from llmview import sse
from llmview.text import (
    args,
    clip,
    content_text,
    header,
    label,
    lines,
    request_head,
    s,
    stream_line,
    tagged,
    tool_line,
    usage_line,
)

REQUEST_KEYS: tuple[str, ...] = ("input", "instructions", "prompt")
"""A body sent to a Responses path is a request when it has one of these."""

_NOT_RESPONSES = re.compile("embed|moderation")
"""Models that take an ``input`` too."""
_NOT_PARAMS = frozenset({"model", "input", "instructions"})
_TERMINAL = ("response.completed", "response.incomplete", "response.failed")
_STARTED = ("response.created", "response.in_progress", "response.queued")
_KINDS = {
    "output_text": ("text", "message", "content", "output_text"),
    "refusal": ("refusal", "message", "content", "refusal"),
    "reasoning_summary_text": ("text", "reasoning", "summary", "summary_text"),
    "reasoning_text": ("text", "reasoning", "content", "reasoning_text"),
    "function_call_arguments": ("arguments", "function_call", "", ""),
    "custom_tool_call_input": ("input", "custom_tool_call", "", ""),
}
"""A streamed text (``response.<kind>.delta``/``.done``): the field holding it in the event and in
its part; the type of its item; the list of parts it goes in, and their type ('': a field of the item)."""


def looks_like_request(obj: Any) -> bool:
    """``model`` and ``input``, or ``instructions``; not a chat request, nor embeddings (``input`` too)."""
    if not isinstance(obj, dict) or "messages" in obj or "object" in obj:
        return False
    return ("input" in obj or "instructions" in obj) and not _NOT_RESPONSES.search(s(obj.get("model")))


def looks_like_response(obj: Any) -> bool:
    """A ``response`` object, or a stream event's data (``response.*``)."""
    if not isinstance(obj, dict):
        return False
    return obj.get("object") == "response" or s(obj.get("type")).startswith("response.")


# --- items ---------------------------------------------------------------------------------


def _message(item: dict) -> list[str]:
    return [
        f"[{label(item.get('role') or 'assistant')}]",
        clip(content_text(item.get("content"))) or "(empty)",
    ]


def _reasoning(item: dict) -> list[str]:
    """The summary (or the reasoning text) between tags; encrypted reasoning as a tag."""
    text = content_text(item.get("summary")) or content_text(item.get("content"))
    if text:
        return tagged("reasoning", text)
    encrypted = item.get("encrypted_content")
    return [
        f"<reasoning (encrypted, {len(encrypted)} chars)>" if isinstance(encrypted, str) else "<reasoning>"
    ]


def _call(item: dict) -> list[str]:
    call = item.get("arguments", item.get("input"))
    return [f"→ {item['type']} {label(item.get('call_id'))}: {label(item.get('name'))}({args(call)})"]


def _output(item: dict) -> list[str]:
    return [f"← {item['type']} {label(item.get('call_id'))}: {clip(content_text(item.get('output')))}"]


def _tag(item: dict) -> list[str]:
    return [f"<{label(item.get('type') or 'item')}" + (f" {label(item['id'])}>" if item.get("id") else ">")]


_ITEMS: dict[Any, Callable[[dict], list[str]]] = {
    "message": _message,
    "reasoning": _reasoning,
    **dict.fromkeys(("function_call", "custom_tool_call"), _call),
    **dict.fromkeys(("function_call_output", "custom_tool_call_output"), _output),
}


def _items(items: Iterable[Any]) -> list[str]:
    """Each item after a blank line; an item with a role but no type is a message."""
    out = []
    for item in items:
        item = item if isinstance(item, dict) else {"role": "?", "content": item}
        typ = item.get("type") or ("message" if "role" in item else None)
        out += ["", *_ITEMS.get(typ, _tag)(item)]
    return out


# --- requests and answers ------------------------------------------------------------------


def _tool_def(tool: dict) -> str:
    """``tool <name>(<parameter names>) — <description>``; built-in tools as ``<web_search>``."""
    if tool.get("type") in ("function", "custom", None):
        return tool_line(tool.get("name"), tool.get("parameters"), tool.get("description"))
    name = tool.get("server_label") or tool.get("name")
    return f"<{label(tool['type'])}" + (f" {label(name)}>" if name else ">")


def render_request(obj: dict) -> str:
    """Model, parameters, tools, instructions, then the input items."""
    out = request_head(obj, _NOT_PARAMS, _tool_def)
    for key, role in (("instructions", "instructions"), ("input", "user")):
        value = obj.get(key)
        if isinstance(value, list):
            out += _items(value)
        elif value:
            out += ["", f"[{role}]", clip(s(value))]
    return lines(out)


def _error_line(err: Any) -> str:
    """``error: code: message`` for an OpenAI error object."""
    if isinstance(err, dict) and "message" in err:
        return f"error: {label(err.get('code'))}: {clip(s(err['message']))}"
    return f"error: {clip(s(err))}"


def _response_lines(obj: dict, notes: Iterable[str], output: list) -> list[str | None]:
    """Header (model, id, status, usage, notes, problems), then the output items."""
    details = obj.get("incomplete_details") or {}
    out = [*header(obj, ("model", "id", "status")), usage_line(obj.get("usage"), "input", "output"), *notes]
    out += [f"incomplete: {label(details.get('reason'))}" if details else None]
    out += [_error_line(obj["error"]) if obj.get("error") else None]
    return out + _items(output)


def render_response(obj: dict) -> str:
    """A ``response`` object, created or retrieved."""
    return lines(_response_lines(obj, [], obj.get("output") or []))


# --- streams -------------------------------------------------------------------------------


class _Slot:
    """One output item of a stream: as announced, as finished, and the texts streamed in between."""

    def __init__(self) -> None:
        self.base: dict = {}
        self.done: dict | None = None
        self.texts: dict[tuple[str, Any], list[str]] = {}  # (kind, content or summary index) -> fragments

    def item(self) -> dict:
        """The finished item when it came, else the announced one with the texts joined in."""
        if self.done is not None:
            return self.done
        item = dict(self.base)
        for (kind, _), fragments in self.texts.items():
            field, typ, parts, part_type = _KINDS[kind]
            item.setdefault("type", typ)
            if parts:
                item[parts] = [*item.get(parts, []), {"type": part_type, field: "".join(fragments)}]
            else:
                item[field] = "".join(fragments)
        return item


_HANDLERS = {**dict.fromkeys(_TERMINAL, "_final"), **dict.fromkeys(_STARTED, "_started"), "error": "_error"}
_HANDLERS |= dict.fromkeys(("response.output_item.added", "response.output_item.done"), "_item")


class _Stream:
    """Stream events folded into the response they build; the rest of ``response.*`` are texts."""

    def __init__(self) -> None:
        self.started: dict = {}
        self.final: dict = {}
        self.final_type = "response.completed"
        self.ended = False
        self.errors: list[str] = []
        self.slots: dict[Any, _Slot] = {}
        self.by_id: dict[Any, Any] = {}

    def add(self, name: str, obj: dict) -> None:
        typ = s(obj.get("type") or name)
        getattr(self, _HANDLERS.get(typ, "_text"))(obj, typ)

    def _final(self, obj: dict, typ: str) -> None:
        self.final, self.final_type, self.ended = obj.get("response") or {}, typ, True

    def _started(self, obj: dict, typ: str) -> None:
        self.started = self.started or obj.get("response") or {}

    def _error(self, obj: dict, typ: str) -> None:
        self.errors.append(_error_line(obj.get("error", obj)))

    def _slot(self, obj: dict, item_id: Any) -> _Slot:
        """The item at ``output_index``; without one, the item with ``item_id``, else the latest."""
        index = obj.get("output_index", self.by_id.get(item_id, len(self.slots) - 1))
        self.by_id[item_id] = index
        return self.slots.setdefault(index, _Slot())

    def _item(self, obj: dict, typ: str) -> None:
        """``output_item.added`` announces an item, ``output_item.done`` has it whole."""
        item = obj.get("item") or {}
        slot = self._slot(obj, item.get("id"))
        if typ.endswith(".done"):
            slot.done = item
        else:
            slot.base = item

    def _text(self, obj: dict, typ: str) -> None:
        """``response.<kind>.delta`` appends to a text, ``response.<kind>.done`` replaces it."""
        kind, _, phase = typ.removeprefix("response.").rpartition(".")
        if kind not in _KINDS or phase not in ("delta", "done"):
            return
        value = obj.get("delta", "") if phase == "delta" else obj.get(_KINDS[kind][0], "")
        index = obj.get("summary_index", obj.get("content_index"))
        fragments = self._slot(obj, obj.get("item_id")).texts.setdefault((kind, index), [])
        if phase == "done":
            fragments.clear()
        fragments.append(s(value))

    def render(self, parsed: sse.Parsed) -> str:
        """The final response, else the one the stream started with; the items assembled if it has none."""
        response = self.final if self.ended else self.started
        note = stream_line(parsed.events, parsed.bad, self.final_type, self.ended)
        output = response.get("output") or [slot.item() for slot in self.slots.values()]
        return lines(_response_lines(response, [note, *self.errors], output))


def render_stream(parsed: sse.Parsed) -> str:
    """The final response when it came, else what arrived."""
    stream = _Stream()
    for name, obj in parsed.objects:
        stream.add(name, obj)
    return stream.render(parsed)
