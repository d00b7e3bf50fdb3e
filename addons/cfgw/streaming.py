"""Relay server-sent events chunk by chunk while keeping a bounded copy for the flow.

mitmproxy either buffers a body (the client waits for the whole generation) or
streams it and keeps nothing (mitmweb shows "content missing"). A Recorder is
the ``flow.response.stream`` callable that does both: each chunk goes to the
client unchanged and at once, and up to ``limit`` bytes are kept so the
``response`` hook can put the body back on the flow.
"""

from __future__ import annotations

import time

from mitmproxy import http
from mitmproxy.connection import ConnectionState

from cfgw.usage import SSEUsageScanner


def is_event_stream(content_type: str | None) -> bool:
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def client_went_away(flow: http.HTTPFlow) -> bool:
    """Whether the client, not the upstream, broke a failed flow.

    mitmproxy's error text only says so for HTTP/1 clients ("Client disconnected.");
    over HTTP/2 a client hanging up and an upstream failing both read "peer closed
    connection". The connections tell them apart: mitmproxy marks a connection
    unreadable before the error hook, and closes the upstream before the hook only
    when the client failed (the client only after it, when the upstream failed).
    The text decides when both stay open (an HTTP/2 stream reset).
    """
    if not flow.client_conn.state & ConnectionState.CAN_READ:
        return True
    if not flow.server_conn.state & ConnectionState.CAN_READ:
        return False
    return bool(flow.error) and "client" in flow.error.msg.lower()


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
        """The stream ended completely: let the scanner use a last line that lacks its newline."""
        self.scanner.close()

    @property
    def dropped(self) -> int:
        """Bytes the client got that the record does not hold."""
        return self.delivered - len(self.kept)

    def body(self) -> bytes:
        return bytes(self.kept)
