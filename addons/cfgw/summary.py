"""One record per flow: what the log line, the JSON log, the metrics and the flow comment read.

Who failed, and what the client got, is decided here once per flow (``outcome`` and
``status``), so the log line, the metrics and the comment cannot disagree. Field names
are stable: they are the JSON log's schema, documented in the README. Parsing bodies
for usage never alters what the client gets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from mitmproxy import http
from mitmproxy.connection import ConnectionState

from cfgw.families import BY_NAME
from cfgw.family import Usage
from cfgw.flowinfo import FlowInfo
from cfgw.headers import header
from cfgw.logs import printable
from cfgw.usage import body_usage


@dataclass(slots=True)  # not frozen: a frozen __init__ sets each of its 22 fields the slow way
class FlowRecord:
    method: str
    path: str
    family: str
    route: str | None
    upstream: str | None
    status: int | None
    """What the client got: the response's status, mitmproxy's own error status, or None."""
    outcome: str
    """'ok', 'local' (answered by the proxy), 'client_closed', 'upstream_failed' or 'failed'."""
    model: str | None
    stream: bool
    duration_ms: int | None
    ttfb_ms: int | None
    bytes: int | None
    cache: str | None
    log_id: str | None
    prompt_tokens: int | None
    """Input tokens, whatever the family calls them (prompt_tokens, input_tokens)."""
    completion_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    cache_creation_tokens: int | None
    reasoning_tokens: int | None
    gateway_code: int | None
    error: str | None


def _ms(start: float | None, end: float | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, round((end - start) * 1000))


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
    return flow.error is not None and "client" in flow.error.msg.lower()


def outcome_of(flow: http.HTTPFlow, info: FlowInfo) -> tuple[str, int | None]:
    """(outcome, status the client got), decided once for every reader of the record."""
    resp = flow.response
    if flow.error is None:
        return ("local" if info.local else "ok"), resp.status_code if resp else None
    streamed = info.recorder is not None and resp is not None
    if client_went_away(flow):
        return "client_closed", resp.status_code if streamed and resp else None
    if streamed and resp is not None:
        return "upstream_failed", resp.status_code  # the headers went out; the body broke off
    if "body_size_limit" in flow.error.msg:
        # mitmproxy refused the body itself: a request's with 413, a response's with 502
        return "failed", 413 if flow.error.msg.startswith("Request") else 502
    # mitmproxy answers the client with its own 502 when the upstream fails before the answer
    # went out, even if the upstream's status line had arrived.
    return ("upstream_failed" if info.upstream else "failed"), 502


def flow_record(flow: http.HTTPFlow, info: FlowInfo) -> FlowRecord:
    """Summarise a finished (or failed) flow; never raises on odd bodies."""
    req, resp, recorder = flow.request, flow.response, info.recorder
    usage: Usage | None = None
    ttfb_at = resp.timestamp_start if resp else None
    size: int | None = None
    if recorder is not None:
        usage = recorder.usage
        size = recorder.delivered
        ttfb_at = recorder.first_chunk_at or ttfb_at
    elif resp is not None and resp.raw_content is not None:
        size = len(resp.raw_content)
        if info.upstream and not flow.error:
            usage = body_usage(BY_NAME[info.family], resp)
    outcome, status = outcome_of(flow, info)
    end = (resp.timestamp_end if resp else None) or (flow.error.timestamp if flow.error else None)
    return FlowRecord(
        method=req.method,
        path=info.path,
        family=info.family,
        route=info.destination.route if info.upstream and info.destination else None,
        upstream=info.upstream,
        status=status,
        outcome=outcome,
        model=info.model,
        stream=recorder is not None,
        duration_ms=_ms(req.timestamp_start, end),
        ttfb_ms=_ms(req.timestamp_end, ttfb_at) if info.upstream and resp else None,  # only upstream's
        bytes=size,
        cache=header(resp.headers, b"cf-aig-cache-status") if resp else None,
        log_id=header(resp.headers, b"cf-aig-log-id") if resp else None,
        prompt_tokens=usage.input_tokens if usage else None,
        completion_tokens=usage.output_tokens if usage else None,
        total_tokens=usage.total if usage else None,
        cached_tokens=usage.cached_tokens if usage else None,
        cache_creation_tokens=usage.cache_creation_tokens if usage else None,
        reasoning_tokens=usage.reasoning_tokens if usage else None,
        gateway_code=info.gateway_code,
        error=flow.error.msg if flow.error else None,
    )


def tokens_text(r: FlowRecord) -> str | None:
    """'12 in/34 out', '3 in' (embeddings), '46 total' (only a total); extras in parentheses."""
    parts = [
        f"{n} {label}"
        for n, label in ((r.prompt_tokens, "in"), (r.completion_tokens, "out"))
        if n is not None
    ]
    if not parts and r.total_tokens is not None:
        parts.append(f"{r.total_tokens} total")
    if not parts:
        return None
    extras = [
        f"{label} {n}"
        for n, label in (
            (r.cached_tokens, "cached"),
            (r.cache_creation_tokens, "cache-write"),
            (r.reasoning_tokens, "reasoning"),
        )
        if n
    ]
    return "/".join(parts) + (f" ({', '.join(extras)})" if extras else "")


def format_text(r: FlowRecord) -> str:
    """A compact line for people: fixed order, empty fields left out, control characters escaped."""
    parts = [printable(r.method), printable(r.path), r.family]
    if r.upstream:
        parts += ["->", f"{r.route}", printable(r.upstream)]
    parts.append(str(r.status) if r.status is not None else "-")
    if r.outcome not in ("ok", "local"):
        parts.append(r.outcome)
    if r.duration_ms is not None:
        parts.append(f"{r.duration_ms}ms")
    if r.ttfb_ms is not None:
        parts.append(f"ttfb={r.ttfb_ms}ms")
    if r.bytes is not None:
        parts.append(f"{r.bytes}B")
    if r.model:
        parts.append(f"model={printable(r.model)}")
    if r.stream:
        parts.append("stream")
    if r.cache:
        parts.append(f"cache={printable(r.cache)}")
    if r.log_id:
        parts.append(f"log_id={printable(r.log_id)}")
    tokens = tokens_text(r)
    if tokens:
        parts.append(f"tokens={tokens}")
    if r.gateway_code is not None:
        parts.append(f"gateway_code={r.gateway_code}")
    if r.error:
        parts.append(f"error={printable(repr(r.error))}")
    return " ".join(parts)


def format_json(r: FlowRecord) -> str:
    """One JSON object (json.dumps escapes every control character)."""
    return json.dumps(asdict(r), separators=(",", ":"))


def duration_text(ms: int) -> str:
    """'18 ms' below a second, '1.2 s' above."""
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def flow_comment(r: FlowRecord) -> str:
    """Short text for mitmweb's flow list, e.g. 'gpt-4o-mini · 18 tok · 1.2 s'."""
    parts = [r.model or r.path]
    if r.total_tokens is not None:
        parts.append(f"{r.total_tokens} tok")
    if r.duration_ms is not None:
        parts.append(duration_text(r.duration_ms))
    return " · ".join(parts)
