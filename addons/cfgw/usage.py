"""Model names and token usage from request and response bodies, for every family.

Everything here runs on the hot path of every proxied request, on mitmproxy's event
loop: functions never raise (anything unexpected yields ``None``), parse no more than
needed, and bound the work spent on a compressed body (decoding.Limits), so an odd or
hostile body costs the flow its usage figures, never the proxy its time.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque

from mitmproxy import http

from cfgw import decoding, routes, sse
from cfgw.family import Family, Usage
from cfgw.headers import header

log = logging.getLogger("cf_gateway")


MAX_PARSE = 1 << 20
"""Bodies larger than this (1 MiB) are never json-parsed as a whole."""
_HEAD = 64 << 10  # window for the trailing usage object of a big response body
_TRIES = 8  # literal "model" keys tried from the end before giving up on the cheap path

_WS = b" \t\r\n"
_MODEL_LITERAL = b'"model"'
_COLON = re.compile(rb"\s*:\s*")
# A key that may spell "model" with a \u escape (its letters are U+0064..U+006F), e.g. "mod\u0065l".
_ESCAPED_KEY = re.compile(rb'\\u006[4-9A-Fa-f][^"]{0,30}"\s*:')
_LEADING_WS = re.compile(rb"\s*")
_DECODER = json.JSONDecoder()


def escaped_model_key(body: bytes, start: int = 0) -> bool:
    """Whether a key after ``start`` may spell "model" with escapes such as \\u0065."""
    return _ESCAPED_KEY.search(body, start) is not None


class _Unknown(Exception):
    """Telling whether a key is the root's would cost more than a bounded look: let json decide."""


_MAX_TAIL_PAIRS = 256  # keys after "model" in a real body: a handful (stream, tools, ...)
_MAX_TAIL = 256 << 10  # bytes after "model" parsed (in C) to prove it is the root's: ~10 ms at most
_WS_RUN = re.compile(r"[ \t\r\n]*")


def _top_level_after(
    body: bytes,
    pos: int,
    literal: bytes = _MODEL_LITERAL,
    escaped: re.Pattern[bytes] = _ESCAPED_KEY,
    fast: bool = True,
) -> tuple[object, int, int] | None:
    """If the ``literal`` key (``"model"``) at ``pos`` belongs to the root object, the root's last
    value of that key and its byte span; None when it does not (nested, or not a key at all);
    _Unknown when proving it would take more than a bounded look. ``escaped`` finds a key that
    may spell the same name with escapes. ``fast``: a key with only scalars before it needs no
    proof from the tail (right for any valid JSON body; the tail of an invalid one goes unseen).

    Proof by the tail alone: a key of the root object is preceded by ``{`` or ``,`` and
    followed by ``: value`` then only ``, "key": value`` pairs up to the root's ``}`` and the
    end of the body; a nested key leaves more closing brackets. The tail is parsed with the
    json module (C), so this costs what the keys after ``model`` weigh (usually little:
    openai-python and the Anthropic SDK put ``model`` after ``messages``).
    """
    before = body[max(0, pos - 256) : pos].rstrip(_WS)
    if not before and pos > 256:
        raise _Unknown  # hundreds of bytes of white space before a key: no real client writes that
    if not before.endswith((b"{", b",")):
        return None
    colon = _COLON.match(body, pos + len(literal))
    if colon is None:
        return None
    start = colon.end()
    root = _LEADING_WS.match(body).end()  # type: ignore[union-attr]  # \s* always matches
    if (
        fast
        and body[root : root + 1] == b"{"
        and body.find(b"{", root + 1, pos) == -1
        and body.find(b"[", root + 1, pos) == -1
        and escaped.search(body, start) is None
    ):
        # Only scalars stand between the root's "{" and the key, so it is the root's, and no
        # later key can be another "model" (this is the last literal one, and none is escaped):
        # the value is all that needs parsing (model-first bodies skip the messages entirely).
        head = body[start : start + 4096].decode("utf-8", "ignore")
        try:
            value, end = _DECODER.raw_decode(head)
            return value, start, start + len(head[:end].encode())
        except ValueError:
            pass  # a value longer than the window: the general way below
    if len(body) - start > _MAX_TAIL:
        raise _Unknown
    name = literal[1:-1].decode()
    tail = body[start:].decode("utf-8")
    value, end = _DECODER.raw_decode(tail)
    found, span = value, (start, start + len(tail[:end].encode()))
    n = len(tail)
    i = end
    for _ in range(_MAX_TAIL_PAIRS):
        i = _WS_RUN.match(tail, i).end()  # type: ignore[union-attr]  # * always matches
        if i < n and tail[i] == "}":
            return (found, *span) if not tail[i + 1 :].strip(" \t\r\n") else None
        if i >= n or tail[i] != ",":
            return None
        key, i = _DECODER.raw_decode(tail, _WS_RUN.match(tail, i + 1).end())  # type: ignore[union-attr]
        i = _WS_RUN.match(tail, i).end()  # type: ignore[union-attr]
        if not isinstance(key, str) or i >= n or tail[i] != ":":
            return None
        vstart = _WS_RUN.match(tail, i + 1).end()  # type: ignore[union-attr]
        value, i = _DECODER.raw_decode(tail, vstart)
        if key == name:  # a later duplicate (spelled with escapes): the last one wins, as in json
            found = value
            span = (start + len(tail[:vstart].encode()), start + len(tail[:i].encode()))
    raise _Unknown


