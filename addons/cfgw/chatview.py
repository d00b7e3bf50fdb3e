"""A mitmproxy/mitmweb content view that shows LLM API traffic as a readable transcript.

The view itself knows no API: the flow says which family it belongs to (the
addon stores ``flow.metadata["cf_gateway"]["family"]``), and without one (a flow
loaded from elsewhere) each family's ``looks_like_*`` is asked. The family
renders; this module only picks, bounds the work (a huge recorded stream must
not freeze mitmweb) and says so when it cut something. ``ChatView`` uses
mitmproxy 12's Contentview API; on mitmproxy 11 ``register()`` returns False.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from mitmproxy import http

from cfgw import sse
from cfgw.families import BY_NAME
from cfgw.family import Family

# The ignores below are each needed on one of mitmproxy 11 / 12 only.
try:  # mitmproxy >= 12
    from mitmproxy.contentviews import Contentview as _ViewBase  # type: ignore[attr-defined,unused-ignore]
    from mitmproxy.contentviews import Metadata  # type: ignore[attr-defined,unused-ignore]
except ImportError:  # mitmproxy 11: no new-style content views
    _ViewBase = object  # type: ignore[assignment,misc,unused-ignore]
    Metadata = Any  # type: ignore[assignment,misc,unused-ignore]

__all__ = ["MAX_BODY", "MAX_EVENTS", "PRIORITY", "SNIFF_BYTES", "ChatView", "flow_family", "register"]

PRIORITY = 1.5
"""Render priority for LLM bodies: above the JSON view (1), so "auto" picks this view."""
SNIFF_BYTES = 64 << 10
"""render_priority looks at most at this much of a body (it runs for every body mitmweb shows)."""
MAX_BODY = 16 << 20
"""Bytes of a body rendered: a longer stream is cut (with a note), a longer JSON body is not rendered."""
MAX_EVENTS = 20_000
"""Events of a stream rendered; the rest is cut with a note."""

NOT_VIEWED = frozenset({"other"})
"""Families without a transcript (embeddings, model lists): mitmproxy's JSON view shows them best."""
SNIFF_FIRST = ("messages", "responses")
"""Families asked first when sniffing: their detectors claim only what is theirs, chat's is broader."""

_OBJ_START = re.compile(rb"\s*\{")
_SNIFF_EVENTS = 8  # events parsed while looking for the first one with data


# --- which family, which side ------------------------------------------------------------


def flow_family(flow: Any) -> Family | None:
    """The family the addon recorded on the flow, or None (no flow, no record, unknown name)."""
    try:
        name = flow.metadata["cf_gateway"]["family"]
        return BY_NAME.get(name) if isinstance(name, str) else None
    except Exception:
        return None


def _side(metadata: Any) -> str | None:
    """'request' or 'response' when mitmproxy says which message the body is, else None."""
    msg = getattr(metadata, "http_message", None)
    if isinstance(msg, http.Request):
        return "request"
    if isinstance(msg, http.Response):
        return "response"
    return None


def _sniff_order() -> list[Family]:
    """Every viewed family, the stricter detectors first."""
    first = [BY_NAME[n] for n in SNIFF_FIRST if n in BY_NAME]
    rest = [f for f in BY_NAME.values() if f.name not in SNIFF_FIRST]
    return [f for f in first + rest if f.name not in NOT_VIEWED]


def _says(detector: Callable[[Any], bool], obj: Any) -> bool:
    """A family's detector, which must not take the view down if it raises after all."""
    try:
        return bool(detector(obj))
    except Exception:
        return False


def _json_renderer(obj: Any, known: Family | None, side: str | None) -> Callable[[Any], str] | None:
    """The render function for a parsed JSON body: the flow's family or the first that recognises it.

    A request body sent to a family's route is that family's request, whatever it looks
    like (a bare ``{model, max_tokens, messages}`` is valid chat and Messages alike).
    """
    if known is not None and side == "request" and isinstance(obj, dict):
        return known.render_request
    for family in [known] if known is not None else _sniff_order():
        if side != "response" and _says(family.looks_like_request, obj):
            return family.render_request
        if side != "request" and _says(family.looks_like_response, obj):
            return family.render_response
    return None


def _first_data(events: list[sse.Event]) -> Any:
    """The parsed data of the first event that has some (not ``[DONE]``); None when there is none."""
    for ev in events:
        data = ev.data.strip()
        if not data or data == "[DONE]":
            continue
        try:
            return json.loads(data)
        except Exception:
            pass
        try:  # a server that omits blank lines: the event holds one chunk per line
            return json.loads(data.split("\n", 1)[0])
        except Exception:
            return None
    return None


def _stream_family(events: list[sse.Event]) -> Family | None:
    """The family whose stream the first data event belongs to."""
    obj = _first_data(events)
    if obj is None:
        return None
    for family in _sniff_order():
        if _says(family.looks_like_response, obj):
            return family
    return None


# --- content types -------------------------------------------------------------------------


def _is_sse_type(content_type: str | None) -> bool:
    """mitmproxy passes the bare media type (parameters like charset stripped)."""
    return content_type == "text/event-stream"


def _looks_like_sse(data: bytes) -> bool:
    """An event-stream body without a content type: starts with an SSE field or comment."""
    head = data[:16].lstrip()
    return head.startswith((b"data:", b"event:", b":", b"id:", b"retry:"))


def _is_json_type(content_type: str | None) -> bool:
    """JSON media types, or none at all (LLM bodies are often sent without one)."""
    return (
        content_type is None
        or content_type in ("application/json", "text/json")
        or (content_type.startswith("application/") and content_type.endswith("json"))
    )


# --- bounded stream rendering ----------------------------------------------------------------


