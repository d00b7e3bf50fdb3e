"""The addon's own answers (cfgw.replies): JSON, and errors in the shape each client family's SDK reads.

How the anthropic SDK reads the Messages shape is tested with the family (test_family_messages).
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from cfgw.families import BY_NAME
from cfgw.replies import SERVER, error_response, json_response, response

CHAT, MESSAGES, RESPONSES = BY_NAME["chat"], BY_NAME["messages"], BY_NAME["responses"]


def test_json_response():
    r = json_response(200, {"status": "ok", "n": [1, 2]})
    assert r.status_code == 200
    assert r.content == b'{"status":"ok","n":[1,2]}'  # compact
    assert r.headers["content-type"] == "application/json"
    assert r.headers["server"] == SERVER
    assert r.headers["content-length"] == str(len(r.content))


def test_a_plain_response_for_head_has_the_gets_length_and_no_body():
    r = response(200, b"# metrics\n", {"content-type": "text/plain"}, head=True)
    assert (r.status_code, r.raw_content, r.headers["content-length"]) == (200, b"", "10")
    assert r.headers["content-type"] == "text/plain" and "server" not in r.headers


def test_extra_headers_are_added():
    r = json_response(401, {}, {"www-authenticate": 'Bearer realm="cf-gateway"'})
    assert r.headers["www-authenticate"] == 'Bearer realm="cf-gateway"'
    assert r.headers["content-type"] == "application/json"


@pytest.mark.parametrize("family", [CHAT, MESSAGES, RESPONSES])
def test_head_answers_have_no_body_but_the_gets_length(family):
    get = error_response(family, 401, "Missing proxy key.", "invalid_proxy_key")
    head = error_response(family, 401, "Missing proxy key.", "invalid_proxy_key", head=True)
    assert head.raw_content == b""
    assert head.headers["content-length"] == str(len(get.content)) != "0"
    assert head.headers["content-type"] == "application/json"


@pytest.mark.parametrize("family", [CHAT, RESPONSES])
def test_error_response_has_openai_shape(family):
    r = error_response(family, 400, "Refused request path: it has a dot segment.", "invalid_path")
    assert r.status_code == 400
    assert json.loads(r.content) == {
        "error": {
            "message": "Refused request path: it has a dot segment.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_path",
        }
    }


@pytest.mark.parametrize(
    ("status", "openai_type", "anthropic_type"),
    [
        (400, "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "authentication_error"),
        (500, "server_error", "api_error"),
        (503, "server_error", "api_error"),
    ],
)
def test_error_response_has_anthropic_shape_on_messages(status, openai_type, anthropic_type):
    r = error_response(MESSAGES, status, "Refused.", "proxy_code", openai_type)
    assert r.status_code == status
    assert json.loads(r.content) == {
        "type": "error",
        "error": {"type": anthropic_type, "message": "Refused.", "code": "proxy_code"},
    }


def test_non_ascii_message_stays_valid_json():
    r = error_response(CHAT, 500, 'caf\u00e9 \u2603 "quoted"\nnewline', "x", type="server_error")
    assert r.content.isascii()
    assert json.loads(r.content)["error"]["message"] == 'caf\u00e9 \u2603 "quoted"\nnewline'


def mock_transport(reply) -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(reply.status_code, headers=list(reply.headers.items()), content=reply.content)

    return httpx.Client(transport=httpx.MockTransport(answer))


@pytest.mark.parametrize(
    ("status", "code", "type", "exception"),
    [
        (401, "invalid_proxy_key", "authentication_error", openai.AuthenticationError),
        (400, "invalid_path", "invalid_request_error", openai.BadRequestError),
        (500, "proxy_internal_error", "server_error", openai.InternalServerError),
        (503, "not_configured", "server_error", openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("family", [CHAT, RESPONSES])
def test_openai_sdk_turns_our_errors_into_its_exceptions(family, status, code, type, exception):
    reply = error_response(family, status, f"cf-gateway says {code}.", code, type)
    client = openai.OpenAI(
        base_url="http://proxy.invalid/v1", api_key="unused", max_retries=0, http_client=mock_transport(reply)
    )
    with pytest.raises(exception) as e:
        if family is CHAT:
            client.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
        else:
            client.responses.create(model="gpt-5", input="hi")
    assert e.value.status_code == status
    assert (e.value.code, e.value.type) == (code, type)
    assert f"cf-gateway says {code}." in str(e.value)