def _root_key(
    body: bytes, literal: bytes, escaped: re.Pattern[bytes], fast: bool = True
) -> tuple[object, int, int] | None:
    """The root object's value of the ``literal`` key and its byte span (the last duplicate wins),
    or None when the root has no such key; _Unknown when a bounded look cannot tell (many nested
    keys of that name, a long tail, a key maybe spelled with escapes): then json must decide.
    Raises ValueError or RecursionError on a body that is not JSON where it was looked at."""
    end = len(body)
    for _ in range(_TRIES):
        pos = body.rfind(literal, 0, end)
        if pos == -1:
            break
        found = _top_level_after(body, pos, literal, escaped, fast)
        if found is not None:
            return found
        end = pos
    else:
        raise _Unknown  # many nested keys of that name
    if escaped.search(body):
        raise _Unknown  # no literal key at the top: maybe an escaped one
    return None


def model_span(body: bytes) -> tuple[str, int, int] | None:
    """The root object's ``model`` (a string) and the byte span of its JSON value, or None.

    For a valid JSON body this is what ``json.loads(body)["model"]`` gives (the last
    duplicate wins; a key spelled with escapes counts), or None when a body over MAX_PARSE
    would need more than a bounded look to tell (over 256 KiB or 256 keys after the key,
    hundreds of bytes of white space before it): never a different model, and at the cost
    of the part of the body after the key rather than the whole body. Never raises.
    """
    try:
        try:
            found = _root_key(body, _MODEL_LITERAL, _ESCAPED_KEY)
        except _Unknown:
            return _parsed_model(body)
        if found is not None:
            value, start, stop = found
            return (value, start, stop) if isinstance(value, str) else None
    except (ValueError, RecursionError):
        pass
    return None


def _parsed_model(body: bytes) -> tuple[str, int, int] | None:
    """The slow, exact path for odd bodies: a whole parse (bounded), then the value's span."""
    if len(body) > MAX_PARSE:
        return None
    obj = json.loads(body)
    model = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(model, str):
        return None
    quoted = json.dumps(model).encode()
    spots = [m.end() for m in re.finditer(rb'"model"\s*:\s*' + re.escape(quoted), body)]
    # With an escaped root key ("mod\u0065l") the one literal spot is a nested key's: not the root's.
    if len(spots) == 1 and not escaped_model_key(body):
        return model, spots[0] - len(quoted), spots[0]
    return model, -1, -1  # known, but not where: never rewritten


def request_model(body: bytes) -> str | None:
    """The ``model`` of a JSON request body, or None; never raises."""
    found = model_span(body) if body else None
    return found[0] if found else None


# --- the model name on provider routes ---------------------------------------------------------

PROVIDER_PREFIX = {route: f"{route}/" for route in routes.ROUTE_NAMES if route != "compat"}
"""The compat spelling of a model ('anthropic/claude-sonnet-4-5') that a provider route drops."""


def fix_model_spelling(
    request: http.Request, model: str, route: str, found: tuple[str, int, int] | None = None
) -> str:
    """On a provider route, accept the compat spelling too: drop that one provider prefix from
    the top-level ``model`` and change nothing else in the body (mitmproxy sets Content-Length).
    ``found`` is ``model_span``'s answer for this body, when the caller has it already."""
    prefix = PROVIDER_PREFIX.get(route)
    if prefix is None or not model.startswith(prefix) or len(model) == len(prefix):
        return model
    body = request.raw_content or b""
    found = found or model_span(body)
    if found is None or found[0] != model or found[1] < 0:
        return model  # not where we can rewrite it exactly: the provider will say what it wants
    _, start, stop = found
    bare = model[len(prefix) :]
    # ``content``, not ``raw_content``: only its setter updates Content-Length (the body is plain here).
    request.content = body[:start] + json.dumps(bare, ensure_ascii=False).encode() + body[stop:]
    return bare