def _size(n: int) -> str:
    """A byte count for a note: ``16.0 MiB``, or exact bytes below one MiB."""
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def render_stream_body(data: bytes, known: Family | None) -> str:
    """A recorded event stream as its family's transcript, cut at MAX_BODY bytes / MAX_EVENTS events.

    Raises ValueError when no family recognises the stream (mitmproxy then falls back).
    """
    body = data
    notes = []
    if len(body) > MAX_BODY:
        cut = body.rfind(b"\n", 0, MAX_BODY) + 1 or MAX_BODY  # whole lines only
        body = body[:cut]
        notes.append(f"… truncated: showing the first {_size(len(body))} of {_size(len(data))}")
    events = sse.parse(body, max_events=MAX_EVENTS + 1)
    if len(events) > MAX_EVENTS:
        events = events[:MAX_EVENTS]
        notes.append(f"… truncated: showing the first {MAX_EVENTS} events (the stream has more)")
    family = known or _stream_family(events)
    if family is None:
        raise ValueError("not an event stream of a known LLM API")
    text = family.render_stream(events)
    return "\n".join(notes) + "\n\n" + text if notes else text


# --- mitmproxy glue ----------------------------------------------------------------------------


class ChatView(_ViewBase):  # type: ignore[misc,valid-type,unused-ignore]
    """mitmproxy >= 12 content view; chosen automatically for LLM requests, responses and streams.

    With a known family, a request and a stream are always rendered (a stream's errors
    included); a JSON response must look like the family's, so error bodies keep the
    JSON view unless the family claims them.
    """

    name = "LLM chat"
    syntax_highlight = "none"

    def __init__(self) -> None:
        self._cache: tuple[bytes, Any] | None = None  # the last small JSON body parsed by render_priority

    def _json(self, data: bytes) -> Any:
        """json.loads; small bodies are cached once, since render_priority and prettify see the same bytes."""
        cache = self._cache
        if cache is not None and cache[0] is data:
            return cache[1]
        obj = json.loads(data)
        if len(data) <= SNIFF_BYTES:
            self._cache = (data, obj)
        return obj

    def render_priority(self, data: bytes, metadata: Metadata) -> float:
        """PRIORITY for LLM bodies, 0 otherwise (the JSON view keeps the rest); reads at most SNIFF_BYTES."""
        try:
            if not data:
                return 0
            known = flow_family(getattr(metadata, "flow", None))
            if known is not None and known.name in NOT_VIEWED:
                return 0
            ct = getattr(metadata, "content_type", None)
            if _is_sse_type(ct) or (ct is None and _looks_like_sse(data)):
                if known is not None:
                    return PRIORITY
                head = sse.parse(data[:SNIFF_BYTES], max_events=_SNIFF_EVENTS)
                return PRIORITY if _stream_family(head) is not None else 0
            if _is_json_type(ct) and _OBJ_START.match(data, 0, SNIFF_BYTES):
                if len(data) > SNIFF_BYTES:  # too big to sniff: trust the flow's family
                    return PRIORITY if known is not None and len(data) <= MAX_BODY else 0
                return PRIORITY if _json_renderer(self._json(data), known, _side(metadata)) else 0
        except Exception:
            pass
        return 0

    def prettify(self, data: bytes, metadata: Metadata) -> str:
        """The family's transcript; ValueError when no family fits, so mitmproxy can fall back."""
        known = flow_family(getattr(metadata, "flow", None))
        if known is not None and known.name in NOT_VIEWED:
            raise ValueError(f"no transcript for {known.name} endpoints; see the JSON view")
        if _is_sse_type(getattr(metadata, "content_type", None)) or _looks_like_sse(data):
            return render_stream_body(data, known)
        if len(data) > MAX_BODY:
            raise ValueError(
                f"body too large for the LLM view ({_size(len(data))}); see the JSON or raw view"
            )
        obj = self._json(data)
        render = _json_renderer(obj, known, _side(metadata))
        if render is None:
            raise ValueError("not a request or response of a known LLM API")
        obj, cut = bounded(obj)
        text = render(obj)
        if cut:
            text = f"… truncated: lists cut at {MAX_ITEMS} items, {MAX_NODES} values in all\n\n{text}"
        return text


MAX_ITEMS = 2_000
"""Items of one list (messages, content blocks, input items, tools) a transcript shows: a 16 MiB
body of tiny messages would otherwise take a second to render, on mitmproxy's event loop."""


MAX_NODES = 200_000
"""Values a transcript looks at, in all: past this, lists are left out (nested lists multiply)."""


def bounded(obj: Any) -> tuple[Any, bool]:
    """obj with every list cut to MAX_ITEMS items and MAX_NODES values in all; whether anything was cut."""
    budget = [MAX_NODES]
    cut = [False]

    def walk(v: Any, depth: int) -> Any:
        budget[0] -= 1
        if isinstance(v, list):
            if len(v) > MAX_ITEMS or budget[0] <= 0 or depth > 32:
                cut[0] = True
                v = v[: max(0, min(MAX_ITEMS, budget[0]))] if depth <= 32 else []
            return [walk(item, depth + 1) for item in v]
        if isinstance(v, dict):
            if budget[0] <= 0 or depth > 32:
                cut[0] = True
                return {}
            return {k: walk(item, depth + 1) for k, item in v.items()}
        return v

    out = walk(obj, 0)
    return out, cut[0]


def register() -> bool:
    """Add the view on mitmproxy >= 12 (it replaces a view of the same name); False on older versions."""
    if _ViewBase is object:
        return False
    try:
        from mitmproxy import contentviews

        contentviews.add(ChatView())
    except Exception:
        return False
    return True
