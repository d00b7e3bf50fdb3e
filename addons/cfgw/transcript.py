"""Text helpers and the pieces of transcript rendering that every family shares, for mitmweb.

Rendering is for people: values read like ``tool_choice=auto``, media become short
``<image ...>`` tags (a base64 image can be megabytes), and long text is cut with a
visible note instead of freezing the UI. What differs between families (their own
part, block and item types) stays in the family modules; the ``limit`` parameters
below keep each family's own cut-off where they differ. Everything here never raises
on hostile input (any JSON value).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable
from typing import Any

from cfgw.family import Usage

MAX_URL = 120
MAX_TEXT = 64 << 10
"""Characters of one text block shown before it is cut (with a note saying how much was left out)."""
MAX_LABEL = 200
"""Characters of an id, name, role or type shown inline (Messages and Responses; chat never cuts them)."""


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


def label(v: Any, limit: int | None = MAX_LABEL) -> str:
    """An id, name, role or value inline: ``s(v)`` cut at ``limit`` characters (None: never cut).

    One call for the families' different cut-offs: chat shows labels whole (None),
    Messages and Responses cut them at MAX_LABEL, parameter values have their own limits.
    """
    text = s(v)
    return text if limit is None else clip(text, limit)


def args(arguments: Any) -> str:
    """Tool-call arguments as sent (a JSON string), or JSON-encoded if a provider sent an object."""
    if arguments is None:
        return ""
    return arguments if isinstance(arguments, str) else j(arguments)


def count(v: Any) -> str:
    """A token count for a usage line: the number, or '?' when missing."""
    return str(v) if type(v) is int else "?"


# --- pieces shared by the families' transcripts ------------------------------------------


def header(obj: dict, keys: Iterable[str] = ("model", "id"), limit: int | None = MAX_LABEL) -> list[str]:
    """``model: ...`` and ``id: ...`` lines (one per key present and not null) that open a transcript."""
    return [f"{key}: {label(obj[key], limit)}" for key in keys if obj.get(key) is not None]


def content_part(
    part: Any,
    text_types: Collection[str],
    media: Callable[[Any, dict], str | None],
    limit: int | None = MAX_LABEL,
) -> str:
    """One element of OpenAI-style multi-part content: text verbatim, media as a short tag.

    The kinds both OpenAI families share are here (text parts named in ``text_types``,
    ``refusal``, ``input_audio``); ``media(type, part)`` tags the family's own media parts
    and returns None for any other type, which shows as ``<type>``. ``limit`` cuts labels.
    """
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return label(part, limit)
    typ = part.get("type")
    if isinstance(typ, str) and typ in text_types and isinstance(part.get("text"), str):
        return part["text"]
    if typ == "refusal" and isinstance(part.get("refusal"), str):
        return f"refusal: {part['refusal']}"
    if typ == "input_audio":
        audio = part.get("input_audio")
        fmt = audio.get("format") if isinstance(audio, dict) else None
        return f"<input_audio format={label(fmt, limit)}>" if fmt else "<input_audio>"
    tag = media(typ, part)
    if tag is not None:
        return tag
    return f"<{label(typ, limit) if typ else 'part'}>"


def content_text(content: Any, part: Callable[[Any], str]) -> str | None:
    """Message content as text: a string as-is, a list of parts one per line (``part`` renders each).

    None when absent; any other value as JSON.
    """
    if content is None:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part(p) for p in content)
    return j(content)


def param_names(schema: Any, limit: int | None = MAX_LABEL) -> str:
    """``city, unit``: the property names of a tool's JSON schema ('' when it has none)."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    return ", ".join(label(k, limit) for k in props) if isinstance(props, dict) else ""


def described(line: str, description: Any, limit: int) -> str:
    """``line — description`` with the description's white space folded and cut at ``limit``.

    The line alone when there is no description (tool descriptions can be kilobytes).
    """
    if isinstance(description, str) and description.strip():
        return f"{line} — {clip(' '.join(description.split()), limit)}"
    return line


def request_head(
    obj: dict,
    not_params: Collection[str],
    value: Callable[[Any], str],
    tool_def: Callable[[Any], str],
    tool_keys: Iterable[str] = ("tools",),
    limit: int | None = MAX_LABEL,
) -> list[str]:
    """The lines that open a request transcript: ``model:``, ``params: k=v · ...``, ``tools:``.

    Every top-level key not in ``not_params`` is a parameter, its value shown by ``value``;
    the tool definitions under ``tool_keys`` are listed by ``tool_def``; ``limit`` cuts the
    model and the parameter names.
    """
    out = header(obj, ("model",), limit)
    params = [f"{label(k, limit)}={value(v)}" for k, v in obj.items() if k not in not_params]
    if params:
        out.append("params: " + " · ".join(params))
    tools = [t for key in tool_keys if isinstance(obj.get(key), list) for t in obj[key]]
    if tools:
        out.append("tools:")
        out += ["  " + tool_def(t) for t in tools]
    return out


def openai_usage_line(u: Usage | None, input_name: str, output_name: str) -> str | None:
    """``usage: prompt 12 · completion 34 · total 46 (cached 8, reasoning 4)`` (``?`` for missing counts).

    Chat names the counts prompt/completion, Responses input/output; the total is the
    reported one, else input + output (OpenAI counts cached tokens inside the input).
    """
    if u is None:
        return None
    line = (
        f"usage: {input_name} {count(u.input_tokens)} · {output_name} {count(u.output_tokens)}"
        f" · total {count(u.total)}"
    )
    details = (("cached", u.cached_tokens), ("reasoning", u.reasoning_tokens))
    extra = [f"{name} {n}" for name, n in details if n]
    return line + (" (" + ", ".join(extra) + ")" if extra else "")
