"""Bounded decoding of compressed response bodies, for reading token usage on the event loop.

Decoding runs on mitmproxy's event loop, so a hostile body must not freeze the proxy: input
goes to the decompressor in small slices (a gzip member's or zstd frame's ``unused_data`` copy
stays small instead of copying the whole rest of the body per member), output is taken in
bounded pieces, and decoding stops with DecodeAborted once the input, output, member/frame
count or wall-time limit is hit. Time is checked between steps, so a call overruns its budget
by at most one step (a millisecond or two, except ``br``: brotli decodes up to a whole window,
16 MiB or ~20 ms, before it can hand out any of it). The decoded bytes are for parsing only.
"""

from __future__ import annotations

import importlib
import time
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["DecodeAborted", "Limits", "StreamDecoder", "decode", "stream_decoder"]

_SLICE = 4 << 10
"""Input bytes given to a decompressor per step: bounds each member's unused_data copy."""
_PIECE = 256 << 10
"""Output bytes asked of a decompressor per step."""
_ZSTANDARD_SLICE = 128
"""zstandard (mitmproxy 11) has no output limit; an RLE block turns 4 bytes into 128 KiB, so
128 bytes of input decode to at most ~4 MiB (about a millisecond)."""
_ZSTD_WINDOW_LOG = 23
"""RFC 9659: zstd content-coding windows are at most 8 MiB; a bigger one is refused as corrupt
instead of making the decoder allocate up to 128 MiB."""


class DecodeAborted(Exception):
    """Decoding stopped (a limit was hit, or the data is corrupt): give up on usage for this body."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What decoding one body may cost; totals are per decode() call or per StreamDecoder."""

    max_output: int
    """Decoded bytes in total."""
    max_input: int = 8 << 20
    """Encoded bytes in total."""
    max_members: int = 64
    """gzip members, zlib/deflate streams or zstd frames (a new zstd decompressor costs ~25 µs)."""
    max_seconds: float = 0.005
    """Wall time per decode()/feed() call (and at most what is left of max_total_seconds);
    the first step of a call always runs, so decoding always progresses."""
    max_total_seconds: float = 0.05
    """Wall time over a StreamDecoder's whole life."""


class _Codec(Protocol):
    """One decompressor driven in bounded steps; raises its library's error on corrupt data."""

    @property
    def members(self) -> int:
        """Members/frames started so far."""
        ...

    def step(self, data: bytes | memoryview) -> bytes:
        """Decode a bounded amount of ``data``, or of what is held back when ``data`` is empty."""
        ...

    def busy(self) -> bool:
        """Whether input or output is held back: call step(b"") before giving more input."""
        ...


class _Zlib:
    """gzip or zlib/raw deflate; data after a member's end starts another member."""

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._d = zlib.decompressobj(wbits)
        self._held = b""
        self.members = 1

    def step(self, data: bytes | memoryview) -> bytes:
        if not data:
            data, self._held = self._held, b""
            if not data:
                return b""
        d = self._d
        if d.eof:
            d = self._d = zlib.decompressobj(self._wbits)
            self.members += 1
        out = d.decompress(data, _PIECE)
        # At a member's end CPython sets unconsumed_tail as well: unused_data is what follows.
        self._held = d.unused_data if d.eof else d.unconsumed_tail
        return out

    def busy(self) -> bool:
        return bool(self._held)


