"""The addon's own answers (cfgw.replies): JSON, and errors OpenAI SDKs understand."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from cfgw.replies import SERVER, error_response, json_response


def test_json_response():
    r = json_response(200, {"status": "ok", "n": [1, 2]})
    assert r.status_code == 200
    assert r.content == b'{"status":"ok","n":[1,2]}'  # compact
    assert r.headers["content-type"] == "application/json"
    assert r.headers["server"] == SERVER
    assert r.headers["content-length"] == str(len(r.content))


def test_extra_headers_are_added():
    r = json_response(401, {}, {"www-authenticate": 'Bearer realm="cf-gateway"'})
    assert r.headers["www-authenticate"] == 'Bearer realm="cf-gateway"'
    assert r.headers["content-type"] == "application/json"


def test_error_response_has_openai_shape():
    r = error_response(400, "Refused request path: it has a dot segment.", "invalid_path")
    assert r.status_code == 400
    assert json.loads(r.content) == {
        "error": {
            "message": "Refused request path: it has a dot segment.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_path",
        }
    }


def test_non_ascii_message_stays_valid_json():
    r = error_response(500, 'caf\u00e9 \u2603 "quoted"\nnewline', "x", type="server_error")
    assert r.content.isascii()
    assert json.loads(r.content)["error"]["message"] == 'caf\u00e9 \u2603 "quoted"\nnewline'


@pytest.mark.parametrize(
    ("reply", "exception"),
    [
        (
            error_response(
                401, "Missing proxy key.", "invalid_proxy_key", headers={"www-authenticate": "Bearer"}
            ),
            openai.AuthenticationError,
        ),
        (error_response(400, "Refused request path.", "invalid_path"), openai.BadRequestError),
        (
            error_response(
                500, "cf-gateway hit an internal error.", "proxy_internal_error", type="server_error"
            ),
            openai.InternalServerError,
        ),
        (
            error_response(503, "cf-gateway is not configured.", "proxy_not_configured", type="server_error"),
            openai.InternalServerError,
        ),
    ],
)
def test_openai_sdk_turns_our_errors_into_its_exceptions(reply, exception):
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(reply.status_code, headers=list(reply.headers.items()), content=reply.content)

    client = openai.OpenAI(
        base_url="http://proxy.invalid/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(answer)),
    )
    with pytest.raises(exception) as e:
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    body = json.loads(reply.content)["error"]
    assert e.value.status_code == reply.status_code
    assert e.value.code == body["code"]
    assert e.value.type == body["type"]
    assert body["message"] in str(e.value)
