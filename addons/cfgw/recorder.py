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
from cfgw.usage import StreamScanner, recorded_stream_usage

LAZY_SCAN = 256 << 10
"""Streams up to this size are read for usage once, at their end, from the record; beyond it
(or past the record limit, or compressed) they are scanned chunk by chunk as they pass."""


class Recorder:
    """A chunk pass-through that remembers at most ``limit`` bytes and reads the token usage.

    ``relay`` is what goes on ``flow.response.stream``: mitmproxy calls it for every chunk,
    and a bound method costs about a quarter less per call than an instance's ``__call__``.
    """

    __slots__ = (
        "dropped",
        "encoding",
        "family",
        "fast_room",
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
        self.dropped = 0
        """Bytes the client got that the record does not hold."""
        self.first_chunk_at: float | None = None
        self.usage: Usage | None = None
        """Set by ``finish``."""
        self.finished = False
        # Parsing each event as it passes costs a few microseconds of Python per chunk; most
        # streams are small, so they are read once at the end, from the record, instead.
        self.scanner = StreamScanner(family, content_encoding) if content_encoding else None
        self.fast_room = 0
        """Bytes that may still be kept without a look at the scanner (the common case); opened
        by the first chunk, which ``slow_path`` takes, so this path need not check for it."""

    def relay(self, chunk: bytes) -> bytes:
        # b"" is not a reliable end marker: mitmproxy sends it at the end of the stream, but
        # also passes on empty HTTP/2 DATA frames mid-stream; the response hook calls finish().
        n = len(chunk)
        if 0 < n <= self.fast_room:  # this runs for every chunk of every stream: keep it short
            self.fast_room -= n
            self.kept += chunk
        elif n:
            self.slow_path(chunk)
        return chunk

    def slow_path(self, chunk: bytes) -> None:
        """The first chunk; then past the lazy-scan size or the record limit, or compressed: scan
        chunk by chunk."""
        if self.first_chunk_at is None:
            self.first_chunk_at = time.time()
            if self.scanner is None:  # plain: kept as it passes, read at the end (up to LAZY_SCAN)
                self.fast_room = min(self.limit, LAZY_SCAN)
                if len(chunk) <= self.fast_room:
                    self.relay(chunk)
                    return
        self.fast_room = 0
        if self.scanner is None:
            self.scanner = StreamScanner(self.family, self.encoding)
            self.scanner.feed(bytes(self.kept))  # catch up once, then chunk by chunk
        room = max(0, self.limit - len(self.kept))
        if room:
            self.kept += chunk[:room]
        self.dropped += max(0, len(chunk) - room)
        self.scanner.feed(chunk)

    def finish(self, complete: bool = True) -> None:
        """The stream ended (completely, or broken off): read the usage. A complete stream's last
        event counts even without its blank line."""
        if self.finished:
            return
        self.finished = True
        if self.scanner is None:  # the record holds the whole stream
            self.usage = recorded_stream_usage(self.family, bytes(self.kept), complete)
            return
        if complete:
            self.scanner.close()
        self.usage = self.scanner.usage

    @property
    def delivered(self) -> int:
        """Bytes the client got."""
        return len(self.kept) + self.dropped

    def body(self) -> bytes:
        return bytes(self.kept)