# --- usage from a buffered body -----------------------------------------------------------------

USAGE_PARSE_LIMIT = 8 << 20
"""Buffered bodies (raw or decoded) larger than this are not read for usage."""
BODY_LIMITS = decoding.Limits(
    max_output=USAGE_PARSE_LIMIT, max_input=USAGE_PARSE_LIMIT, max_total_seconds=0.01
)
"""A buffered body is decoded on the event loop before the client gets it: a few ms at most."""
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*(?=\{)')


def is_json(headers: http.Headers) -> bool:
    return "json" in (header(headers, b"content-type") or "")


def is_event_stream(response: http.Response) -> bool:
    return sse.is_event_stream(header(response.headers, b"content-type"))


def decoded_body(response: http.Response) -> bytes | None:
    """A buffered JSON body, decoded within BODY_LIMITS; None when absent or too costly."""
    raw = response.raw_content
    if not raw or len(raw) > USAGE_PARSE_LIMIT or not is_json(response.headers):
        return None
    try:
        return decoding.decode(raw, header(response.headers, b"content-encoding"), BODY_LIMITS)
    except (decoding.DecodeAborted, ValueError) as e:
        log.debug(f"cf-gateway: body not read for usage: {e}")
        return None


def parsed(body: bytes) -> object | None:
    """A JSON body parsed; one larger than MAX_PARSE only for its trailing ``usage`` object (every
    family puts usage last), so a big embeddings answer does not cost a whole parse."""
    try:
        if len(body) <= MAX_PARSE:
            return json.loads(body)
        pos = body.rfind(b'"usage"', max(0, len(body) - _HEAD))
        m = _USAGE_KEY.match(body, pos) if pos != -1 else None
        if m is None:
            return None
        obj, _ = _DECODER.raw_decode(body[m.end() : m.end() + _HEAD].decode("utf-8", "replace"))
        return {"usage": obj}
    except (ValueError, RecursionError):  # RecursionError: nesting too deep for the json module
        return None


_USAGE_LITERAL = b'"usage"'
# A key that may spell "usage" with escapes (its letters are U+0061..U+0075), e.g. "us\u0061ge".
_ESCAPED_USAGE_KEY = re.compile(rb'\\u00[67][0-9A-Fa-f][^"]{0,30}"\s*:')


def usage_body(body: bytes) -> object | None:
    """What a family's ``usage_from_json`` reads of a JSON body: ``{"usage": value}`` when the root
    object has a ``usage`` key, else the body as ``parsed`` gives it.

    The usage is read as model_span reads the model: the root's last ``usage`` key, proven from
    the tail alone (always: a body cut short or garbled after the usage gives none), so a long
    answer costs what its usage and the few keys after it weigh, not a parse of the whole text.
    For a valid JSON object it is ``json.loads(body)["usage"]``; when a bounded look cannot
    tell, the body is parsed whole. Never raises.
    """
    root = _LEADING_WS.match(body).end()  # type: ignore[union-attr]  # \s* always matches
    if body[root : root + 1] == b"{":
        try:
            found = _root_key(body, _USAGE_LITERAL, _ESCAPED_USAGE_KEY, fast=False)
            if found is not None:
                return {"usage": found[0]}
        except (_Unknown, ValueError, RecursionError):
            pass  # json decides
    return parsed(body)


def body_usage(family: Family, response: http.Response) -> Usage | None:
    """Usage of a buffered response; never raises."""
    body = decoded_body(response)
    obj = usage_body(body) if body else None
    if obj is None:
        return None
    try:
        return family.usage_from_json(obj)
    except Exception:
        return None


# --- usage from an event stream, chunk by chunk -------------------------------------------------

STREAM_LIMITS = decoding.Limits(max_output=1 << 40, max_input=1 << 40, max_total_seconds=2.0)
"""Streams may be long: what is bounded is the decoder's members and its time per chunk (a few ms)."""


class StreamScanner:
    """Feeds a (possibly compressed) event stream to the family's usage reader as it passes.

    Decoded bytes are used for parsing only; the caller's data is never altered. Anything
    unexpected (an unknown encoding, a decoding limit, an exception) stops the scan for
    this stream only.
    """

    __slots__ = ("decoder", "disabled", "parser", "reader")

    def __init__(self, family: Family, content_encoding: str | None = None) -> None:
        self.parser = sse.SSEParser()
        self.reader = family.stream_usage()
        self.disabled = False
        self.decoder: decoding.StreamDecoder | None = None
        try:
            self.decoder = decoding.stream_decoder(content_encoding, STREAM_LIMITS)
        except ValueError:
            self.disabled = True

    @property
    def usage(self) -> Usage | None:
        return self.reader.usage

    def feed(self, chunk: bytes) -> None:
        if self.disabled or not chunk:
            return
        try:
            data = self.decoder.feed(chunk) if self.decoder is not None else chunk
            for event in self.parser.feed(data):
                self.reader.event(event)
        except Exception as e:
            self.disabled = True
            log.debug(f"cf-gateway: usage scan of a stream stopped: {e.__class__.__name__}")

    def close(self) -> None:
        if self.disabled:
            return
        try:
            for event in self.parser.close():
                self.reader.event(event)
        except Exception:
            self.disabled = True


def recorded_stream_usage(family: Family, body: bytes, complete: bool) -> Usage | None:
    """Usage of a whole (plain) event stream, parsing only the events that can carry it.

    Events are cut out around the family's ``usage_events`` matches (blank line to blank
    line) and read in order, or from the end when the family's last usage event wins; a
    stream that uses CR line ends, or a family without markers, is read whole.
    ``complete``: the last event counts even without its blank line.
    """
    markers = family.usage_events
    if markers is None or b"\r" in body:
        scanner = StreamScanner(family)
        scanner.feed(body)
        if complete:
            scanner.close()
        return scanner.usage
    try:
        if family.last_usage_wins:
            return _last_usage(family, markers, body, complete)
        return _usage_in_order(family, markers, body, complete)
    except Exception as e:
        log.debug(f"cf-gateway: usage of a recorded stream not read: {e.__class__.__name__}")
        return None


def _usage_in_order(family: Family, markers: re.Pattern[bytes], body: bytes, complete: bool) -> Usage | None:
    """The events around each marker, read in order by the family's reader."""
    reader = family.stream_usage()
    done = 0  # events before this offset have been read
    for m in markers.finditer(body):
        if m.start() < done:
            continue
        start, done = _event_around(body, m)
        if done == -1:
            if not complete:
                break  # the last event never ended
            done = len(body)
        for event in sse.parse(body[start:done]):
            reader.event(event)
    return reader.usage


_FIRST_LOOK = 4096
"""Bytes at a stream's end searched first for its last usage event (chat's is the last but one
or two events, a few hundred bytes); the search reaches back twice as far each time it fails."""


def _last_usage(family: Family, markers: re.Pattern[bytes], body: bytes, complete: bool) -> Usage | None:
    """The usage of the last event that carries one. Its marker is looked for back from the
    stream's end, where it is: a search from the start costs a pass over every delta (some 50 µs
    for a 60 KB answer). Should that event carry none (cut short, garbled), the whole stream is
    read in order, as any other family's."""
    window = _FIRST_LOOK
    while not (last := deque(markers.finditer(body, max(0, len(body) - window)), maxlen=1)):
        if window >= len(body):
            return None
        window *= 2
    start = _event_around(body, last[0])[0]
    usage = _usage_in_order(family, markers, body[start:], complete)  # no event after it has a marker
    return usage if usage is not None else _usage_in_order(family, markers, body, complete)


def _event_around(body: bytes, match: re.Match[bytes]) -> tuple[int, int]:
    """The start and end (after its blank line; -1 when none follows) of the event holding ``match``."""
    start = body.rfind(b"\n\n", 0, match.start())
    end = body.find(b"\n\n", match.end())
    return (0 if start == -1 else start + 2), (-1 if end == -1 else end + 2)


# --- the gateway's own errors, in the client's shape --------------------------------------------


def gateway_error(obj: object) -> tuple[int | None, str] | None:
    """(code, message) when ``obj`` is the gateway's own error (its ``error`` is an array)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), list) or not obj["error"]:
        return None
    first = obj["error"][0]
    if not isinstance(first, dict):
        return None
    code = first.get("code")
    message = first.get("message")
    return (code if type(code) is int else None, message if isinstance(message, str) else "Gateway error")


def reshape_gateway_error(response: http.Response, family: Family, reshape: bool) -> int | None:
    """Cloudflare's code when the gateway itself answered with an error; with ``reshape`` the body
    is given the family's error shape (status, headers, code, message and the other fields kept),
    so each SDK's exception names the gateway's message and code."""
    if response.status_code < 400:
        return None
    body = decoded_body(response)
    obj = parsed(body) if body and len(body) <= MAX_PARSE else None
    found = gateway_error(obj)
    if found is None:
        return None
    code, message = found
    if reshape:
        assert isinstance(obj, dict)
        status = response.status_code
        shaped = family.error_body(status, f"{message} (AI Gateway error {code})", code, "gateway_error")
        rest = {k: v for k, v in obj.items() if k not in shaped}
        response.content = json.dumps({**shaped, **rest}, separators=(",", ":")).encode()
    return code
