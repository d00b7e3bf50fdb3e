"""OpenAI Chat Completions, and the other OpenAI-shaped compat paths, as cf-gateway families.

``CHAT`` is ``/v1/chat/completions``: OpenAI errors, ``usage`` with prompt/completion
counts (a stream reports it in a last chunk when the client asks for
``stream_options.include_usage``) and messages/choices rendered as a transcript.
``OTHER`` is every other compat path (embeddings, models): OpenAI errors and usage
too, but no transcript - the content view leaves those bodies to mitmproxy's JSON view.
Everything here is pure and never raises on hostile input.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from cfgw.family import Family, Usage, count
from cfgw.sse import Event
from cfgw.transcript import (
    args,
    clip,
    content_part,
    content_text,
    described,
    header,
    j,
    openai_usage_line,
    param_names,
    request_head,
    s,
    short_url,
)

__all__ = [
    "CHAT",
    "OTHER",
    "ChatStreamUsage",
    "looks_like_request",
    "looks_like_response",
    "openai_error_body",
    "render_request",
    "render_response",
    "render_stream",
    "usage_from_json",
    "usage_line",
]

# --- errors and usage ----------------------------------------------------------------


def openai_error_body(status: int, message: str, code: str | int | None, openai_type: str) -> dict:
    """OpenAI's error shape: the SDKs raise their usual exception with this message and code.

    ``status`` is not part of the body; the SDK reads it from the response.
    """
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


def _count(usage: dict, name: str, fallback: str) -> int | None:
    """``usage[name]`` as a count, else ``usage[fallback]``: chat names win, Responses-style names
    are only a fallback (looked up only when needed: this runs for every response)."""
    n = count(usage.get(name))
    return n if n is not None else count(usage.get(fallback))


def _detail(usage: dict, section: str, fallback: str, key: str) -> int | None:
    """A count inside ``usage[section][key]`` (e.g. prompt_tokens_details.cached_tokens), else
    inside ``usage[fallback][key]``."""
    for name in (section, fallback):
        details = usage.get(name)
        n = count(details.get(key)) if isinstance(details, dict) else None
        if n is not None:
            return n
    return None


def usage_of(usage: Any) -> Usage | None:
    """A parsed ``usage`` object as Usage; None unless it holds a prompt, completion or total count."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage, "prompt_tokens", "input_tokens")
    completion = _count(usage, "completion_tokens", "output_tokens")
    total = count(usage.get("total_tokens"))
    if prompt is None and completion is None and total is None:
        return None
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=total,
        cached_tokens=_detail(usage, "prompt_tokens_details", "input_tokens_details", "cached_tokens"),
        reasoning_tokens=_detail(
            usage, "completion_tokens_details", "output_tokens_details", "reasoning_tokens"
        ),
    )


def usage_from_json(obj: Any) -> Usage | None:
    """Usage of a chat.completion or embeddings body (``usage`` at the top level); never raises."""
    return usage_of(obj.get("usage")) if isinstance(obj, dict) else None


_USAGE_OBJECT = re.compile(r'"usage"\s*:\s*\{')


def _has_usage_object(data: str) -> bool:
    """Whether ``"usage": {`` occurs; include_usage streams send ``"usage":null`` on every other chunk."""
    pos = data.find('"usage"')
    while pos != -1:
        if _USAGE_OBJECT.match(data, pos):
            return True
        pos = data.find('"usage"', pos + 7)
    return False


USAGE_EVENTS = re.compile(_USAGE_OBJECT.pattern.encode())
"""The include_usage chunk (every other chunk says ``"usage": null``, when it says anything)."""


