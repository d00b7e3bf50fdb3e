"""Text helpers the families share: values inline, media as short tags, long text cut.

A transcript is for people: ``tool_choice=auto`` rather than JSON, a megabyte of base64
as ``<image_url data:image/png;base64,… (N chars)>``, and a long block cut with a note
saying how much is left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from typing import Any

MAX_TEXT = 64 << 10
"""Characters of one text block shown before it is cut."""
MAX_LABEL = 200
"""Characters of an id, name, role or parameter value shown inline."""
MAX_URL = 120

_TEXT_PARTS = ("text", "input_text", "output_text", "summary_text", "reasoning_text")
_MEDIA_REFS = ("url", "image_url", "filename", "file_id", "file_url", "format")
_DETAILS = {"cached_tokens": "cached", "reasoning_tokens": "reasoning"}


def s(v: Any) -> str:
    """Strings as they are, anything else as one line of JSON."""
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """``text`` cut at ``limit`` characters, with a note."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters not shown]"


def label(v: Any, limit: int = MAX_LABEL) -> str:
    """An id, name or value inline, cut at ``limit``; '?' when missing."""
    return "?" if v is None else clip(s(v), limit)


def args(arguments: Any) -> str:
    """Tool-call arguments as sent (a JSON string), cut when long."""
    return "" if arguments is None else clip(s(arguments))


def count(v: Any) -> str:
    """A token count, or '?' when missing."""
    return str(v) if type(v) is int else "?"


def size(n: int) -> str:
    """A byte count for a note: ``16.0 MiB``, or exact bytes below one MiB."""
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def lines(out: Iterable[str | None]) -> str:
    """The transcript's text: one line each (None: no line), ending in a newline."""
    return "\n".join(line for line in out if line is not None) + "\n"


def header(obj: dict, keys: Iterable[str] = ("model", "id")) -> list[str]:
    """``model: ...`` and ``id: ...`` lines, for the keys present and not null."""
    return [f"{key}: {label(obj[key])}" for key in keys if obj.get(key) is not None]


def tagged(tag: str, text: Any) -> list[str]:
    """Reasoning or thinking between tags; [] when there is none."""
    return [f"<{tag}>", clip(s(text)), f"</{tag}>"] if text else []


def short_url(url: Any) -> str:
    """``data:`` URLs (base64 images) as their head and length; long URLs cut."""
    url = s(url)
    if url.startswith("data:"):
        head, _, payload = url.partition(",")
        return f"{head[:MAX_LABEL]},… ({len(payload)} chars)"
    return url if len(url) <= MAX_URL else url[: MAX_URL - 1] + "…"


def media(typ: Any, part: dict) -> str:
    """A media part as a tag: ``<input_image https://... detail=low>``.

    Chat nests the reference (``{"image_url": {"url": ...}}``), Responses does not.
    """
    inner = part[typ] if isinstance(part.get(typ), dict) else part
    ref = next((inner[k] for k in _MEDIA_REFS if isinstance(inner.get(k), str)), None)
    detail = inner.get("detail") or part.get("detail")
    words = [label(typ), short_url(ref) if ref else None, f"detail={label(detail)}" if detail else None]
    return "<" + " ".join(w for w in words if w) + ">"


def part(p: Any) -> str:
    """One part of OpenAI-style content (chat and Responses): text as is, media as a tag."""
    if not isinstance(p, dict):
        return s(p)
    typ = p.get("type")
    if typ in _TEXT_PARTS and "text" in p:
        return s(p["text"])
    if typ == "refusal":
        return f"refusal: {s(p.get('refusal'))}"
    return media(typ, p)


def content_text(content: Any) -> str:
    """OpenAI-style content as text: a string, or its parts one per line ('' when absent)."""
    if isinstance(content, list):
        return "\n".join(part(p) for p in content)
    return "" if content is None else s(content)


def param_names(schema: Any) -> str:
    """``city, unit``: the property names of a tool's JSON schema."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    return ", ".join(label(k) for k in props) if isinstance(props, dict) else ""


def tool_line(name: Any, schema: Any, description: Any) -> str:
    """``tool get_weather(city, unit) — Get the weather``, the description folded and cut."""
    line = f"tool {label(name)}({param_names(schema)})"
    if isinstance(description, str) and description.strip():
        line += f" — {clip(' '.join(description.split()), MAX_LABEL)}"
    return line


def request_head(obj: dict, not_params: Collection[str], tool_def: Callable[[dict], str]) -> list[str]:
    """A request's first lines: ``model:``, ``params: k=v · ...`` and the ``tools:`` defined."""
    out = header(obj, ("model",))
    params = [f"{label(k)}={label(v)}" for k, v in obj.items() if k not in not_params and k != "tools"]
    if params:
        out.append("params: " + " · ".join(params))
    if obj.get("tools"):
        out += ["tools:", *("  " + tool_def(t) for t in obj["tools"])]
    return out


def usage_line(usage: Any, inp: str = "prompt", out: str = "completion") -> str | None:
    """``usage: prompt 12 · completion 34 · total 46 (cached 8, reasoning 20)``.

    Chat names the counts prompt/completion, Responses input/output.
    """
    if not isinstance(usage, dict):
        return None
    details = {**(usage.get(f"{inp}_tokens_details") or {}), **(usage.get(f"{out}_tokens_details") or {})}
    extra = [f"{name} {details[key]}" for key, name in _DETAILS.items() if details.get(key)]
    ins, outs, total = (count(usage.get(key)) for key in (f"{inp}_tokens", f"{out}_tokens", "total_tokens"))
    line = f"usage: {inp} {ins} · {out} {outs} · total {total}"
    return line + (f" ({', '.join(extra)})" if extra else "")


def stream_line(events: int, bad: int, end: str, ended: bool) -> str:
    """``stream: 12 events, [DONE]``, or what is missing when the stream was cut short."""
    line = f"stream: {events} events" + (f" ({bad} unparseable)" if bad else "")
    return line + (f", {end}" if ended else f" (stream incomplete: no {end})")
