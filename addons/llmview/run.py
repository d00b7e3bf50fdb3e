"""Workers AI (``.../ai/run/<model>``, a gateway's ``workers-ai`` route): text generation models.

A request is ``{"prompt"}`` or ``{"messages"}`` (inside ``"input"`` when sent with a
``"model"``); the answer is ``{"result": {"response", "tool_calls", "usage"}}`` and a
stream sends ``{"response": piece}`` events. Answers in chat completions' shape are chat's.
"""

from __future__ import annotations

from typing import Any

from llmview import chat, sse
from llmview.text import clip, lines, s, stream_line, usage_line

REQUEST_KEYS: tuple[str, ...] = ("messages", "prompt", "input")
"""A body sent to a Workers AI path is a request when it has one of these."""


def looks_like_request(obj: Any) -> bool:
    return isinstance(obj, dict) and any(k in obj for k in REQUEST_KEYS)


def looks_like_response(obj: Any) -> bool:
    """A ``result``, a stream event's ``response`` piece, or chat's shape."""
    return isinstance(obj, dict) and ("result" in obj or "response" in obj or chat.looks_like_response(obj))


def render_request(obj: dict) -> str:
    """As a chat request; the prompt is the user's message."""
    body = dict(obj)
    if isinstance(body.get("input"), dict):
        body.update(body.pop("input"))
    prompt = body.pop("prompt", None)
    return chat.render_request(body) + ("" if prompt is None else f"\n[user]\n{clip(s(prompt))}\n")


def _reply(text: Any, calls: Any) -> list[str]:
    """Workers AI's tool calls are ``{"name", "arguments"}``: shown as chat's."""
    calls = [{"id": c.get("id"), "function": c.get("function", c)} for c in calls or []]
    return ["", "[assistant]", *chat.message_lines({"content": text, "tool_calls": calls})]


def render_response(obj: dict) -> str:
    """The ``result``'s text, tool calls and usage."""
    result = obj.get("result") or obj
    if chat.looks_like_response(result):
        return chat.render_response(result)
    errors = [f"error: {clip(s(e))}" for e in obj.get("errors") or []]
    reply = _reply(result.get("response"), result.get("tool_calls"))
    return lines([usage_line(result.get("usage")), *errors, *reply])


def render_stream(parsed: sse.Parsed) -> str:
    """The ``response`` pieces joined, with the last usage sent."""
    if parsed.objects and chat.looks_like_response(parsed.objects[0][1]):
        return chat.render_stream(parsed)
    text = "".join(s(obj.get("response", "")) for _, obj in parsed.objects)
    usage = next((obj["usage"] for _, obj in reversed(parsed.objects) if obj.get("usage")), None)
    note = stream_line(parsed.events, parsed.bad, "[DONE]", parsed.done)
    return lines([usage_line(usage), note, *_reply(text, None)])