class ChatStreamUsage:
    """Usage from a chat stream: the final include_usage chunk (the last usage seen wins); never raises.

    Most chunks are skipped with substring tests; only one carrying a usage object is parsed.
    """

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def event(self, event: Event) -> None:
        try:
            data = event.data
            if '"usage"' not in data or not _has_usage_object(data):
                return
            try:
                candidates = [json.loads(data)]
            except ValueError:
                # Servers that omit the blank line between events: one chunk per data line.
                candidates = [json.loads(line) for line in data.split("\n") if _has_usage_object(line)]
            for obj in candidates:
                usage = usage_from_json(obj)
                if usage is not None:
                    self.usage = usage
        except Exception:
            pass


# --- rendering helpers ---------------------------------------------------------------

_MAX_PARAM = 1000  # characters of one request parameter's value
_MAX_CHOICES = 1000  # distinct choice indexes assembled from a stream (each costs memory)


_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


def _media(typ: Any, part: dict) -> str | None:
    """Chat's own media parts as tags: ``<image_url ... detail=low>``, ``<file name>``; None for others."""
    if typ == "image_url":
        img = part.get("image_url")
        if isinstance(img, dict):
            tag = f"<image_url {short_url(img.get('url'))}"
            if img.get("detail"):
                tag += f" detail={s(img['detail'])}"
            return tag + ">"
        return f"<image_url {short_url(img)}>"
    if typ == "file":
        f = part.get("file")
        name = (f.get("filename") or f.get("file_id")) if isinstance(f, dict) else None
        return f"<file {s(name)}>" if name else "<file>"
    return None


def _part(part: Any) -> str:
    """One element of multi-part content: text verbatim, media as a ``<type ...>`` tag (never cut)."""
    return content_part(part, _TEXT_PARTS, _media, limit=None)


def _call(name: Any, arguments: Any) -> str:
    """``name(arguments)`` with the arguments as sent, cut when long."""
    return f"{s(name or '?')}({clip(args(arguments))})"


def _tool_call_line(call: Any) -> str:
    """``→ tool call <id>: <name>(<arguments>)`` for one entry of ``tool_calls``."""
    if not isinstance(call, dict):
        return f"→ tool call: {clip(j(call))}"
    fn = call.get("function")
    fn = fn if isinstance(fn, dict) else {}
    name = fn.get("name")
    if name is None and call.get("type") not in (None, "function"):
        name = call.get("type")  # e.g. custom tools
    return f"→ tool call {s(call.get('id') or '?')}: {_call(name, fn.get('arguments'))}"


def _reasoning(msg: dict) -> str | None:
    """Reasoning text under either field name providers use."""
    for key in ("reasoning_content", "reasoning"):
        v = msg.get(key)
        if isinstance(v, str) and v:
            return v
    return None


def _message_lines(msg: dict) -> list[str]:
    """What a message says: reasoning, content, refusal, tool calls, audio.

    Shared by request history, response choices and assembled streams; never empty.
    """
    out = []
    reasoning = _reasoning(msg)
    if reasoning is not None:
        out += ["<reasoning>", clip(reasoning), "</reasoning>"]
    text = content_text(msg.get("content"), _part)
    if text:
        out.append(clip(text))
    refusal = msg.get("refusal")
    if isinstance(refusal, str) and refusal:
        out.append(f"refusal: {clip(refusal)}")
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        out += [_tool_call_line(c) for c in calls]
    fc = msg.get("function_call")
    if isinstance(fc, dict):
        out.append(f"→ function call: {_call(fc.get('name'), fc.get('arguments'))}")
    audio = msg.get("audio")
    if isinstance(audio, dict):
        out.append(f"<audio {s(audio['id'])}>" if audio.get("id") else "<audio>")
    if not out:
        out.append("(empty)" if text == "" else "(no content)")
    return out


def _reply(index: Any, msg: dict, finish: Any, show_index: bool) -> list[str]:
    """One choice of a response or stream: role tag, the message, finish reason."""
    tag = f"[{s(msg.get('role') or 'assistant')}]" + (f" choice {s(index)}" if show_index else "")
    out = [tag, *_message_lines(msg)]
    if finish is not None:
        out.append(f"finish_reason: {s(finish)}")
    return out


