"""Relay server-sent events chunk by chunk while keeping a bounded copy for the flow.

mitmproxy either buffers a body (the client waits for the whole generation) or
streams it and keeps nothing (mitmweb shows "content missing"). A Recorder is
the ``flow.response.stream`` callable that does both: each chunk goes to the
client unchanged and at once, and up to ``limit`` bytes are kept so the
``response`` hook can put the body back on the flow.
"""

from __future__ import annotations

import time

from cfgw.usage import SSEUsageScanner


def is_event_stream(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


class Recorder:
    """A chunk pass-through that remembers at most ``limit`` bytes and scans for token usage."""

    __slots__ = ("delivered", "first_chunk_at", "kept", "limit", "scanner")

    def __init__(self, limit: int, content_encoding: str | None = None) -> None:
        self.limit = limit
        self.kept = bytearray()
        self.delivered = 0
        self.first_chunk_at: float | None = None
        self.scanner = SSEUsageScanner(content_encoding)

    def __call__(self, chunk: bytes) -> bytes:
        if chunk:
            if self.first_chunk_at is None:
                self.first_chunk_at = time.time()
            self.delivered += len(chunk)
            room = self.limit - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]
            self.scanner.feed(chunk)
        else:
            self.scanner.close()  # mitmproxy calls with b"" once the stream has ended
        return chunk

    @property
    def dropped(self) -> int:
        """Bytes the client got that the record does not hold."""
        return self.delivered - len(self.kept)

    def body(self) -> bytes:
        return bytes(self.kept)
