"""A mitmproxy/mitmweb content view that shows OpenAI-style chat traffic as a readable transcript.

The rendering functions are pure (dicts/bytes in, text out) so they can be
tested without mitmproxy. ``ChatView`` uses mitmproxy 12's Contentview API;
on older mitmproxy ``register()`` simply returns False.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cfgw.usage import Usage

try:  # mitmproxy >= 12
    from mitmproxy.contentviews import Contentview as _ViewBase
    from mitmproxy.contentviews import Metadata
except ImportError:  # mitmproxy 11: no new-style content views
    _ViewBase = object  # type: ignore[assignment,misc]
    Metadata = Any  # type: ignore[assignment,misc]

__all__ = [
    "PRIORITY",
    "ChatView",
    "is_chat_json",
    "is_chat_stream",
    "register",
    "render_request",
    "render_response",
    "render_stream",
    "unregister",
    "usage_line",
]

PRIORITY = 1.5
"""Render priority for chat bodies: above the JSON view (1), so "auto" picks this view."""
_SNIFF = 64 << 10  # bytes of an SSE body looked at by render_priority
_LINE_SPLIT = re.compile(r"\r\n|\r|\n")  # SSE line ends; str.splitlines() also splits on U+2028
_MAX_URL = 120
_OBJ_START = re.compile(rb"\s*\{")


# --- small helpers -------------------------------------------------------------


def _j(v: Any) -> str:
    """Compact single-line JSON for values shown inline (non-ASCII kept readable)."""
    try:
        return json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(v)


def _s(v: Any) -> str:
    """Strings as-is, everything else as JSON, so params read like ``tool_choice=auto``."""
    return v if isinstance(v, str) else _j(v)


def _short_url(url: Any) -> str:
    """Abbreviate data: URLs (base64 images can be megabytes) and very long URLs."""
    if not isinstance(url, str):
        return _j(url)
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        return f"{head},… ({len(payload)} chars)"
    if len(url) > _MAX_URL:
        return url[: _MAX_URL - 1] + "…"
    return url


def _part(part: Any) -> str:
    """One element of multi-part content: text verbatim, media as a ``<type ...>`` tag."""
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return _j(part)
    typ = part.get("type")
    if typ in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
        return part["text"]
    if typ == "refusal" and isinstance(part.get("refusal"), str):
        return f"refusal: {part['refusal']}"
    if typ == "image_url":
        img = part.get("image_url")
        if isinstance(img, dict):
            tag = f"<image_url {_short_url(img.get('url'))}"
            if img.get("detail"):
                tag += f" detail={_s(img['detail'])}"
            return tag + ">"
        return f"<image_url {_short_url(img)}>"
    if typ == "input_audio":
        audio = part.get("input_audio")
        fmt = audio.get("format") if isinstance(audio, dict) else None
        return f"<input_audio format={_s(fmt)}>" if fmt else "<input_audio>"
    if typ == "file":
        f = part.get("file")
        name = (f.get("filename") or f.get("file_id")) if isinstance(f, dict) else None
        return f"<file {_s(name)}>" if name else "<file>"
    return f"<{_s(typ) if typ else 'part'}>"


def _content(content: Any) -> str | None:
    """Message content as text; None when absent."""
    if content is None:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_part(p) for p in content)
    return _j(content)


def _args(arguments: Any) -> str:
    """Tool-call arguments as sent (a JSON string), or JSON-encoded if a provider sent an object."""
    if arguments is None:
        return ""
    return arguments if isinstance(arguments, str) else _j(arguments)


def _tool_call_line(call: Any) -> str:
    """``→ tool call <id>: <name>(<arguments>)`` for one entry of ``tool_calls``."""
    if not isinstance(call, dict):
        return f"→ tool call: {_j(call)}"
    fn = call.get("function")
    fn = fn if isinstance(fn, dict) else {}
    name = fn.get("name")
    if name is None and call.get("type") not in (None, "function"):
        name = call.get("type")  # e.g. custom tools
    return f"→ tool call {_s(call.get('id') or '?')}: {_s(name or '?')}({_args(fn.get('arguments'))})"


def _reasoning(msg: dict) -> str | None:
    """Reasoning text under either field name providers use."""
    for key in ("reasoning_content", "reasoning"):
        v = msg.get(key)
        if isinstance(v, str) and v:
            return v
    return None


def usage_line(usage: Any) -> str | None:
    """``usage: prompt 12 · completion 34 · total 46`` (``?`` for missing counts)."""
    u = Usage.from_obj(usage)
    if u is None:
        return None

    def n(v: int | None) -> str:
        return "?" if v is None else str(v)

    line = f"usage: prompt {n(u.prompt_tokens)} · completion {n(u.completion_tokens)} · total {n(u.total)}"
    extra = []
    for section, key, label in (
        ("prompt_tokens_details", "cached_tokens", "cached"),
        ("completion_tokens_details", "reasoning_tokens", "reasoning"),
    ):
        details = usage.get(section)
        count = details.get(key) if isinstance(details, dict) else None
        if isinstance(count, int) and count:
            extra.append(f"{label} {count}")
    if extra:
        line += " (" + ", ".join(extra) + ")"
    return line


def _header(obj: dict) -> list[str]:
    """``model:`` and ``id:`` lines shared by responses and streams."""
    out = []
    if obj.get("model") is not None:
        out.append(f"model: {_s(obj['model'])}")
    if obj.get("id") is not None:
        out.append(f"id: {_s(obj['id'])}")
    return out


def _choice_block(index: Any, msg: dict, finish: Any, show_index: bool) -> list[str]:
    """One choice: role tag, reasoning, content, refusal, tool calls, finish reason."""
    role = msg.get("role") or "assistant"
    tag = f"[{_s(role)}]" + (f" choice {_s(index)}" if show_index else "")
    out = [tag]
    reasoning = _reasoning(msg)
    if reasoning is not None:
        out += ["<reasoning>", reasoning, "</reasoning>"]
    text = _content(msg.get("content"))
    if text:
        out.append(text)
    if isinstance(msg.get("refusal"), str) and msg["refusal"]:
        out.append(f"refusal: {msg['refusal']}")
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        out += [_tool_call_line(c) for c in calls]
    fc = msg.get("function_call")
    if isinstance(fc, dict):
        out.append(f"→ function call: {_s(fc.get('name') or '?')}({_args(fc.get('arguments'))})")
    audio = msg.get("audio")
    if isinstance(audio, dict):
        out.append(f"<audio {_s(audio.get('id') or '')}>".replace(" >", ">"))
    if len(out) == 1:
        out.append("(no content)")
    if finish is not None:
        out.append(f"finish_reason: {_s(finish)}")
    return out


# --- requests ------------------------------------------------------------------

_NOT_PARAMS = frozenset({"model", "messages", "tools", "functions"})


def _tool_def(tool: Any) -> str:
    """``tool <name>(<param names>) — <description>`` for a tool/function definition."""
    if not isinstance(tool, dict):
        return f"tool {_j(tool)}"
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = fn.get("name") or tool.get("type") or "?"
    params = fn.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    names = ", ".join(str(k) for k in props) if isinstance(props, dict) else ""
    line = f"tool {_s(name)}({names})"
    desc = fn.get("description")
    if isinstance(desc, str) and desc.strip():
        line += f" — {' '.join(desc.split())}"
    return line


def _message_block(msg: Any) -> list[str]:
    """One request message as a role-tagged block."""
    if not isinstance(msg, dict):
        return ["[?]", _j(msg)]
    role = _s(msg.get("role") or "?")
    if role == "tool":
        tag = f"[tool {_s(msg.get('tool_call_id') or '?')}]"
    elif role == "function":
        tag = f"[function {_s(msg.get('name') or '?')}]"
    else:
        tag = f"[{role}]"
        if msg.get("name"):
            tag += f" name={_s(msg['name'])}"
    out = [tag]
    reasoning = _reasoning(msg)
    if reasoning is not None:
        out += ["<reasoning>", reasoning, "</reasoning>"]
    text = _content(msg.get("content"))
    if text:
        out.append(text)
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        out += [_tool_call_line(c) for c in calls]
    fc = msg.get("function_call")
    if isinstance(fc, dict):
        out.append(f"→ function call: {_s(fc.get('name') or '?')}({_args(fc.get('arguments'))})")
    if len(out) == 1:
        out.append("(empty)" if text == "" else "(no content)")
    return out


def render_request(obj: dict) -> str:
    """Readable transcript of a chat/completions request: model, params, tools, messages."""
    if not isinstance(obj, dict):
        raise ValueError("chat request must be a JSON object")
    out = []
    if obj.get("model") is not None:
        out.append(f"model: {_s(obj['model'])}")
    params = [f"{k}={_s(v)}" for k, v in obj.items() if k not in _NOT_PARAMS]
    if params:
        out.append("params: " + " · ".join(params))
    tools = [t for key in ("tools", "functions") if isinstance(obj.get(key), list) for t in obj[key]]
    if tools:
        out.append("tools:")
        out += ["  " + _tool_def(t) for t in tools]
    messages = obj.get("messages")
    if isinstance(messages, list):
        for msg in messages:
            out.append("")
            out += _message_block(msg)
    return "\n".join(out) + "\n"


# --- responses -----------------------------------------------------------------


def render_response(obj: dict) -> str:
    """Readable chat.completion: header, usage, then each choice."""
    if not isinstance(obj, dict):
        raise ValueError("chat response must be a JSON object")
    out = _header(obj)
    u = usage_line(obj.get("usage"))
    if u:
        out.append(u)
    if isinstance(obj.get("error"), dict | str):
        out.append(f"error: {_s(obj['error'])}")
    choices = obj.get("choices")
    choices = choices if isinstance(choices, list) else []
    for pos, ch in enumerate(choices):
        if not isinstance(ch, dict):
            continue
        msg = ch.get("message")
        msg = msg if isinstance(msg, dict) else {}
        index = ch.get("index", pos)
        out.append("")
        out += _choice_block(index, msg, ch.get("finish_reason"), len(choices) > 1 or index != 0)
    return "\n".join(out) + "\n"


# --- streams -------------------------------------------------------------------


def _sse_data(text: str) -> tuple[list[str], bool]:
    """The data payloads of an SSE body (spec-style events, lenient) and whether [DONE] was seen."""
    payloads: list[str] = []
    done = False
    data: list[str] = []

    def dispatch() -> None:
        nonlocal done
        if not data:
            return
        joined = "\n".join(data)
        if joined.strip() == "[DONE]":
            done = True
        elif len(data) > 1 and not _parses(joined):
            # Servers that omit the blank line between events: one payload per line.
            for d in data:
                if d.strip() == "[DONE]":
                    done = True
                else:
                    payloads.append(d)
        else:
            payloads.append(joined)
        data.clear()

    for line in _LINE_SPLIT.split(text):
        if not line:
            dispatch()
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
        # comments (": ping"), event:/id:/retry: fields and junk are ignored
    dispatch()  # a last event without its trailing blank line
    return payloads, done


def _parses(s: str) -> bool:
    """Whether ``s`` is valid JSON."""
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


class _StreamChoice:
    """Accumulates the deltas of one choice index."""

    __slots__ = ("content", "finish", "function_call", "reasoning", "refusal", "role", "tools")

    def __init__(self) -> None:
        self.role: str | None = None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.tools: dict[Any, dict] = {}  # tool-call index -> {"id", "name", "arguments"}
        self.function_call: dict | None = None
        self.finish: Any = None

    def add(self, delta: dict) -> None:
        """Merge one ``delta``: text concatenated, tool-call fragments joined per index."""
        if isinstance(delta.get("role"), str) and self.role is None:
            self.role = delta["role"]
        for key, acc in (("content", self.content), ("refusal", self.refusal)):
            if isinstance(delta.get(key), str):
                acc.append(delta[key])
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
                self.function_call = {"name": None, "arguments": []}
            if fc.get("name") and not self.function_call["name"]:
                self.function_call["name"] = fc["name"]
            if fc.get("arguments") is not None:
                self.function_call["arguments"].append(_args(fc["arguments"]))

    def _tool_fragment(self, frag: dict) -> None:
        """Index identifies the call; id/name come from the first fragment that has them."""
        idx = frag.get("index")
        if not isinstance(idx, int):
            # No index (some non-OpenAI providers): a new id starts a new call.
            ids = {c["id"]: i for i, c in self.tools.items()}
            if frag.get("id") in ids:
                idx = ids[frag["id"]]
            elif frag.get("id") or not self.tools:
                idx = ("auto", len(self.tools))
            else:
                idx = list(self.tools)[-1]
        call = self.tools.setdefault(idx, {"id": None, "name": None, "arguments": []})
        if frag.get("id") and not call["id"]:
            call["id"] = frag["id"]
        fn = frag.get("function")
        if isinstance(fn, dict):
            if fn.get("name") and not call["name"]:
                call["name"] = fn["name"]
            if fn.get("arguments") is not None:
                call["arguments"].append(_args(fn["arguments"]))

    def message(self) -> dict:
        """The assembled message, shaped like a non-streamed one."""
        msg: dict[str, Any] = {"role": self.role or "assistant"}
        if self.reasoning:
            msg["reasoning_content"] = "".join(self.reasoning)
        msg["content"] = "".join(self.content)
        if self.refusal:
            msg["refusal"] = "".join(self.refusal)
        if self.tools:
            msg["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": "".join(c["arguments"])},
                }
                for c in self.tools.values()
            ]
        if self.function_call is not None:
            msg["function_call"] = {
                "name": self.function_call["name"],
                "arguments": "".join(self.function_call["arguments"]),
            }
        return msg


def render_stream(body: bytes) -> str:
    """Readable transcript of a streamed chat completion, assembled from its chunks."""
    payloads, done = _sse_data(body.decode("utf-8", "replace"))
    first: dict | None = None
    usage: Any = None
    errors: list[str] = []
    choices: dict[Any, _StreamChoice] = {}
    events = bad = 0
    for p in payloads:
        events += 1
        try:
            chunk = json.loads(p)
        except ValueError:
            bad += 1
            continue
        if not isinstance(chunk, dict):
            bad += 1
            continue
        if first is None:
            first = chunk
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        if chunk.get("error") is not None:
            errors.append(_s(chunk["error"]))
        chs = chunk.get("choices")
        if not isinstance(chs, list):
            continue
        for pos, ch in enumerate(chs):
            if not isinstance(ch, dict):
                continue
            index = ch.get("index", pos)
            try:
                acc = choices.setdefault(index, _StreamChoice())
            except TypeError:  # unhashable index
                continue
            if isinstance(ch.get("delta"), dict):
                acc.add(ch["delta"])
            if ch.get("finish_reason") is not None:
                acc.finish = ch["finish_reason"]

    out = _header(first or {})
    u = usage_line(usage)
    if u:
        out.append(u)
    stream = f"stream: {events} events"
    if bad:
        stream += f" ({bad} unparseable)"
    stream += ", [DONE]" if done else " (stream incomplete: no [DONE])"
    out.append(stream)
    out += [f"error: {e}" for e in errors]
    show_index = len(choices) > 1 or any(i != 0 for i in choices)
    for index in sorted(choices, key=lambda i: (0, i) if isinstance(i, int) else (1, str(i))):
        acc = choices[index]
        out.append("")
        out += _choice_block(index, acc.message(), acc.finish, show_index)
    return "\n".join(out) + "\n"


# --- detection -----------------------------------------------------------------


def is_chat_json(obj: Any) -> bool:
    """Whether a parsed JSON body is an OpenAI-style chat request or chat.completion."""
    if not isinstance(obj, dict):
        return False
    messages = obj.get("messages")
    if isinstance(messages, list):
        first = messages[0] if messages else None
        return isinstance(obj.get("model"), str) or (isinstance(first, dict) and "role" in first)
    if obj.get("object") == "chat.completion":
        return True
    choices = obj.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices)
    )


def _is_request(obj: dict) -> bool:
    """Requests carry ``messages``; responses carry ``choices``."""
    return isinstance(obj.get("messages"), list)


def _is_chunk(obj: Any) -> bool:
    """A chat.completion.chunk (or an unlabeled chunk whose choices carry ``delta``)."""
    if not isinstance(obj, dict):
        return False
    if obj.get("object") == "chat.completion.chunk":
        return True
    choices = obj.get("choices")
    return (
        "object" not in obj
        and isinstance(choices, list)
        and bool(choices)
        and isinstance(choices[0], dict)
        and isinstance(choices[0].get("delta"), dict)
    )


def is_chat_stream(data: bytes) -> bool:
    """Whether the first data event of an SSE body (within 64 KiB) is a chat.completion.chunk."""
    head = data[:_SNIFF].decode("utf-8", "replace")
    for line in _LINE_SPLIT.split(head):
        if line.startswith("data:"):
            try:
                return _is_chunk(json.loads(line[5:]))
            except ValueError:
                return False
    return False


def _looks_like_sse(data: bytes) -> bool:
    """An event-stream body without a content type: starts with an SSE field or comment."""
    head = data[:16].lstrip()
    return head.startswith((b"data:", b"event:", b":", b"id:", b"retry:"))


def _is_sse_type(content_type: str | None) -> bool:
    """mitmproxy passes the bare media type (parameters like charset stripped)."""
    return content_type == "text/event-stream"


def _is_json_type(content_type: str | None) -> bool:
    """JSON media types, or none at all (chat bodies are often sent without one)."""
    return (
        content_type is None
        or content_type in ("application/json", "text/json")
        or (content_type.startswith("application/") and content_type.endswith("json"))
    )


# --- mitmproxy glue --------------------------------------------------------------


class ChatView(_ViewBase):  # type: ignore[misc,valid-type]
    """mitmproxy >= 12 content view; chosen automatically only for OpenAI-style chat bodies."""

    name = "LLM chat"
    syntax_highlight = "none"

    def __init__(self) -> None:
        self._cache: tuple[bytes, Any] | None = None  # last parsed JSON body

    def _json(self, data: bytes) -> Any:
        """json.loads with a one-entry cache: render_priority and prettify see the same bytes."""
        cache = self._cache
        if cache is not None and cache[0] is data:
            return cache[1]
        obj = json.loads(data)
        self._cache = (data, obj)
        return obj

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        """PRIORITY for chat requests/responses/streams, 0 otherwise (the JSON view keeps the rest)."""
        try:
            if not data:
                return 0
            ct = getattr(metadata, "content_type", None)
            if _is_sse_type(ct) or (ct is None and _looks_like_sse(data)):
                return PRIORITY if is_chat_stream(data) else 0
            if _is_json_type(ct) and _OBJ_START.match(data):
                return PRIORITY if is_chat_json(self._json(data)) else 0
        except Exception:
            pass
        return 0

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        """Pick stream / request / response rendering; ValueError lets mitmproxy fall back."""
        ct = getattr(metadata, "content_type", None)
        if _is_sse_type(ct) or _looks_like_sse(data):
            if not is_chat_stream(data):
                raise ValueError("not a chat.completion.chunk event stream")
            return render_stream(data)
        obj = self._json(data)
        if not is_chat_json(obj):
            raise ValueError("not an OpenAI-style chat request or response")
        return render_request(obj) if _is_request(obj) else render_response(obj)


_registered: ChatView | None = None


def register() -> bool:
    """Add the view on mitmproxy >= 12; False (and no-op) on older versions."""
    global _registered
    if _ViewBase is object:
        return False
    try:
        from mitmproxy import contentviews

        view = ChatView()
        contentviews.add(view)
    except Exception:
        return False
    _registered = view
    return True


def unregister() -> bool:
    """Remove the view again (mitmproxy 12 has no public API for that; uses the registry dict)."""
    global _registered
    view, _registered = _registered, None
    if view is None:
        return False
    try:
        from mitmproxy import contentviews

        registry = getattr(contentviews, "registry", None)
        if registry is None:  # pre-12.0 development API: views list + remove()
            contentviews.remove(view)
            return True
        by_name = registry._by_name
        key = view.name.lower()
        if by_name.get(key) is not view:
            return False
        del by_name[key]
        registry.on_change.send(view)  # lets mitmproxy's console drop cached renderings
    except Exception:
        return False
    return True
