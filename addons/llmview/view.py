"""The "LLM chat" content view: picks a body's API family and bounds the work of rendering it.

The family comes from, first to last: what the cf-gateway proxy recorded on the flow
(``flow.metadata["cf_gateway"]["family"]``), the ending of the request's path, or the
body's shape alone; a family named either way must still fit the body. Never the host:
the same APIs are served by OpenAI, Anthropic, Cloudflare and local model servers alike.
mitmweb renders on its event loop, so a huge body is cut, with a note saying what was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from mitmproxy import http
from mitmproxy.contentviews import Contentview, Metadata

from llmview import chat, messages, responses, run, sse
from llmview.text import size

PRIORITY = 1.5
"""For LLM bodies: above the JSON view's 1, so "auto" picks this view."""
SNIFF_BYTES = 64 << 10
"""Bytes of a body render_priority parses when the flow names no family (it runs for every body)."""
MAX_BODY = 16 << 20
"""Bytes rendered: a longer stream is cut, a longer JSON body is left to other views."""
MAX_LINES = 60_000
"""Lines of a stream read (20,000 to 30,000 events); the rest is cut."""
MAX_ITEMS = 2_000
"""Items of one list (messages, blocks, tools) shown."""
MAX_NODES = 200_000
"""JSON values looked at, in all: nested lists multiply."""
_FIRST_LINES = 32  # lines read to tell a stream's family
_MALFORMED = (TypeError, AttributeError, KeyError, IndexError, RecursionError)


class Family(Protocol):
    """What a family module (chat, messages, responses, run) provides."""

    REQUEST_KEYS: tuple[str, ...]

    def looks_like_request(self, obj: Any) -> bool: ...
    def looks_like_response(self, obj: Any) -> bool: ...
    def render_request(self, obj: dict) -> str: ...
    def render_response(self, obj: dict) -> str: ...
    def render_stream(self, parsed: sse.Parsed) -> str: ...


FAMILIES: dict[str, Family] = {"chat": chat, "messages": messages, "responses": responses, "run": run}
SNIFFED: list[Family] = [messages, responses, chat]
"""Families recognised by shape alone, the stricter first (a Messages request looks like chat's)."""
NO_TRANSCRIPT = "other"
"""The proxy's family for embeddings, model lists and the like: the JSON view shows them best."""
_ENDINGS = {"/chat/completions": "chat", "/messages": "messages", "/messages/count_tokens": "messages"}
_ENDINGS |= {"/responses": "responses", "/ai/run": "run"}


def path_family(path: str) -> str | None:
    """The family an API path ends in (``/v1/chat/completions``, ``.../anthropic/v1/messages``)."""
    path = path.partition("?")[0].rstrip("/")
    if "/ai/run/" in path or "/workers-ai/" in path:
        return "run"
    return next((name for end, name in _ENDINGS.items() if path.endswith(end)), None)


def flow_family(flow: Any) -> str | None:
    """The family the proxy recorded on the flow, else the one its path ends in; None: ask the body."""
    record = getattr(flow, "metadata", {}).get("cf_gateway")
    name = record.get("family") if isinstance(record, dict) else None
    if name in (*FAMILIES, NO_TRANSCRIPT):
        return name
    return path_family(flow.request.path) if isinstance(flow, http.HTTPFlow) else None


def _side(metadata: Metadata) -> str | None:
    if isinstance(metadata.http_message, http.Request):
        return "request"
    return "response" if isinstance(metadata.http_message, http.Response) else None


def _is_stream(data: bytes, content_type: str | None) -> bool:
    return content_type == "text/event-stream" or (content_type is None and sse.looks_like_sse(data))


def _is_json(data: bytes, content_type: str | None) -> bool:
    """A JSON object, by its media type (or none: LLM bodies are often sent without) and first byte."""
    ct = content_type or "application/json"
    return ct.startswith("application/") and ct.endswith("json") and data.lstrip()[:1] == b"{"


def _is_request(family: Family, obj: dict, known: str | None) -> bool:
    return any(k in obj for k in family.REQUEST_KEYS) if known else family.looks_like_request(obj)


def json_renderer(obj: dict, known: str | None, side: str | None) -> Callable[[dict], str] | None:
    """The function rendering a JSON body: its known family's, or the first that recognises it.

    A request sent to a known family's path needs only a request's keys: a bare
    ``{model, messages}`` is chat's and Anthropic's alike.
    """
    for family in [FAMILIES[known]] if known else SNIFFED:
        if side != "response" and _is_request(family, obj, known):
            return family.render_request
        if side != "request" and family.looks_like_response(obj):
            return family.render_response
    return None


