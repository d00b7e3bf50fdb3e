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

from mitmproxy import http

from cfgw import decoding, sse
from cfgw.family import Family, Usage

log = logging.getLogger("cf_gateway")


MAX_PARSE = 1 << 20
"""Bodies larger than this (1 MiB) are never json-parsed as a whole."""
_HEAD = 64 << 10  # window scanned by the regex fast paths

_MODEL_KEY = re.compile(rb'[{,]\s*"model"\s*:\s*"([^"\\]{1,200})"')
_MODEL_ANY = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
_OBJ_START = re.compile(rb"\s*\{")


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


# --- the model name on provider routes ---------------------------------------------------------

PROVIDER_PREFIX = {"anthropic": "anthropic/", "openai": "openai/"}
"""The compat spelling of a model ('anthropic/claude-sonnet-4-5') that a provider route drops."""


def fix_model_spelling(request: http.Request, model: str, route: str) -> str:
    """On a provider route, accept the compat spelling too: drop that one provider prefix from
    the top-level ``model`` and change nothing else in the body (mitmproxy sets Content-Length)."""
    prefix = PROVIDER_PREFIX.get(route)
    if prefix is None or not model.startswith(prefix) or len(model) == len(prefix):
        return model
    body = request.raw_content or b""
    quoted = json.dumps(model).encode()
    spots = [m for m in re.finditer(rb'"model"\s*:\s*' + re.escape(quoted), body)]
    if len(spots) != 1:
        return model  # ambiguous (the same value nested too): leave it for the provider to refuse
    m = spots[0]
    value_at = m.end() - len(quoted)
    request.raw_content = body[:value_at] + json.dumps(model[len(prefix) :]).encode() + body[m.end() :]
    return model[len(prefix) :]


# --- usage from a buffered body -----------------------------------------------------------------

USAGE_PARSE_LIMIT = 8 << 20
"""Buffered bodies (raw or decoded) larger than this are not read for usage."""
BODY_LIMITS = decoding.Limits(
    max_output=USAGE_PARSE_LIMIT, max_input=USAGE_PARSE_LIMIT, max_total_seconds=0.01
)
"""A buffered body is decoded on the event loop before the client gets it: a few ms at most."""
_USAGE_KEY = re.compile(rb'"usage"\s*:\s*(?=\{)')


def is_json(headers: http.Headers) -> bool:
    return "json" in headers.get("content-type", "")


def is_event_stream(response: http.Response) -> bool:
    return sse.is_event_stream(response.headers.get("content-type"))


def decoded_body(response: http.Response) -> bytes | None:
    """A buffered JSON body, decoded within BODY_LIMITS; None when absent or too costly."""
    raw = response.raw_content
    if not raw or len(raw) > USAGE_PARSE_LIMIT or not is_json(response.headers):
        return None
    try:
        return decoding.decode(raw, response.headers.get("content-encoding"), BODY_LIMITS)
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
        obj, _ = json.JSONDecoder().raw_decode(body[m.end() : m.end() + _HEAD].decode("utf-8", "replace"))
        return {"usage": obj}
    except ValueError:
        return None


def body_usage(family: Family, response: http.Response) -> Usage | None:
    """Usage of a buffered response; never raises."""
    body = decoded_body(response)
    obj = parsed(body) if body else None
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
