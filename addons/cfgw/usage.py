"""Cheap, defensive extraction of model names and token usage from OpenAI-style bodies.

Everything here runs on the hot path of every proxied request: functions never
raise (anything unexpected yields ``None``) and avoid parsing more than needed.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_LINE",
    "MAX_PARSE",
    "SSEUsageScanner",
    "Usage",
    "request_model",
    "usage_from_json",
]

MAX_PARSE = 1 << 20
"""Bodies larger than this (1 MiB) are never json-parsed as a whole."""
MAX_LINE = 1 << 20
"""SSE lines longer than this (1 MiB) are dropped by the scanner."""
_HEAD = 64 << 10  # window scanned by the regex fast paths
_PIECE = 256 << 10  # max decompressed bytes produced per decompressor call

_MODEL_KEY = re.compile(rb'[{,]\s*"model"\s*:\s*"([^"\\]{1,200})"')
_MODEL_ANY = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_OBJ_START = re.compile(rb"\s*\{")
_USAGE_VAL = re.compile(rb'"usage"\s*:\s*(?=\{)')


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one response; fields are None when the provider did not report them."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    @property
    def total(self) -> int | None:
        """total_tokens, else the sum of what is known, because some providers omit the total."""
        if self.total_tokens is not None:
            return self.total_tokens
        if self.prompt_tokens is None and self.completion_tokens is None:
            return None
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)

    @classmethod
    def from_obj(cls, obj: Any) -> Usage | None:
        """Build from a parsed ``usage`` object; None unless it holds at least one count."""
        if not isinstance(obj, dict):
            return None
        prompt = _count(obj.get("prompt_tokens"))
        if prompt is None:  # Responses-API style names, as a fallback only
            prompt = _count(obj.get("input_tokens"))
        completion = _count(obj.get("completion_tokens"))
        if completion is None:
            completion = _count(obj.get("output_tokens"))
        total = _count(obj.get("total_tokens"))
        if prompt is None and completion is None and total is None:
            return None
        return cls(prompt, completion, total)


def _count(v: Any) -> int | None:
    """A token count must be a non-negative int (bool and float are rejected)."""
    return v if type(v) is int and v >= 0 else None


def _match_str(m: re.Match[bytes] | None) -> str | None:
    """Decode a regex-captured model name; None when absent or not UTF-8."""
    if m is None:
        return None
    try:
        return m.group(1).decode()
    except UnicodeDecodeError:
        return None


def _model_fast(body: bytes) -> str | None:
    """A top-level ``"model": "..."`` that precedes any nested object/array, else None.

    Only text before the first nested ``{``/``[`` is considered, so a match is a
    key of the outer object; the remainder of the body is not validated.
    """
    start = _OBJ_START.match(body)
    if start is None:
        return None
    end = min(len(body), _HEAD)
    i = body.find(b"{", start.end(), end)
    if i != -1:
        end = i
    i = body.find(b"[", start.end(), end)
    if i != -1:
        end = i
    return _match_str(_MODEL_KEY.search(body, start.end() - 1, end))


def _find_model(body: bytes, start: int, end: int) -> re.Match[bytes] | None:
    """First ``"model": "..."`` in body[start:end]; find() skips ahead faster than re.search."""
    while (i := body.find(b'"model"', start, end)) != -1:
        m = _MODEL_ANY.match(body, i, end)
        if m is not None:
            return m
        start = i + 1
    return None


def request_model(body: bytes) -> str | None:
    """The ``model`` of an OpenAI-style JSON request body, or None; never raises."""
    try:
        if not body:
            return None
        model = _model_fast(body)
        if model is not None:
            return model
        if len(body) > MAX_PARSE:
            # Too big to parse: best-effort regex at the head, then the tail
            # (openai-python serializes ``messages`` before ``model``).
            return _match_str(_find_model(body, 0, _HEAD) or _find_model(body, len(body) - _HEAD, len(body)))
        obj = json.loads(body)
        if isinstance(obj, dict):
            model = obj.get("model")
            if isinstance(model, str):
                return model
    except Exception:
        pass
    return None


def _usage_near(data: bytes, pos: int) -> Usage | None:
    """Parse the ``usage`` object whose key starts at ``pos``; None if it is not one."""
    m = _USAGE_VAL.match(data, pos)
    if m is None:
        return None
    text = data[m.end() : m.end() + _HEAD].decode("utf-8", "replace")
    obj, _ = json.JSONDecoder().raw_decode(text)
    return Usage.from_obj(obj)


def usage_from_json(body: bytes) -> Usage | None:
    """Usage from a chat.completion/embeddings JSON body (already decoded); never raises."""
    try:
        if not body:
            return None
        if len(body) > _HEAD:
            # Large (e.g. embeddings) responses: ``usage`` is the last key in
            # OpenAI's layout, so parse only that object near the end.
            pos = body.rfind(b'"usage"', max(0, len(body) - _HEAD))
            if pos != -1:
                usage = _usage_near(body, pos)
                if usage is not None:
                    return usage
            if len(body) > MAX_PARSE:
                return None
        obj = json.loads(body)
        if isinstance(obj, dict):
            return Usage.from_obj(obj.get("usage"))
    except Exception:
        pass
    return None


# --- streaming decompression -------------------------------------------------

_Decoder = Callable[[bytes], Iterator[bytes]]


def _zlib_decoder(wbits: int) -> _Decoder:
    """Incremental zlib/gzip decoder with bounded output per step (bomb-safe)."""
    d = zlib.decompressobj(wbits)

    def feed(data: bytes) -> Iterator[bytes]:
        nonlocal d
        while data:
            yield d.decompress(data, _PIECE)
            while d.unconsumed_tail and not d.eof:  # at a member's end CPython keeps the tail set
                yield d.decompress(d.unconsumed_tail, _PIECE)
            data = d.unused_data if d.eof else b""
            if data:  # concatenated gzip members
                d = zlib.decompressobj(wbits)

    return feed


def _deflate_decoder() -> _Decoder:
    """HTTP "deflate" is zlib-wrapped but some servers send raw deflate: sniff the header."""
    head = b""
    inner: _Decoder | None = None

    def feed(data: bytes) -> Iterator[bytes]:
        nonlocal head, inner
        if inner is None:
            head += data
            if len(head) < 2:
                return
            zlib_wrapped = (head[0] & 0x0F) == 8 and ((head[0] << 8) | head[1]) % 31 == 0
            inner = _zlib_decoder(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
            data, head = head, b""
        yield from inner(data)

    return feed


def _brotli_decoder() -> _Decoder:
    """Incremental brotli decoder (``brotli`` ships with mitmproxy; imported lazily)."""
    import brotli

    d = brotli.Decompressor()
    if not hasattr(d, "can_accept_more_data"):  # brotli < 1.2: no output limit

        def feed_old(data: bytes) -> Iterator[bytes]:
            if data:
                yield d.process(data)

        return feed_old

    def feed(data: bytes) -> Iterator[bytes]:
        if not data:
            return
        yield d.process(data, output_buffer_limit=_PIECE)
        while not d.can_accept_more_data():
            yield d.process(b"", output_buffer_limit=_PIECE)

    return feed


def _zstd_decoder() -> _Decoder:
    """Incremental zstd decoder: stdlib/backports.zstd (mitmproxy 12) or zstandard (11)."""
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python 3.14+
    except ImportError:
        try:
            from backports import zstd  # type: ignore[import-not-found,no-redef]
        except ImportError:
            zstd = None
    if zstd is None:
        import zstandard

        z = zstandard.ZstdDecompressor()
        dobj = z.decompressobj()

        def feed_zstandard(data: bytes) -> Iterator[bytes]:
            nonlocal dobj
            while data:
                yield dobj.decompress(data)
                data = dobj.unused_data if getattr(dobj, "eof", False) else b""
                if data:  # next frame
                    dobj = z.decompressobj()

        return feed_zstandard

    d = zstd.ZstdDecompressor()

    def feed(data: bytes) -> Iterator[bytes]:
        nonlocal d
        while data:
            yield d.decompress(data, _PIECE)
            while not d.needs_input and not d.eof:
                yield d.decompress(b"", _PIECE)
            data = d.unused_data if d.eof else b""
            if data:  # next frame
                d = zstd.ZstdDecompressor()

    return feed


def make_decoder(content_encoding: str | None) -> _Decoder | None:
    """Decoder for a Content-Encoding header; identity -> None; unsupported -> ValueError."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise ValueError(f"stacked content-encoding: {content_encoding}")
    c = codings[0]
    if c in ("gzip", "x-gzip"):
        return _zlib_decoder(16 + zlib.MAX_WBITS)
    if c == "deflate":
        return _deflate_decoder()
    if c == "br":
        return _brotli_decoder()
    if c == "zstd":
        return _zstd_decoder()
    raise ValueError(f"unsupported content-encoding: {content_encoding}")


# --- SSE scanning --------------------------------------------------------------


MAX_DECODED_PER_CHUNK = 16 << 20
"""Decoded bytes one raw chunk may expand to before the scanner gives up (chunks are ~16 KiB)."""


class SSEUsageScanner:
    """Incrementally scans a (possibly compressed) ``text/event-stream`` body for usage.

    Feed it chunks as they pass through the proxy; it keeps only the current
    partial line and json-parses only ``data:`` lines that carry a ``usage``
    object (plus lines naming the model until one was found). Decompressed
    bytes are used for parsing only; the caller's data is never altered.
    Empty chunks are ignored (mitmproxy passes ``b""`` at end of stream, but
    empty HTTP/2 DATA frames can occur mid-stream too); call ``close()`` at
    end of stream to also process a last line that lacks its trailing newline.
    """

    __slots__ = (
        "_decoder",
        "_partial",
        "_skipping",
        "disabled",
        "done",
        "events",
        "model",
        "usage",
    )

    def __init__(self, content_encoding: str | None = None) -> None:
        """Unknown or unavailable encodings disable the scanner instead of failing the flow."""
        self.usage: Usage | None = None
        """The last ``usage`` object seen in a data event (OpenAI's include_usage chunk)."""
        self.model: str | None = None
        """The model named in the chunks (the first one found)."""
        self.events: int = 0
        """Number of ``data:`` events, not counting the final ``[DONE]``."""
        self.done: bool = False
        """Whether ``data: [DONE]`` was seen."""
        self.disabled: bool = False
        """Set when the encoding is unsupported or decoding failed; feed() then ignores input."""
        self._partial = bytearray()
        self._skipping = False  # inside an over-long line that is being dropped
        self._decoder: _Decoder | None = None
        try:
            self._decoder = make_decoder(content_encoding)
        except Exception:
            self.disabled = True

    def feed(self, chunk: bytes) -> None:
        """Consume the next chunk of the raw (still encoded) body; never raises."""
        if self.disabled or not chunk:
            return
        try:
            if self._decoder is None:
                self._scan(chunk)
            else:
                budget = MAX_DECODED_PER_CHUNK
                for piece in self._decoder(chunk):
                    budget -= len(piece)
                    if budget < 0:  # a compression bomb: stop parsing rather than block the proxy
                        self.disabled = True
                        self._partial = bytearray()
                        return
                    if piece:
                        self._scan(piece)
        except Exception:
            self.disabled = True
            self._partial = bytearray()

    def close(self) -> None:
        """End of stream: treat a pending unterminated line as complete; never raises."""
        if self.disabled:
            return
        try:
            if self._partial and not self._skipping:
                self._line(bytes(self._partial))
        except Exception:
            self.disabled = True
        self._partial = bytearray()
        self._skipping = False

    def _scan(self, data: bytes) -> None:
        """Split decoded bytes into lines, joining with the partial line of the previous call."""
        nl = data.find(b"\n")
        if nl == -1:
            self._keep(data)
            return
        if self._skipping:
            self._skipping = False
        elif self._partial:
            if len(self._partial) + nl <= MAX_LINE:
                self._partial += data[:nl]
                self._line(bytes(self._partial))
        elif nl <= MAX_LINE:
            self._line(data[:nl])
        self._partial.clear()
        start = nl + 1
        find = data.find
        line_fn = self._line
        while (nl := find(b"\n", start)) != -1:
            if nl - start <= MAX_LINE:
                line_fn(data[start:nl])
            start = nl + 1
        if start < len(data):
            self._keep(data[start:])

    def _keep(self, rest: bytes) -> None:
        """Buffer an unfinished line; drop it once it exceeds MAX_LINE (memory bound)."""
        if self._skipping:
            return
        if len(self._partial) + len(rest) > MAX_LINE:
            self._partial.clear()
            self._skipping = True
        else:
            self._partial += rest

    def _line(self, line: bytes) -> None:
        """Handle one complete line; only ``data:`` lines matter."""
        if not line.startswith(b"data:"):
            return
        value = line[5:].strip()
        if value == b"[DONE]":
            self.done = True
            return
        self.events += 1
        want_usage = False
        pos = value.rfind(b'"usage"')
        if pos != -1:
            # include_usage streams send ``"usage":null`` on every delta; skip those.
            want_usage = _USAGE_VAL.match(value, pos) is not None
        if not want_usage and (self.model is not None or b'"model"' not in value):
            return
        try:
            obj = json.loads(value)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        if self.model is None:
            model = obj.get("model")
            if isinstance(model, str) and model:
                self.model = model
        if want_usage:
            usage = Usage.from_obj(obj.get("usage"))
            if usage is not None:
                self.usage = usage
