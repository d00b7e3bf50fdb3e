"""What differs between the API families: error shape, usage, and hints for upstream errors.

Families: ``chat`` (OpenAI Chat Completions), ``messages`` (Anthropic Messages),
``responses`` (OpenAI Responses), ``run`` (Cloudflare's ``/ai/run``) and ``other``
(embeddings, models, ...). Only ``messages`` has an error shape of its own; the rest
speak OpenAI's.
"""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

ANTHROPIC_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large", 426: "invalid_request_error",
    429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
}  # fmt: skip
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
                429: "rate_limit_error"}  # fmt: skip

GATEWAY_HINTS = {
    2001: "the gateway does not exist: check ACCOUNT_ID and GATEWAY_ID (or use GATEWAY_ID=default)",
    2008: "the compat endpoint wants provider/model names, such as openai/gpt-4o-mini or "
    "anthropic/claude-sonnet-4-5",
    2009: "the gateway requires authentication: set CF_AIG_TOKEN to an AI Gateway token of this account "
    "with the AI Gateway Run permission",
    2019: "the compat endpoint serves chat/completions, embeddings and models only",
    2021: "the account has no credits left for Unified Billing",
}
REST_HINTS = {
    401: "check CLOUDFLARE_API_TOKEN: Cloudflare did not accept it",
    403: "CLOUDFLARE_API_TOKEN lacks a permission: it needs AI Gateway (and Workers AI for @cf/ models)",
    402: "the account has no credits left for Unified Billing",
}

COUNTS = (  # (name in the proxy's records, where each family reports it)
    ("input", ("prompt_tokens", "input_tokens")),
    ("output", ("completion_tokens", "output_tokens")),
    ("total", ("total_tokens",)),
    ("cached", ("cache_read_input_tokens", "prompt_tokens_details.cached_tokens",
                "input_tokens_details.cached_tokens")),
    ("cache_creation", ("cache_creation_input_tokens",)),
    ("reasoning", ("completion_tokens_details.reasoning_tokens", "output_tokens_details.reasoning_tokens")),
)  # fmt: skip


def parse_json(body: bytes) -> Any:
    """A JSON body, or None when it is not JSON (or nested past Python's limit)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def error_body(family: str, status: int, code: str | int | None, message: str) -> bytes:
    """An error in the family's own shape, so each SDK raises its usual exception."""
    if family == "messages":
        kind = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message, "code": code}}
    else:
        kind = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return json.dumps(body).encode()


def cloudflare_error(obj: object, status: int) -> tuple[int, str, str | None] | None:
    """(code, message, hint) of an error Cloudflare itself made, else None.

    The gateway's errors carry an ``error`` array; the REST API's carry the v4 envelope
    (``success: false`` and an ``errors`` array). Provider errors are neither.
    """
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("error"), list):  # the gateway's: hints by Cloudflare's code
        code, message = _first_error(obj["error"], obj)
        return code, message, GATEWAY_HINTS.get(code)
    if obj.get("success") is False and isinstance(obj.get("errors"), list):  # v4: hints by status
        code, message = _first_error(obj["errors"], obj)
        return code, message, REST_HINTS.get(status)
    return None


def _first_error(items: list, obj: dict) -> tuple[int, str]:
    first = next((item for item in items if isinstance(item, dict)), {})
    code = first.get("code")
    return code if type(code) is int else 0, str(first.get("message") or obj.get("message") or "error")


def reshaped(family: str, status: int, body: bytes) -> tuple[bytes, int, str | None] | None:
    """A Cloudflare error body in the family's shape: (body, Cloudflare's code, hint); else None."""
    found = cloudflare_error(parse_json(body), status)
    if found is None:
        return None
    code, message, hint = found
    text = f"{message} (Cloudflare error {code})" + (f": {hint}" if hint else "")
    return error_body(family, status, code, text), code, hint


def _count(usage: dict, path: str) -> int | None:
    value: Any = usage
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value if type(value) is int and value >= 0 else None


def read_usage(usage: object) -> dict[str, int]:
    """Token counts from any family's ``usage`` object, under the proxy's own names."""
    if not isinstance(usage, dict):
        return {}
    out = {}
    for name, paths in COUNTS:
        for path in paths:
            value = _count(usage, path)
            if value is not None:
                out[name] = value
                break
    return out


def usage_of(obj: object) -> dict[str, int]:
    """Usage in a JSON answer or one event of a stream, wherever the family keeps it."""
    if not isinstance(obj, dict):
        return {}
    for holder in (obj, obj.get("message"), obj.get("response"), obj.get("result")):
        if isinstance(holder, dict) and "usage" in holder:
            return read_usage(holder["usage"])
    return {}


def model_of(obj: object) -> str | None:
    """The model an answer (or a stream's event) names, if any."""
    if not isinstance(obj, dict):
        return None
    for holder in (obj, obj.get("message"), obj.get("response")):
        if isinstance(holder, dict) and isinstance(holder.get("model"), str):
            return holder["model"]
    return None


def total(usage: dict[str, int], family: str) -> int | None:
    """The reported total, else the sum (Anthropic reports none and counts cache apart)."""
    if "total" in usage:
        return usage["total"]
    parts = ["input", "output"] + (["cached", "cache_creation"] if family == "messages" else [])
    known = [usage[p] for p in parts if p in usage]
    return sum(known) if known else None


def fix_model(flow: http.HTTPFlow, api: str, meta: dict) -> None:
    """Spell the request's model as its upstream wants it; the log line shows what was sent.

    The REST API wants author/model, while Claude Code and Codex send bare names; the
    gateway's provider routes want bare names. Only a plain JSON object body is rewritten.
    """
    obj = json_object(flow.request)
    if not isinstance(obj.get("model"), str):
        return
    meta["model"] = wanted = model_spelling(obj["model"], meta["family"], api)
    if wanted != obj["model"]:
        obj["model"] = wanted
        flow.request.content = json.dumps(obj, ensure_ascii=False).encode()


def json_object(request: http.Request) -> dict:
    """A plain (not content-encoded) JSON object body, else an empty dict."""
    if request.headers.get("content-encoding") or not request.raw_content:
        return {}
    obj = parse_json(request.raw_content)
    return obj if isinstance(obj, dict) else {}


def model_spelling(model: str, family: str, api: str) -> str:
    """REST: a bare name gets its author; gateway provider routes: the author is dropped."""
    author = {"messages": "anthropic/", "responses": "openai/"}.get(family)
    if not author:
        return model
    if api == "rest":
        return model if "/" in model else author + model
    return model.removeprefix(author)
