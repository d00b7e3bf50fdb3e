"""One record per flow: what the event-log line, the JSON log and the metrics are made from.

Field names are stable (they are the JSON log's schema, documented in the README).
Parsing bodies for usage never alters what the client gets: it reads the copy
mitmproxy already holds, and anything unexpected leaves the fields empty.
"""

from __future__ import annotations

import json

from mitmproxy import http

from cfgw.streaming import Recorder
from cfgw.usage import Usage, make_decoder, usage_from_json

META = "cf_gateway"  # key in flow.metadata: small, serialisable facts saved with the flow
USAGE_PARSE_LIMIT = 8 * 1024 * 1024  # do not decode bigger buffered bodies just for usage
# Stop decoding a compressed body past this: the response hook runs before the client gets a
# buffered body, and a small gzip "bomb" would otherwise block the event loop for seconds.
DECODED_LIMIT = 32 * 1024 * 1024

FIELDS = (
    "method",
    "path",
    "upstream",
    "status",
    "model",
    "stream",
    "duration_ms",
    "ttfb_ms",
    "bytes",
    "cache",
    "log_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "error",
)


def _ms(start: float | None, end: float | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, round((end - start) * 1000))


def _decoded(raw: bytes, content_encoding: str | None) -> bytes | None:
    """The body decoded for parsing; None past DECODED_LIMIT or for encodings we cannot decode.

    A body that turns out not to be compressed is read as is, as mitmproxy does; a cut-short
    one gives what it holds.
    """
    try:
        decoder = make_decoder(content_encoding)
    except ValueError:  # stacked or unknown encodings
        return None
    if decoder is None:
        return raw
    out = bytearray()
    try:
        for piece in decoder(raw):  # bounded pieces: stops early on a bomb
            out += piece
            if len(out) > DECODED_LIMIT:
                return None
    except Exception:
        return raw if not out else bytes(out)
    return bytes(out)


def _buffered_usage(response: http.Response) -> Usage | None:
    ctype = response.headers.get("content-type", "")
    raw = response.raw_content
    if "json" not in ctype or not raw or len(raw) > USAGE_PARSE_LIMIT:
        return None
    body = _decoded(raw, response.headers.get("content-encoding"))
    return usage_from_json(body) if body else None


def flow_record(flow: http.HTTPFlow, recorder: Recorder | None) -> dict:
    """Summarise a finished (or failed) flow; never raises on odd bodies."""
    meta = flow.metadata.get(META, {})
    req, resp = flow.request, flow.response
    usage: Usage | None = None
    ttfb_at = resp.timestamp_start if resp else None
    if recorder is not None:
        usage = recorder.scanner.usage
        size: int | None = recorder.delivered
        ttfb_at = recorder.first_chunk_at or ttfb_at
    elif resp is not None and resp.raw_content is not None:
        size = len(resp.raw_content)
        usage = _buffered_usage(resp)
    else:
        size = None
    end = (resp.timestamp_end if resp else None) or (flow.error.timestamp if flow.error else None)
    return {
        "method": req.method,
        "path": meta.get("path", req.path.partition("?")[0]),
        "upstream": meta.get("upstream"),
        "status": resp.status_code if resp else None,
        "model": meta.get("model"),
        "stream": recorder is not None,
        "duration_ms": _ms(req.timestamp_start, end),
        "ttfb_ms": _ms(req.timestamp_end, ttfb_at) if "upstream" in meta else None,  # only upstream's
        "bytes": size,
        "cache": resp.headers.get("cf-aig-cache-status") if resp else None,
        "log_id": resp.headers.get("cf-aig-log-id") if resp else None,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "total_tokens": usage.total if usage else None,
        "error": flow.error.msg if flow.error else None,
    }


def format_text(r: dict) -> str:
    """A compact line for people: fixed order, empty fields left out."""
    parts = [r["method"], r["path"]]
    if r["upstream"]:
        parts += ["->", r["upstream"]]
    parts.append(str(r["status"]) if r["status"] is not None else "failed")
    if r["duration_ms"] is not None:
        parts.append(f"{r['duration_ms']}ms")
    if r["ttfb_ms"] is not None:
        parts.append(f"ttfb={r['ttfb_ms']}ms")
    if r["bytes"] is not None:
        parts.append(f"{r['bytes']}B")
    if r["model"]:
        parts.append(f"model={r['model']}")
    if r["stream"]:
        parts.append("stream")
    if r["cache"]:
        parts.append(f"cache={r['cache']}")
    if r["log_id"]:
        parts.append(f"log_id={r['log_id']}")
    if r["total_tokens"] is not None:
        parts.append(f"tokens={r['prompt_tokens']}/{r['completion_tokens']}/{r['total_tokens']}")
    if r["error"]:
        parts.append(f"error={r['error']!r}")
    return " ".join(parts)


def format_json(r: dict) -> str:
    return json.dumps(r, separators=(",", ":"))


def flow_comment(r: dict) -> str:
    """Short text for mitmweb's flow list, e.g. 'openai/gpt-4o-mini · 18 tok · 1.2 s'."""
    parts = [r["model"] or r["path"]]
    if r["total_tokens"] is not None:
        parts.append(f"{r['total_tokens']} tok")
    if r["duration_ms"] is not None:
        parts.append(f"{r['duration_ms'] / 1000:.1f} s")
    return " · ".join(parts)
