"""Relay server-sent events chunk by chunk while keeping a bounded copy for the flow.

Without a stream callable mitmproxy buffers the whole body (the client waits for the
whole generation). mitmproxy 12's ``store_streamed_bodies`` keeps a streamed body,
but without bound and not on mitmproxy 11. A Recorder is the ``flow.response.stream``
callable that does all three things needed: each chunk goes to the client unchanged
and at once, up to ``limit`` bytes are kept so the ``response`` hook can put the body
back on the flow, and the family's events are scanned for token usage on the way.
"""

from __future__ import annotations

import time

from cfgw.family import Family
from cfgw.usage import StreamScanner


class Recorder:
    """A chunk pass-through that remembers at most ``limit`` bytes and scans for token usage."""

    __slots__ = ("delivered", "first_chunk_at", "kept", "limit", "scanner")

    def __init__(self, limit: int, family: Family, content_encoding: str | None = None) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.delivered = 0
        self.first_chunk_at: float | None = None
        self.scanner = StreamScanner(family, content_encoding)

    def __call__(self, chunk: bytes) -> bytes:
        # b"" is not a reliable end marker: mitmproxy sends it at the end of the stream, but
        # also passes on empty HTTP/2 DATA frames mid-stream; the response hook calls finish().
        if chunk:
            if self.first_chunk_at is None:
                self.first_chunk_at = time.time()
            self.delivered += len(chunk)
            room = self.limit - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]
            self.scanner.feed(chunk)
        return chunk

    def finish(self) -> None:
        """The stream ended completely: let the scanner use a last event that lacks its blank line."""
        self.scanner.close()

    @property
    def dropped(self) -> int:
        """Bytes the client got that the record does not hold."""
        return self.delivered - len(self.kept)

    def body(self) -> bytes:
        return bytes(self.kept)