def stream_family(parsed: sse.Parsed, known: str | None) -> Family | None:
    """The family whose events the first data event is (an error event, for a known family)."""
    first = parsed.objects[0][1] if parsed.objects else {}
    candidates = [FAMILIES[known]] if known else SNIFFED
    return next((f for f in candidates if f.looks_like_response(first) or (known and "error" in first)), None)


def render_stream_body(data: bytes, known: str | None) -> str:
    """A stream's transcript, at most MAX_BODY bytes and MAX_LINES lines; ValueError if not an LLM's."""
    notes = []
    if len(data) > MAX_BODY:
        notes.append(f"… truncated: showing the first {size(MAX_BODY)} of {size(len(data))}")
    events, complete = sse.parse(data[:MAX_BODY], MAX_LINES)
    if not complete:
        notes.append(f"… truncated: showing the first {len(events)} events (the stream has more)")
    parsed = sse.objects(events)
    family = stream_family(parsed, known)
    if family is None:
        raise ValueError("not an event stream of a known LLM API")
    return "".join(note + "\n" for note in notes) + ("\n" if notes else "") + family.render_stream(parsed)


def bounded(obj: Any) -> tuple[Any, bool]:
    """``obj`` with lists cut at MAX_ITEMS items and MAX_NODES values in all; whether anything was cut."""
    budget = MAX_NODES
    cut = False

    def walk(v: Any, depth: int) -> Any:
        nonlocal budget, cut
        budget -= 1
        if not isinstance(v, list | dict):
            return v
        if budget <= 0 or depth > 32:
            cut = True
            return type(v)()
        if isinstance(v, dict):
            return {k: walk(item, depth + 1) for k, item in v.items()}
        cut = cut or len(v) > MAX_ITEMS
        return [walk(item, depth + 1) for item in v[:MAX_ITEMS]]

    return walk(obj, 0), cut


class LLMView(Contentview):
    """LLM API requests, answers and event streams as a transcript; "auto" picks it for them."""

    name = "LLM chat"
    syntax_highlight = "none"

    def __init__(self) -> None:
        self._parsed: tuple[bytes, dict] = (b"", {})  # render_priority's parse, which prettify reuses

    def _json(self, data: bytes) -> dict:
        """The body's JSON object; {} when it is not one."""
        if self._parsed[0] is not data:
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):
                obj = None
            self._parsed = (data, obj if isinstance(obj, dict) else {})
        return self._parsed[1]

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        """PRIORITY for an LLM body, else 0; without a known family, reads SNIFF_BYTES at most."""
        try:
            return PRIORITY if self._claims(data, metadata) else 0
        except _MALFORMED:
            return 0

    def _claims(self, data: bytes, metadata: Metadata) -> bool:
        known = flow_family(metadata.flow)
        if known == NO_TRANSCRIPT:
            return False
        if _is_stream(data, metadata.content_type):
            head = sse.parse(data[:SNIFF_BYTES], _FIRST_LINES)[0]
            return stream_family(sse.objects(head), known) is not None
        if not _is_json(data, metadata.content_type) or len(data) > (MAX_BODY if known else SNIFF_BYTES):
            return False
        return json_renderer(self._json(data), known, _side(metadata)) is not None

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        """The transcript; ValueError when the body is not an LLM's, so mitmproxy shows another view."""
        known = flow_family(metadata.flow)
        if known == NO_TRANSCRIPT:
            raise ValueError("no transcript for this endpoint; see the JSON view")
        try:
            if _is_stream(data, metadata.content_type) or sse.looks_like_sse(data):
                return render_stream_body(data, known)
            return self._render_json(data, known, _side(metadata))
        except _MALFORMED as e:
            raise ValueError(f"not a well-formed LLM body: {e!r}") from e

    def _render_json(self, data: bytes, known: str | None, side: str | None) -> str:
        if len(data) > MAX_BODY:
            raise ValueError(f"body too large for the LLM view ({size(len(data))}); see the raw view")
        obj = self._json(data)
        self._parsed = (b"", {})  # a big body's parse is not kept for longer than it is needed
        render = json_renderer(obj, known, side)
        if render is None:
            raise ValueError("not a request or response of a known LLM API")
        obj, cut = bounded(obj)
        note = f"… truncated: lists cut at {MAX_ITEMS} items, {MAX_NODES} values in all\n\n" if cut else ""
        return note + render(obj)
