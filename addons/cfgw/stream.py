"""Relays an event stream live and keeps what mitmweb, flow files and the log line need.

mitmproxy calls the recorder with each chunk as it arrives (and with b"" at the end);
it hands the chunk straight on, keeps a copy of the first ``limit`` bytes, and reads
the token usage from the events as they complete, so usage is exact past the limit too.
"""

from __future__ import annotations

from mitmproxy import http

from cfgw import families

MAX_EVENT = 1 << 20  # an event longer than this is relayed but not read for usage


class Recorder:
    def __init__(self, flow: http.HTTPFlow, limit: int) -> None:
        self.flow = flow
        self.limit = limit
        self.kept = bytearray()
        self.delivered = 0
        self.pending = bytearray()
        self.usage: dict[str, int] = {}
        self.model: str | None = None
        self.done = False

    def __call__(self, chunk: bytes) -> bytes:
        if chunk:
            self.delivered += len(chunk)
            self.kept += chunk[: max(0, self.limit - len(self.kept))]
            self.read(chunk)
        else:
            self.read(b"\n\n")
            self.done = True
            assert self.flow.response
            self.flow.response.raw_content = bytes(self.kept)
        return chunk

    def read_whole(self, body: bytes) -> None:
        """A whole body, kept whole: a replayed answer, which mitmproxy sends as it is, never
        calling the recorder."""
        self.limit = len(body)
        self(body)
        self(b"")

    def summary(self) -> dict:
        """What the flow's record takes from the stream; a stream cut short counts as truncated."""
        truncated = self.delivered > len(self.kept) or not self.done
        return {
            "usage": self.usage,
            "answer_model": self.model,
            "bytes": self.delivered,
            "truncated": truncated,
        }

    def read(self, chunk: bytes) -> None:
        """Split complete events off the pending bytes and read those that may carry usage.

        Line ends are made LF (a CRLF may be split between chunks). Only the new bytes (and
        the one before them) are searched, so a chunk costs its own length however long the
        pending event is.
        """
        if self.pending.endswith(b"\r") and chunk.startswith(b"\n"):
            del self.pending[-1:]
        start = max(0, len(self.pending) - 1)
        self.pending += chunk.replace(b"\r\n", b"\n")
        end = 0
        while (found := self.pending.find(b"\n\n", start)) >= 0:
            if self.may_tell(end, found):
                self.read_event(bytes(self.pending[end:found]))
            end = start = found + 2
        del self.pending[:end]
        if len(self.pending) > MAX_EVENT:
            del self.pending[:-1]

    def may_tell(self, start: int, end: int) -> bool:
        """Whether the pending event between start and end may carry usage or the model."""
        found = self.pending.find(b'"usage"', start, end) >= 0
        return found or (self.model is None and self.pending.find(b'"model"', start, end) >= 0)

    def read_event(self, event: bytes) -> None:
        data = b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
        obj = families.parse_json(data)
        self.usage.update(families.usage_of(obj))
        self.model = families.model_of(obj) or self.model
