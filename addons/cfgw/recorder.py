"""Relay server-sent events chunk by chunk while keeping a bounded copy for the flow.

Without a stream callable mitmproxy buffers the whole body (the client waits for the
whole generation). mitmproxy 12's ``store_streamed_bodies`` keeps a streamed body,
but without bound and not on mitmproxy 11. A Recorder is the ``flow.response.stream``
callable that does all three things needed: each chunk goes to the client unchanged
and at once, up to ``limit`` bytes are kept so the ``response`` hook can put the body
back on the flow, and the family's events are read for token usage.
"""

from __future__ import annotations

import time

from cfgw.family import Family, Usage
from cfgw.usage import StreamScanner

LAZY_SCAN = 256 << 10
"""Streams up to this size are read for usage once, at their end, from the record; beyond it
(or past the record limit, or compressed) they are scanned chunk by chunk as they pass."""


class Recorder:
    """A chunk pass-through that remembers at most ``limit`` bytes and reads the token usage."""

    __slots__ = (
        "delivered",
        "encoding",
        "family",
        "finished",
        "first_chunk_at",
        "kept",
        "limit",
        "scanner",
        "usage",
    )

    def __init__(self, limit: int, family: Family, content_encoding: str | None = None) -> None:
        self.limit = limit
        self.family = family
        self.encoding = content_encoding
        self.kept = bytearray()
        self.delivered = 0
        self.first_chunk_at: float | None = None
        self.usage: Usage | None = None
        """Set by ``finish``."""
        self.finished = False
        # Parsing each event as it passes costs a few microseconds of Python per chunk; most
        # streams are small, so they are parsed once at the end, from the record, instead.
        self.scanner = StreamScanner(family, content_encoding) if content_encoding else None

    def __call__(self, chunk: bytes) -> bytes:
        # b"" is not a reliable end marker: mitmproxy sends it at the end of the stream, but
        # also passes on empty HTTP/2 DATA frames mid-stream; the response hook calls finish().
        if chunk:
            if self.first_chunk_at is None:
                self.first_chunk_at = time.time()
            self.delivered += len(chunk)
            kept = len(self.kept)
            room = self.limit - kept
            if self.scanner is None and (len(chunk) > room or kept + len(chunk) > LAZY_SCAN):
                self.scanner = StreamScanner(self.family, self.encoding)
                self.scanner.feed(bytes(self.kept))  # catch up once, then chunk by chunk
            if self.scanner is None:
                self.kept += chunk  # read for usage in finish()
            else:
                if room > 0:
                    self.kept += chunk[:room]
                self.scanner.feed(chunk)
        return chunk

    def finish(self, complete: bool = True) -> None:
        """The stream ended (completely, or broken off): read the usage. A complete stream's last
        event counts even without its blank line."""
        if self.finished:
            return
        self.finished = True
        scanner = self.scanner
        if scanner is None:
            scanner = StreamScanner(self.family, self.encoding)
            scanner.feed(bytes(self.kept))
        if complete:
            scanner.close()
        self.usage = scanner.usage

    @property
    def dropped(self) -> int:
        """Bytes the client got that the record does not hold."""
        return self.delivered - len(self.kept)

    def body(self) -> bytes:
        return bytes(self.kept)