def usage_line(u: Usage | None) -> str | None:
    """``usage: prompt 12 · completion 34 · total 46 (cached 8)`` (``?`` for missing counts)."""
    return openai_usage_line(u, "prompt", "completion")


def _json_text(obj: Any) -> str:
    """Best effort for a body that is not what a renderer expects: one line of JSON, cut when long."""
    return clip(j(obj)) + "\n"


# --- requests ------------------------------------------------------------------------

_NOT_PARAMS = frozenset({"model", "messages", "tools", "functions"})


def _tool_def(tool: Any) -> str:
    """``tool <name>(<param names>) — <description>`` for a tool/function definition."""
    if not isinstance(tool, dict):
        return f"tool {clip(j(tool), _MAX_PARAM)}"
    fn = tool.get("function")
    fn = fn if isinstance(fn, dict) else tool
    name = fn.get("name") or tool.get("type") or "?"
    line = f"tool {s(name)}({param_names(fn.get('parameters'), limit=None)})"
    return described(line, fn.get("description"), _MAX_PARAM)


def _param_value(v: Any) -> str:
    """A request parameter's value (``stream=true``), cut at _MAX_PARAM."""
    return clip(s(v), _MAX_PARAM)


def _request_tag(msg: dict) -> str:
    """``[role]``, ``[tool <call id>]``, ``[function <name>]`` or ``[user] name=alice``."""
    role = s(msg.get("role") or "?")
    if role == "tool":
        return f"[tool {s(msg.get('tool_call_id') or '?')}]"
    if role == "function":
        return f"[function {s(msg.get('name') or '?')}]"
    return f"[{role}]" + (f" name={s(msg['name'])}" if msg.get("name") else "")


def render_request(obj: dict) -> str:
    """A chat/completions request: model, params, tools, then each message of the conversation."""
    if not isinstance(obj, dict):
        return _json_text(obj)
    out = request_head(obj, _NOT_PARAMS, _param_value, _tool_def, ("tools", "functions"), limit=None)
    messages = obj.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            out.append("")
            if isinstance(msg, dict):
                out += [_request_tag(msg), *_message_lines(msg)]
            else:
                out += ["[?]", clip(j(msg))]
    return "\n".join(out) + "\n"


# --- responses -----------------------------------------------------------------------


def render_response(obj: dict) -> str:
    """A chat.completion: model, id, usage, error, then each choice."""
    if not isinstance(obj, dict):
        return _json_text(obj)
    out = header(obj, limit=None)
    u = usage_line(usage_of(obj.get("usage")))
    if u:
        out.append(u)
    if obj.get("error") is not None:
        out.append(f"error: {clip(s(obj['error']))}")
    choices = obj.get("choices")
    choices = choices if isinstance(choices, list) else []
    for pos, ch in enumerate(choices):
        if not isinstance(ch, dict):
            continue
        msg = ch.get("message")
        msg = msg if isinstance(msg, dict) else {}
        index = ch.get("index", pos)
        out.append("")
        out += _reply(index, msg, ch.get("finish_reason"), len(choices) > 1 or index != 0)
    return "\n".join(out) + "\n"


# --- streams -------------------------------------------------------------------------


