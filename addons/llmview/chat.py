"""OpenAI Chat Completions (``.../chat/completions``), which most local model servers speak too.

A stream sends ``chat.completion.chunk`` deltas per choice: text, reasoning and tool-call
argument fragments are joined in order, a tool call found by its ``index`` (or its id).
"""

from __future__ import annotations

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

REQUEST_KEYS: tuple[str, ...] = ("messages",)
"""A body sent to a chat path is a request when it has one of these."""
MAX_CHOICES = 100
"""Choices of a stream assembled; the deltas of any more are counted, not shown."""

_NOT_PARAMS = frozenset({"model", "messages"})
_TEXTS = {"content": "content", "reasoning_content": "reasoning_content", "reasoning": "reasoning_content"}
_TEXTS |= {"refusal": "refusal"}


def looks_like_request(obj: Any) -> bool:
    """``messages`` and a string ``model`` (a Messages request too: the view asks that family first)."""
    return isinstance(obj, dict) and isinstance(obj.get("model"), str) and "messages" in obj


def looks_like_response(obj: Any) -> bool:
    """A chat.completion or one of its chunks: labelled, or with choices carrying a message or delta."""
    if not isinstance(obj, dict):
        return False
    choice = (obj.get("choices") or [{}])[0]
    return (
        obj.get("object") in ("chat.completion", "chat.completion.chunk")
        or "message" in choice
        or "delta" in choice
    )


def _call(call: dict) -> str:
    """``→ tool call <id>: <name>(<arguments>)``."""
    fn = call.get("function") or {}
    return f"→ tool call {label(call.get('id'))}: {label(fn.get('name'))}({args(fn.get('arguments'))})"


def message_lines(msg: dict) -> list[str]:
    """What a message says: reasoning, content, refusal, tool calls."""
    out = tagged("reasoning", msg.get("reasoning_content") or msg.get("reasoning"))
    out += [clip(content_text(msg.get("content")))]
    out += [f"refusal: {clip(s(msg['refusal']))}"] if msg.get("refusal") else []
    out += [_call(c) for c in msg.get("tool_calls") or []]
    return [line for line in out if line] or ["(no content)"]


def _tag(msg: dict) -> str:
    """``[user]``, ``[tool <call id>]`` or ``[user] name=alice``."""
    if msg.get("role") == "tool":
        return f"[tool {label(msg.get('tool_call_id'))}]"
    return f"[{label(msg.get('role'))}]" + (f" name={label(msg['name'])}" if msg.get("name") else "")


def _tool_def(tool: dict) -> str:
    fn = tool.get("function") or tool
    return tool_line(fn.get("name"), fn.get("parameters"), fn.get("description"))


def render_request(obj: dict) -> str:
    """Model, parameters, tools, then each message of the conversation."""
    out = request_head(obj, _NOT_PARAMS, _tool_def)
    for msg in obj.get("messages") or []:
        out += ["", _tag(msg), *message_lines(msg)]
    return lines(out)


def _reply(msg: dict, index: Any, finish: Any, show_index: bool) -> list[str | None]:
    """One choice: role, message, finish reason."""
    tag = f"[{label(msg.get('role') or 'assistant')}]" + (f" choice {label(index)}" if show_index else "")
    return ["", tag, *message_lines(msg), f"finish_reason: {label(finish)}" if finish is not None else None]


def render_response(obj: dict) -> str:
    """Model, id, usage, then each choice."""
    out = [*header(obj), usage_line(obj.get("usage"))]
    choices = obj.get("choices") or []
    for ch in choices:
        out += _reply(ch.get("message") or {}, ch.get("index"), ch.get("finish_reason"), len(choices) > 1)
    return lines(out)


class _Choice:
    """One choice of a stream: text fragments and tool calls, joined once at the end."""

    def __init__(self) -> None:
        self.role = "assistant"
        self.texts: dict[str, list[str]] = {"reasoning_content": [], "content": [], "refusal": []}
        self.calls: dict[Any, dict] = {}
        self.finish: Any = None

    def add(self, choice: dict) -> None:
        delta = choice.get("delta") or {}
        self.role = delta.get("role") or self.role
        for key in _TEXTS.keys() & delta.keys():
            self.texts[_TEXTS[key]].append(s(delta[key] or ""))
        for fragment in delta.get("tool_calls") or []:
            self._call(fragment)
        self.finish = choice.get("finish_reason") or self.finish

    def _call(self, fragment: dict) -> None:
        """A fragment goes to the call with its index; without one, to its id's, else to the last call."""
        key = fragment.get("index", fragment.get("id") or next(reversed(self.calls), None))
        call = self.calls.setdefault(key, {"id": None, "name": None, "arguments": []})
        fn = fragment.get("function") or {}
        call["id"] = call["id"] or fragment.get("id")
        call["name"] = call["name"] or fn.get("name")
        call["arguments"].append(s(fn.get("arguments") or ""))

    def message(self) -> dict:
        """The assembled message, shaped like an answer's."""
        calls = [
            {"id": c["id"], "function": {"name": c["name"], "arguments": "".join(c["arguments"])}}
            for c in self.calls.values()
        ]
        return {"role": self.role, "tool_calls": calls, **{k: "".join(v) for k, v in self.texts.items()}}


def _choices(chunks: list[dict]) -> tuple[dict[Any, _Choice], int]:
    """The chunks' deltas folded into choices, by index; how many deltas went past MAX_CHOICES."""
    choices: dict[Any, _Choice] = {}
    dropped = 0
    for delta in (ch for chunk in chunks for ch in chunk.get("choices") or []):
        if delta.get("index") in choices or len(choices) < MAX_CHOICES:
            choices.setdefault(delta.get("index"), _Choice()).add(delta)
        else:
            dropped += 1
    return choices, dropped


def _head(parsed: sse.Parsed, chunks: list[dict]) -> list[str | None]:
    """The first chunk's model and id, the last usage sent, a line about the stream, the errors."""
    usage = next((chunk["usage"] for chunk in reversed(chunks) if chunk.get("usage")), None)
    out = [*header(chunks[0] if chunks else {}), usage_line(usage)]
    out += [stream_line(parsed.events, parsed.bad, "[DONE]", parsed.done)]
    return out + [f"error: {clip(s(chunk['error']))}" for chunk in chunks if chunk.get("error")]


def render_stream(parsed: sse.Parsed) -> str:
    """The assembled reply: header, usage, a line about the stream, then each choice."""
    chunks = [obj for _, obj in parsed.objects]
    out = _head(parsed, chunks)
    choices, dropped = _choices(chunks)
    for index, choice in choices.items():
        out += _reply(choice.message(), index, choice.finish, len(choices) > 1)
    note = f"… {dropped} deltas of choices past the first {MAX_CHOICES} not shown"
    return lines([*out, note if dropped else None])
