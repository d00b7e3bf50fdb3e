"""Server-sent events, split family-neutrally (WHATWG rules), incrementally and with bounded memory.

Every streamed response passes through an ``SSEParser`` chunk by chunk, so it
splits bytes with find(), decodes only complete events, and never buffers more
than ``max_event`` bytes of a line or of an event's data: anything larger is
skipped, because a hostile upstream must not be able to grow the proxy's memory.
``parse`` applies the same rules to a recorded body for rendering.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["MAX_EVENT", "Event", "SSEParser", "is_event_stream", "parse"]

MAX_EVENT = 1 << 20
"""By default a line or an event's data larger than this (1 MiB) is dropped."""

_BOM = b"\xef\xbb\xbf"
_PARSE_SLICE = 64 << 10  # parse() feeds a body in slices so max_events can stop it early


class Event(NamedTuple):
    """One dispatched event: ``name`` from ``event:`` ('' when absent), ``data`` the joined data lines."""

    name: str
    data: str


def is_event_stream(content_type: str | None) -> bool:
    """Whether a Content-Type is ``text/event-stream`` (any case; parameters such as charset ignored)."""
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def _decode(raw: bytes | bytearray) -> str:
    return raw.decode("utf-8", "replace")


class SSEParser:
    """Turns a byte stream into events as its chunks arrive; never raises, memory bounded by ``max_event``.

    ``feed()`` returns the events a chunk completes. A line longer than
    ``max_event`` bytes is skipped to its end, and an event whose data would
    exceed ``max_event`` bytes is skipped to its blank line (so is an event whose
    ``data``/``event`` line was too long: what is left of it would be wrong).
    ``close()`` returns a last event that lacked its blank line; call it only when
    the stream ended completely, since an event cut off mid-way would pass for
    whole. After ``close()`` the parser is ready for a new stream.
    """

    __slots__ = (
        "_at_start",
        "_data",
        "_drop_event",
        "_max",
        "_name",
        "_partial",
        "_skip_lf",
        "_skip_line",
    )

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        if max_event < 1:
            raise ValueError(f"max_event must be positive, not {max_event}")
        self._max = max_event
        self._partial = bytearray()  # the unfinished last line (empty while skipping; at first: a BOM?)
        self._data = bytearray()  # the current event's data lines, each followed by b"\n"
        self._name = ""  # the current event's name
        self._drop_event = False  # the current event grew too large: skip to its blank line
        self._skip_line = False  # the current line grew too large: skip to its end
        self._skip_lf = False  # the last chunk ended in CR: an LF opening the next one completes a CRLF
        self._at_start = True  # nothing seen yet, so a byte order mark may still come

    def _reset(self) -> None:
        self._partial.clear()
        self._data.clear()
        self._name = ""
        self._drop_event = self._skip_line = self._skip_lf = False
        self._at_start = True

    def feed(self, chunk: bytes) -> list[Event]:
        """The events that ``chunk`` completes, in stream order; never raises."""
        if not chunk:
            return []
        try:
            return self._feed(chunk)
        except Exception:  # a bug here must not break the stream being relayed: start afresh
            self._reset()
            return []

    def close(self) -> list[Event]:
        """End of a complete stream: the event still pending (at most one); never raises."""
        events: list[Event] = []
        try:
            if self._partial:
                self._line(bytes(self._partial))
            self._dispatch(events)
        except Exception:
            events = []
        self._reset()
        return events

    def _feed(self, data: bytes) -> list[Event]:
        if self._at_start:
            data = bytes(self._partial) + data
            self._partial.clear()
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self._partial += data
                return []
            self._at_start = False
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        if self._skip_lf:
            self._skip_lf = False
            if data.startswith(b"\n"):
                data = data[1:]
        if b"\r" in data:  # rare: reduce CRLF and CR line ends to LF so one find() splits
            self._skip_lf = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[Event] = []
        nl = data.find(b"\n")
        if nl == -1:
            self._keep(data, 0)
            return events
        pos = 0
        if self._partial or self._skip_line:
            self._finish_line(data, nl)
            pos = nl + 1
        find = data.find
        startswith = data.startswith
        limit = self._max
        while (nl := find(b"\n", pos)) != -1:
            if nl == pos:
                self._dispatch(events)
            elif nl - pos > limit:
                self._drop_line(data[pos : pos + 6])
            elif (
                startswith(b"data:", pos)
                and startswith(b"\n", nl + 1)
                and not self._data
                and not self._drop_event
            ):  # the common shape: an event of one data line
                start = pos + 6 if startswith(b" ", pos + 5) else pos + 5
                events.append(Event(self._name, _decode(data[start:nl])))
                self._name = ""
                pos = nl + 2
                continue
            else:
                self._line(data[pos:nl])
            pos = nl + 1
        if pos < len(data):
            self._keep(data, pos)
        return events

    def _finish_line(self, data: bytes, nl: int) -> None:
        """The pending partial line ends at data[nl]: handle it unless it is being skipped."""
        if self._skip_line:
            self._skip_line = False
        elif len(self._partial) + nl > self._max:
            self._drop_line(bytes(self._partial[:6]) + data[:6])
        else:
            self._partial += data[:nl]
            self._line(bytes(self._partial))
        self._partial.clear()

    def _keep(self, data: bytes, pos: int) -> None:
        """Buffer the unfinished line data[pos:], or start skipping it once it is too long."""
        if self._skip_line:
            return
        if len(self._partial) + len(data) - pos > self._max:
            self._drop_line(bytes(self._partial[:6]) + data[pos : pos + 6])
            self._partial.clear()
            self._skip_line = True
        else:
            self._partial += memoryview(data)[pos:]

    def _drop_line(self, head: bytes) -> None:
        """A line too long to keep; its first bytes tell whether its event is lost with it."""
        if head.startswith((b"data:", b"event:")):
            self._lose_event()

    def _lose_event(self) -> None:
        """Skip the rest of the current event: without a line of it, or above the limit, it would be wrong."""
        self._drop_event = True
        self._data.clear()
        self._name = ""

    def _line(self, line: bytes) -> None:
        """One complete, non-blank line: a field of the current event, a comment, or ignored."""
        colon = line.find(b":")
        if colon == -1:
            field, value = line, b""
        else:
            field, value = line[:colon], line[colon + 1 :]
            if value.startswith(b" "):
                value = value[1:]
        if self._drop_event:
            return
        if field == b"data":
            if len(self._data) + len(value) > self._max:  # the joined data would be too large
                self._lose_event()
            else:
                self._data += value
                self._data += b"\n"
        elif field == b"event":
            self._name = _decode(value)
        # comments (empty field), id, retry and unknown fields do not affect the events

    def _dispatch(self, events: list[Event]) -> None:
        """A blank line: emit the current event if it has data lines, and start the next one."""
        if self._data and not self._drop_event:
            events.append(Event(self._name, _decode(self._data[:-1])))
        self._data.clear()
        self._name = ""
        self._drop_event = False


def parse(body: bytes, max_events: int | None = None) -> list[Event]:
    """The events of a recorded body, the last one even without its blank line; at most ``max_events``.

    Nothing is dropped for its size: the body is already in memory.
    """
    if max_events is not None and max_events <= 0:
        return []
    parser = SSEParser(max_event=max(len(body), 1))
    events: list[Event] = []
    for start in range(0, len(body), _PARSE_SLICE):
        events += parser.feed(body[start : start + _PARSE_SLICE])
        if max_events is not None and len(events) >= max_events:
            return events[:max_events]
    events += parser.close()
    return events[:max_events]
