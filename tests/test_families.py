"""Families: error shapes, Cloudflare's errors reshaped with hints, usage, and model spelling."""

from __future__ import annotations

import json

import pytest

from cfgw import families
from tests.flows import reverse_flow


def gateway_error(code: int, message: str = "Invalid provider") -> bytes:
    return json.dumps(
        {"success": False, "result": [], "messages": [], "error": [{"code": code, "message": message}],
         "name": "AiGatewayError", "httpCode": 400, "internalCode": code, "message": message}
    ).encode()  # fmt: skip


def v4_error(code: int = 10000, message: str = "Authentication error") -> bytes:
    body = {"result": None, "success": False, "errors": [{"code": code, "message": message}], "messages": []}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (503, "overloaded_error")],
)
def test_messages_error_shape(status, kind):
    body = json.loads(families.error_body("messages", status, "some_code", "it failed"))
    assert body == {"type": "error", "error": {"type": kind, "message": "it failed", "code": "some_code"}}


@pytest.mark.parametrize("family", ["chat", "responses", "run", "other"])
@pytest.mark.parametrize(
    ("status", "kind"), [(400, "invalid_request_error"), (401, "authentication_error"), (502, "server_error")]
)
def test_openai_error_shape_for_every_other_family(family, status, kind):
    body = json.loads(families.error_body(family, status, "some_code", "it failed"))
    assert body == {"error": {"message": "it failed", "type": kind, "param": None, "code": "some_code"}}


def test_gateway_2008_says_provider_and_model():
    body, code, hint = families.reshaped("chat", 400, gateway_error(2008))
    message = json.loads(body)["error"]["message"]
    assert code == 2008 and "provider/model" in hint
    assert message.startswith("Invalid provider (Cloudflare error 2008): ") and hint in message


def test_gateway_2019_names_what_compat_serves():
    body, _, hint = families.reshaped("responses", 400, gateway_error(2019, "not supported"))
    assert all(word in hint for word in ("chat/completions", "embeddings", "models"))
    assert json.loads(body)["error"]["code"] == 2019


def test_gateway_error_takes_the_messages_shape():
    body, _, _ = families.reshaped("messages", 401, gateway_error(2009, "Unauthorized"))
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "authentication_error"
    assert "CF_AIG_TOKEN" in error["error"]["message"]


def test_gateway_error_without_a_known_code_has_no_hint():
    body, code, hint = families.reshaped("chat", 429, gateway_error(2003, "Rate limited"))
    assert (code, hint) == (2003, None)
    assert json.loads(body)["error"]["message"] == "Rate limited (Cloudflare error 2003)"


@pytest.mark.parametrize(
    ("status", "words"),
    [(401, "CLOUDFLARE_API_TOKEN"), (403, "lacks a permission"), (402, "no credits")],
)
def test_rest_envelope_hints_by_status(status, words):
    body, code, hint = families.reshaped("chat", status, v4_error())
    assert code == 10000 and words in hint
    assert json.loads(body)["error"]["message"].startswith("Authentication error (Cloudflare error 10000): ")


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}',  # the provider's
        b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}',
        b"error code: 1010",
        b"\xff\xfe",
        b"[]",
    ],
)
def test_other_errors_pass_through(body):
    assert families.reshaped("chat", 400, body) is None


USAGE = [
    (
        {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
                   "prompt_tokens_details": {"cached_tokens": 3},
                   "completion_tokens_details": {"reasoning_tokens": 2}}},
        {"input": 10, "output": 5, "total": 15, "cached": 3, "reasoning": 2},
    ),
    (
        {"usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 3,
                   "cache_creation_input_tokens": 4}},
        {"input": 10, "output": 5, "cached": 3, "cache_creation": 4},
    ),
    (
        {"usage": {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
                   "input_tokens_details": {"cached_tokens": 3},
                   "output_tokens_details": {"reasoning_tokens": 2}}},
        {"input": 10, "output": 5, "total": 15, "cached": 3, "reasoning": 2},
    ),
    ({"result": {"response": "hi", "usage": {"prompt_tokens": 7, "completion_tokens": 1}}},
     {"input": 7, "output": 1}),
    ({"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}},
     {"input": 9, "output": 1}),
    ({"type": "message_delta", "usage": {"output_tokens": 12}}, {"output": 12}),
    ({"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 6}}},
     {"input": 4, "output": 6}),
    ({"object": "chat.completion.chunk", "choices": [], "usage": None}, {}),
    ({"usage": {"prompt_tokens": True, "completion_tokens": -1, "total_tokens": "3"}}, {}),
]  # fmt: skip


@pytest.mark.parametrize(("obj", "usage"), USAGE)
def test_usage_from_every_family(obj, usage):
    assert families.usage_of(obj) == usage


@pytest.mark.parametrize(
    ("obj", "model"),
    [
        ({"model": "gpt-4o"}, "gpt-4o"),
        ({"type": "message_start", "message": {"model": "claude-x"}}, "claude-x"),
        ({"type": "response.created", "response": {"model": "gpt-5"}}, "gpt-5"),
        ({"model": 3}, None),
        ([], None),
    ],
)
def test_model_of(obj, model):
    assert families.model_of(obj) == model


def test_total_adds_anthropic_cache_counts():
    usage = {"input": 10, "output": 5, "cached": 3, "cache_creation": 4}
    assert families.total(usage, "messages") == 22
    assert families.total(usage, "chat") == 15
    assert families.total({"total": 99, "input": 1}, "chat") == 99
    assert families.total({}, "chat") is None


MODELS = [
    ("rest", "messages", "claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"),
    ("rest", "responses", "gpt-5", "openai/gpt-5"),
    ("rest", "messages", "anthropic/claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"),
    ("rest", "chat", "gpt-4o", "gpt-4o"),
    ("gateway", "messages", "anthropic/claude-sonnet-4-5", "claude-sonnet-4-5"),
    ("gateway", "responses", "openai/gpt-5", "gpt-5"),
    ("gateway", "messages", "claude-sonnet-4-5", "claude-sonnet-4-5"),
    ("gateway", "chat", "openai/gpt-4o", "openai/gpt-4o"),
]


@pytest.mark.parametrize(("api", "family", "sent", "wanted"), MODELS)
def test_fix_model(api, family, sent, wanted):
    f = reverse_flow(body={"model": sent, "max_tokens": 5, "note": "é"})
    meta = {"family": family}
    families.fix_model(f, api, meta)
    assert json.loads(f.request.content) == {"model": wanted, "max_tokens": 5, "note": "é"}
    assert meta["model"] == wanted
    assert f.request.headers["content-length"] == str(len(f.request.raw_content))


@pytest.mark.parametrize("headers", [{"content-encoding": "gzip"}, {}], ids=["compressed", "not-json"])
def test_fix_model_leaves_other_bodies_alone(headers):
    raw = b'{"model": "claude-x"}' if headers else b"model=claude-x"
    f = reverse_flow(body=raw, headers=headers)
    meta = {"family": "messages"}
    families.fix_model(f, "rest", meta)
    assert f.request.raw_content == raw and "model" not in meta
