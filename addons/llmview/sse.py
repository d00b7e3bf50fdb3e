"""The server-sent events of a recorded body, for rendering (not for relaying a live stream).

Blocks are split on blank lines and their fields found with regular expressions, so
the work stays in C however hostile the body; at most ``max_blocks`` blocks are read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

DONE: Any = object()
"""OpenAI's ``data: [DONE]``."""
BAD: Any = object()
"""Data that is not JSON."""

_DATA = re.compile(r"^data(?:: ?(.*))?$", re.M)
_NAME = re.compile(r"^event(?:: ?(.*))?$", re.M)
_SSE_START = (b"data:", b"event:", b":", b"id:", b"retry:")


class Event(NamedTuple):
    name: str
    """From the ``event:`` line; '' when there is none."""
    data: str
    """The ``data:`` lines, joined with newlines."""


class Parsed(NamedTuple):
    objects: list[tuple[str, dict]]
    """Each event's name and data, for the data that is a JSON object."""
    events: int
    """Events with data, ``[DONE]`` not counted."""
    bad: int
    """Events whose data is not a JSON object."""
    done: bool
    """Whether ``[DONE]`` came."""


def looks_like_sse(data: bytes) -> bool:
    """Whether a body starts like an event stream."""
    return data[:32].lstrip().startswith(_SSE_START)


def parse(body: bytes, max_blocks: int) -> tuple[list[Event], bool]:
    """The events of the first ``max_blocks`` blocks; False when the body had more."""
    text = body.decode("utf-8", "replace").removeprefix("\ufeff")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks = text.split("\n\n", max_blocks)
    complete = len(blocks) <= max_blocks or not blocks[-1].strip()
    events = []
    for block in blocks[:max_blocks]:
        data = "\n".join(_DATA.findall(block))
        if data:  # an event without data is not dispatched
            names = _NAME.findall(block)
            events.append(Event(names[-1] if names else "", data))
    return events, complete


def _load(data: str) -> Any:
    data = data.strip()
    if data == "[DONE]":
        return DONE
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return BAD


def _documents(data: str) -> list[Any]:
    """An event's parsed data; one document per line when a server left out the blank lines."""
    obj = _load(data)
    if obj is BAD and "\n" in data:
        return [_load(line) for line in data.split("\n") if line.strip()]
    return [obj]


def objects(events: Iterable[Event]) -> Parsed:
    """The events' data parsed, and counted."""
    objs, bad, done = [], 0, False
    for ev in events:
        for obj in _documents(ev.data):
            if obj is DONE:
                done = True
            elif isinstance(obj, dict):
                objs.append((ev.name, obj))
            else:
                bad += 1
    return Parsed(objs, len(objs) + bad, bad, done)