class _SniffedDeflate:
    """HTTP "deflate" is zlib-wrapped, but some servers send raw deflate: sniff the header."""

    def __init__(self) -> None:
        self._head = b""
        self._inner: _Zlib | None = None

    @property
    def members(self) -> int:
        return self._inner.members if self._inner is not None else 1

    def step(self, data: bytes | memoryview) -> bytes:
        if self._inner is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            cmf, flg = self._head[0], self._head[1]
            wrapped = cmf & 0x0F == 8 and cmf >> 4 <= 7 and ((cmf << 8) | flg) % 31 == 0
            self._inner = _Zlib(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        return self._inner.step(data)

    def busy(self) -> bool:
        return self._inner is not None and self._inner.busy()


class _Brotli:
    """brotli >= 1.2 (output_buffer_limit); the limit is soft and whole blocks come out at once."""

    members = 1

    def __init__(self, brotli: Any) -> None:
        self._d = brotli.Decompressor()
        self._more = False

    def step(self, data: bytes | memoryview) -> bytes:
        d = self._d
        out: bytes = d.process(data, output_buffer_limit=_PIECE)
        # can_accept_more_data() can be True while output is still pending: ask until none comes.
        self._more = not d.is_finished() and (bool(out) or not d.can_accept_more_data())
        return out

    def busy(self) -> bool:
        return self._more


class _Zstd:
    """zstd via the stdlib API (``compression.zstd`` on 3.14, ``backports.zstd`` before)."""

    def __init__(self, zstd: Any) -> None:
        self._zstd = zstd
        self._d = self._new()
        self._held = b""
        self._more = False
        self.members = 1

    def _new(self) -> Any:
        return self._zstd.ZstdDecompressor(
            options={self._zstd.DecompressionParameter.window_log_max: _ZSTD_WINDOW_LOG}
        )

    def step(self, data: bytes | memoryview) -> bytes:
        if not data:
            data, self._held = self._held, b""
        d = self._d
        if d.eof:
            if not data:
                return b""
            d = self._d = self._new()
            self.members += 1
        out: bytes = d.decompress(data, _PIECE)
        if d.eof:
            self._held, self._more = d.unused_data, False
        else:
            self._more = not d.needs_input
        return out

    def busy(self) -> bool:
        return self._more or bool(self._held)


class _Zstandard:
    """zstd via ``zstandard`` (mitmproxy 11): no output limit, so input goes in tiny slices."""

    def __init__(self, zstandard: Any) -> None:
        self._z = zstandard.ZstdDecompressor(max_window_size=1 << _ZSTD_WINDOW_LOG)
        self._d = self._z.decompressobj()
        self._rest = memoryview(b"")
        self._held = b""
        self.members = 1

    def step(self, data: bytes | memoryview) -> bytes:
        if data:
            self._rest = memoryview(data)
        piece: bytes | memoryview
        if self._held:
            piece, self._held = self._held, b""
        else:
            piece = self._rest[:_ZSTANDARD_SLICE]
            self._rest = self._rest[_ZSTANDARD_SLICE:] if len(self._rest) > _ZSTANDARD_SLICE else _EMPTY
        if not piece:
            return b""
        d = self._d
        if d.eof:
            d = self._d = self._z.decompressobj()
            self.members += 1
        out: bytes = d.decompress(piece)
        if d.eof:
            self._held = d.unused_data
        return out

    def busy(self) -> bool:
        return bool(self._held) or bool(len(self._rest))


_EMPTY = memoryview(b"")


def _brotli_codec() -> _Codec:
    try:
        brotli: Any = importlib.import_module("brotli")
    except ImportError:
        raise ValueError("br: the brotli package is not installed") from None
    if not hasattr(brotli.Decompressor(), "can_accept_more_data"):
        # Before 1.2 one process() call may return a whole 16 MiB meta-block per input byte
        # (measured: 80 ms), and nothing can stop it: refuse rather than block the loop.
        raise ValueError("br: brotli < 1.2 cannot bound its output")
    return _Brotli(brotli)


def _zstd_codec() -> _Codec:
    for name in ("compression.zstd", "backports.zstd"):
        try:
            return _Zstd(importlib.import_module(name))
        except ImportError:
            pass
    try:
        return _Zstandard(importlib.import_module("zstandard"))
    except ImportError:
        raise ValueError("zstd: no zstd decoder is installed") from None


def _codec(content_encoding: str | None) -> _Codec | None:
    """The decoder for a Content-Encoding header; None for identity; ValueError if unsupported."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise ValueError(f"stacked content-encoding: {content_encoding}")
    coding = codings[0]
    if coding in ("gzip", "x-gzip"):
        return _Zlib(32 + zlib.MAX_WBITS)  # also accepts a zlib header, as mitmproxy does
    if coding == "deflate":
        return _SniffedDeflate()
    if coding == "br":
        return _brotli_codec()
    if coding == "zstd":
        return _zstd_codec()
    raise ValueError(f"unsupported content-encoding: {content_encoding}")


class StreamDecoder:
    """Decodes one body chunk by chunk within Limits (made by stream_decoder()).

    Once a call raised DecodeAborted every later call raises it again: the body is given up on.
    """

    __slots__ = ("_codec", "_limits", "_spent", "aborted", "consumed", "produced")

    def __init__(self, codec: _Codec, limits: Limits) -> None:
        self._codec = codec
        self._limits = limits
        self._spent = 0.0
        self.consumed = 0
        """Encoded bytes fed so far."""
        self.produced = 0
        """Decoded bytes returned so far."""
        self.aborted: str | None = None
        """Why decoding stopped, once it has."""

    def feed(self, chunk: bytes) -> bytes:
        """Decode the next raw chunk; raises DecodeAborted on a limit or corrupt data."""
        out = bytearray()
        try:
            self._run(chunk, out)
        except DecodeAborted:
            raise
        except Exception as e:
            self.aborted = f"corrupt data: {type(e).__name__}: {e}"
            raise DecodeAborted(self.aborted) from e
        return bytes(out)

    def _run(self, chunk: bytes, out: bytearray) -> None:
        """Decode into ``out``; the codec's own error escapes so decode() can keep what it got."""
        if self.aborted is not None:
            raise DecodeAborted(self.aborted)
        if not chunk:
            return
        limits, codec = self._limits, self._codec
        self.consumed += len(chunk)
        if self.consumed > limits.max_input:
            self._abort(f"more than {limits.max_input} encoded bytes")
        start = time.perf_counter()
        left = limits.max_total_seconds - self._spent
        if left <= 0:
            self._abort(f"over the time budget ({limits.max_total_seconds} s in all)")
        deadline = start + min(limits.max_seconds, left)
        view = memoryview(chunk)
        first = True  # the first step of a call always runs, so decoding always progresses
        try:
            for offset in range(0, len(view), _SLICE):
                data: bytes | memoryview = view[offset : offset + _SLICE]
                while True:
                    if not first and time.perf_counter() > deadline:
                        self._abort(
                            f"over the time budget ({limits.max_seconds} s a call,"
                            f" {limits.max_total_seconds} s in all)"
                        )
                    first = False
                    piece = codec.step(data)
                    data = b""
                    if piece:
                        self.produced += len(piece)
                        if self.produced > limits.max_output:
                            self._abort(f"more than {limits.max_output} decoded bytes")
                        out += piece
                    if codec.members > limits.max_members:
                        self._abort(f"more than {limits.max_members} members/frames")
                    if not codec.busy():
                        break
        finally:
            self._spent += time.perf_counter() - start

    def _abort(self, why: str) -> None:
        self.aborted = why
        raise DecodeAborted(why)


def stream_decoder(content_encoding: str | None, limits: Limits) -> StreamDecoder | None:
    """A decoder for a streamed body; None for identity; ValueError for unknown or stacked codings."""
    codec = _codec(content_encoding)
    return None if codec is None else StreamDecoder(codec, limits)


def decode(raw: bytes, content_encoding: str | None, limits: Limits) -> bytes:
    """A whole buffered body decoded; raises DecodeAborted on a limit, ValueError as stream_decoder().

    Corrupt data gives what was decoded before it (a cut-short body gives what it holds); a
    body that does not decode at all is read as is, as mitmproxy does (servers do mislabel).
    """
    decoder = stream_decoder(content_encoding, limits)
    if decoder is None:
        return raw
    out = bytearray()
    try:
        decoder._run(raw, out)
    except DecodeAborted:
        raise
    except Exception:
        return bytes(out) if out else raw
    return bytes(out)
