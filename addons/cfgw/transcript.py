"""Small text helpers shared by every family's transcript rendering for mitmweb.

Rendering is for people: values read like ``tool_choice=auto``, media become short
``<image ...>`` tags (a base64 image can be megabytes), and long text is cut with a
visible note instead of freezing the UI.
"""

from __future__ import annotations

import json
from typing import Any

MAX_URL = 120
MAX_TEXT = 64 << 10
"""Characters of one text block shown before it is cut (with a note saying how much was left out)."""


def j(v: Any) -> str:
    """Compact single-line JSON for values shown inline (non-ASCII kept readable)."""
    try:
        return json.dumps(v, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(v)
    except RecursionError:
        return "<too deeply nested>"


def s(v: Any) -> str:
    """Strings as-is, everything else as JSON, so params read like ``tool_choice=auto``."""
    return v if isinstance(v, str) else j(v)


def short_url(url: Any) -> str:
    """Abbreviate data: URLs (base64 images can be megabytes) and very long URLs."""
    if not isinstance(url, str):
        return j(url)
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        return f"{head},… ({len(payload)} chars)"
    if len(url) > MAX_URL:
        return url[: MAX_URL - 1] + "…"
    return url


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """Text cut at ``limit`` characters with a note, so one huge block cannot stall the view."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters not shown]"


def args(arguments: Any) -> str:
    """Tool-call arguments as sent (a JSON string), or JSON-encoded if a provider sent an object."""
    if arguments is None:
        return ""
    return arguments if isinstance(arguments, str) else j(arguments)


def count(v: Any) -> str:
    """A token count for a usage line: the number, or '?' when missing."""
    return str(v) if type(v) is int else "?"