class _ToolCall:
    """One streamed tool call: id and name from its first fragment that has them, arguments joined."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id: Any = None
        self.name: Any = None
        self.arguments: list[str] = []


class _StreamChoice:
    """Accumulates the deltas of one choice index; every fragment costs O(1) (lists joined at the end)."""

    __slots__ = (
        "_by_id",
        "_last",
        "content",
        "finish",
        "function_call",
        "reasoning",
        "refusal",
        "role",
        "tools",
    )

    def __init__(self) -> None:
        self.role: str | None = None
        self.content: list[str] | None = None
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.tools: dict[Any, _ToolCall] = {}  # tool-call index (or ("auto", n)) -> call
        self._by_id: dict[str, Any] = {}  # tool-call id -> its key in tools
        self._last: Any = None  # key of the call the last fragment went to
        self.function_call: _ToolCall | None = None
        self.finish: Any = None

    def add(self, delta: dict) -> None:
        """Merge one ``delta``: text concatenated, tool-call fragments joined per call."""
        if isinstance(delta.get("role"), str) and self.role is None:
            self.role = delta["role"]
        if isinstance(delta.get("content"), str):
            if self.content is None:
                self.content = []
            self.content.append(delta["content"])
        if isinstance(delta.get("refusal"), str):
            self.refusal.append(delta["refusal"])
        for key in ("reasoning_content", "reasoning"):
            if isinstance(delta.get(key), str):
                self.reasoning.append(delta[key])
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for frag in calls:
                if isinstance(frag, dict):
                    self._tool_fragment(frag)
        fc = delta.get("function_call")
        if isinstance(fc, dict):
            if self.function_call is None:
                self.function_call = _ToolCall()
            _merge(self.function_call, fc)

    def _tool_fragment(self, frag: dict) -> None:
        """``index`` identifies the call; without one (some providers), a new id starts a new call."""
        fid = frag.get("id")
        fid = fid if isinstance(fid, str) and fid else None
        key = frag.get("index")
        if not isinstance(key, int):
            if fid is not None and fid in self._by_id:
                key = self._by_id[fid]
            elif fid is not None or self._last is None:
                key = ("auto", len(self.tools))
            else:
                key = self._last
        call = self.tools.get(key)
        if call is None:
            call = self.tools[key] = _ToolCall()
        self._last = key
        if fid is not None and call.id is None:
            call.id = fid
            self._by_id.setdefault(fid, key)
        fn = frag.get("function")
        if isinstance(fn, dict):
            _merge(call, fn)

    def message(self) -> dict:
        """The assembled message, shaped like a non-streamed one."""
        msg: dict[str, Any] = {"role": self.role or "assistant"}
        if self.reasoning:
            msg["reasoning_content"] = "".join(self.reasoning)
        msg["content"] = None if self.content is None else "".join(self.content)
        if self.refusal:
            msg["refusal"] = "".join(self.refusal)
        if self.tools:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": "".join(c.arguments)},
                }
                for c in self.tools.values()
            ]
        fc = self.function_call
        if fc is not None:
            msg["function_call"] = {"name": fc.name, "arguments": "".join(fc.arguments)}
        return msg


def _merge(call: _ToolCall, fn: dict) -> None:
    """A ``function`` fragment: the first name wins, arguments are appended."""
    if fn.get("name") and not call.name:
        call.name = fn["name"]
    if fn.get("arguments") is not None:
        call.arguments.append(args(fn["arguments"]))


_DONE = object()  # the data: [DONE] sentinel
_BAD = object()  # data that is not JSON


def _payloads(data: Any) -> list[Any]:
    """An event's data as parsed chunks: usually one; one per line when a server omitted blank lines."""
    if not isinstance(data, str):
        return [_BAD]
    stripped = data.strip()
    if not stripped:
        return []
    if stripped == "[DONE]":
        return [_DONE]
    try:
        return [json.loads(data)]
    except Exception:  # ValueError, or RecursionError for absurd nesting
        pass
    if "\n" not in data:
        return [_BAD]
    return [p for line in data.split("\n") for p in _payloads(line)]


