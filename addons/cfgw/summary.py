"""One record per finished flow: the log line, the metrics and the flow comment all read it."""

from __future__ import annotations

import time

from mitmproxy import http

from cfgw import families, routes


def outcome(flow: http.HTTPFlow, meta: dict) -> str:
    if flow.error:
        return failure(flow.error.msg)
    return "ok" if meta.get("url") else "local"


def failure(message: str) -> str:
    if message.startswith("Client disconnected"):
        return "client_closed"
    return "killed" if message == "Connection killed." else "upstream_failed"


def record(flow: http.HTTPFlow, meta: dict) -> dict:
    """What the log line, the metrics and the comment say of a flow, as JSON-ready fields."""
    response = flow.response or http.Response.make(0)  # a flow that failed has none
    family = meta.get("family") or routes.family_of(flow.request.path)
    out: dict = {
        "method": flow.request.method,
        "path": meta.get("target", flow.request.path).partition("?")[0],  # the query may hold keys
        "family": family,
        "api": meta.get("api"),
        "upstream": meta.get("url"),
        "status": None if flow.error else response.status_code,
        "outcome": outcome(flow, meta),
        "model": meta.get("model"),
        "stream": bool(meta.get("stream")),
        "duration_ms": round((time.time() - meta["start"]) * 1000),
        "bytes": meta.get("bytes", len(response.raw_content or b"")),
    }
    out.update(token_fields(meta.get("usage") or {}, family))
    out.update(known_fields(flow, meta, response))
    out["answer_model"] = meta.get("answer_model")  # for the metrics' model label only
    return out


def known_fields(flow: http.HTTPFlow, meta: dict, response: http.Response) -> dict:
    """The fields that only some flows have: Cloudflare's headers and code, mitmproxy's error."""
    fields = {
        "cache": response.headers.get("cf-aig-cache-status"),
        "log_id": response.headers.get("cf-aig-log-id"),
        "gateway_code": meta.get("gateway_code"),
        "error": flow.error.msg if flow.error else None,
    }
    return {k: v for k, v in fields.items() if v is not None}


def token_fields(usage: dict[str, int], family: str) -> dict[str, int]:
    out = {f"{kind}_tokens": value for kind, value in usage.items()}
    total = families.total(usage, family)
    if total is not None:
        out["total_tokens"] = total
    return out


def comment(record: dict) -> str:
    """The flow list's comment in mitmweb: model · tokens · time."""
    parts = [record["model"] or record["family"]]
    if "total_tokens" in record:
        parts.append(f"{record['total_tokens']} tok")
    ms = record["duration_ms"]
    parts.append(f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms} ms")
    return " · ".join(parts)
