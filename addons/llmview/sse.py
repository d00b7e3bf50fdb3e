"""The server-sent events of a recorded body, for rendering (not for relaying a live stream).

The fields that matter here (``event`` and ``data``) are read line by line, at most
``max_lines`` lines, so a hostile body costs no more than a long honest one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

DONE: Any = object()
"""OpenAI's ``data: [DONE]``."""
BAD: Any = object()
"""Data that is not a JSON object."""

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


def parse(body: bytes, max_lines: int) -> tuple[list[Event], bool]:
    """The events of the first ``max_lines`` lines; False when the body has more."""
    text = body.decode("utf-8", "replace").removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n", max_lines)
    complete = len(lines) <= max_lines or not lines[-1].strip()
    events = []
    name, data = "", []
    for line in [*lines[:max_lines], ""]:  # the blank line at the end dispatches an event left open
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
        elif field == "event":
            name = value.removeprefix(" ")
        elif not line:
            joined = "\n".join(data)
            if joined:  # an event without data is not dispatched
                events.append(Event(name, joined))
            name, data = "", []
    return events, complete


def _load(data: str) -> Any:
    """The data's JSON object, DONE, or BAD (what is not an object is not looked at further)."""
    data = data.strip()
    if data == "[DONE]":
        return DONE
    try:
        return json.loads(data) if data.startswith("{") else BAD
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
            elif obj is BAD:
                bad += 1
            else:
                objs.append((ev.name, obj))
    return Parsed(objs, len(objs) + bad, bad, done)