def render_stream(events: Iterable[Event]) -> str:
    """A streamed chat completion, assembled from its chunks: header, usage, stream summary, choices."""
    first: dict | None = None
    usage: Usage | None = None
    errors: list[str] = []
    choices: dict[Any, _StreamChoice] = {}
    dropped = False
    n_events = bad = 0
    done = False
    for ev in events:
        for chunk in _payloads(getattr(ev, "data", None)):
            if chunk is _DONE:
                done = True
                continue
            n_events += 1
            if not isinstance(chunk, dict):
                bad += 1
                continue
            if first is None:
                first = chunk
            usage = usage_of(chunk.get("usage")) or usage
            if chunk.get("error") is not None:
                errors.append(clip(s(chunk["error"])))
            chs = chunk.get("choices")
            if not isinstance(chs, list):
                continue
            for pos, ch in enumerate(chs):
                if not isinstance(ch, dict):
                    continue
                index = ch.get("index", pos)
                try:
                    acc = choices.get(index)
                except TypeError:  # unhashable index
                    continue
                if acc is None:
                    if len(choices) >= _MAX_CHOICES:
                        dropped = True
                        continue
                    acc = choices[index] = _StreamChoice()
                if isinstance(ch.get("delta"), dict):
                    acc.add(ch["delta"])
                if ch.get("finish_reason") is not None:
                    acc.finish = ch["finish_reason"]

    out = header(first or {}, limit=None)
    u = usage_line(usage)
    if u:
        out.append(u)
    summary = f"stream: {n_events} events"
    if bad:
        summary += f" ({bad} unparseable)"
    summary += ", [DONE]" if done else " (stream incomplete: no [DONE])"
    out.append(summary)
    out += [f"error: {e}" for e in errors]
    show_index = len(choices) > 1 or any(i != 0 for i in choices)
    for index in sorted(choices, key=lambda i: (0, i, "") if type(i) is int else (1, 0, str(i))):
        acc = choices[index]
        out.append("")
        out += _reply(index, acc.message(), acc.finish, show_index)
    if dropped:
        out += ["", f"… more choices not shown (only the first {_MAX_CHOICES} are assembled)"]
    return "\n".join(out) + "\n"


# --- detection -----------------------------------------------------------------------


def looks_like_request(obj: Any) -> bool:
    """A chat request: ``messages`` and a string ``model`` (or a first message with a role).

    An Anthropic Messages request can look the same; the content view asks that family first.
    """
    if not isinstance(obj, dict):
        return False
    messages = obj.get("messages")
    if not isinstance(messages, list):
        return False
    first = messages[0] if messages else None
    return isinstance(obj.get("model"), str) or (isinstance(first, dict) and "role" in first)


def looks_like_response(obj: Any) -> bool:
    """A chat.completion, a chat.completion.chunk, or an unlabeled body whose choices carry message/delta."""
    if not isinstance(obj, dict):
        return False
    if obj.get("object") in ("chat.completion", "chat.completion.chunk"):
        return True
    choices = obj.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(
            isinstance(c, dict) and (isinstance(c.get("message"), dict) or isinstance(c.get("delta"), dict))
            for c in choices
        )
    )


CHAT = Family(
    name="chat",
    error_body=openai_error_body,
    usage_from_json=usage_from_json,
    stream_usage=ChatStreamUsage,
    usage_events=USAGE_EVENTS,
    last_usage_wins=True,
    render_request=render_request,
    render_response=render_response,
    render_stream=render_stream,
    looks_like_request=looks_like_request,
    looks_like_response=looks_like_response,
)


# --- the other compat paths ------------------------------------------------------------


def _events_text(events: Iterable[Event]) -> str:
    """Each event's data on a line of its own (no OpenAI-compat path but chat streams)."""
    return "".join(clip(s(getattr(ev, "data", ""))) + "\n" for ev in events)


def _never(obj: Any) -> bool:
    """OTHER's bodies are never claimed by the content view."""
    return False


OTHER = Family(
    name="other",
    error_body=openai_error_body,
    usage_from_json=usage_from_json,
    stream_usage=ChatStreamUsage,
    usage_events=USAGE_EVENTS,
    last_usage_wins=True,
    render_request=_json_text,  # embeddings and model lists read best in mitmproxy's JSON view
    render_response=_json_text,
    render_stream=_events_text,
    looks_like_request=_never,
    looks_like_response=_never,
)
