"""End to end: cf_api=rest, Cloudflare's REST API (/client/v4/accounts/{account}/ai/...) on the stand-in.

One proxy for the module: CLOUDFLARE_API_TOKEN in its environment (and CF_AIG_TOKEN too, which
rest does not use: a warning), cf_base_url the stand-in. Clients send placeholder keys both as
Authorization and x-api-key; the upstream must see only the proxy's API token.
"""

from __future__ import annotations

import json
import re

import anthropic
import httpx
import openai
import pytest

from tests.harness import (
    ACCOUNT_ID,
    GATEWAY_ID,
    UNSERVABLE,
    Proxy,
    quick_env,
    run_mitmdump,
    start_proxy,
    wait_for,
)
from tests.standin_gateway import STANDIN_API_TOKEN

REST = f"/client/v4/accounts/{ACCOUNT_ID}"
PLACEHOLDER = "client-placeholder-key"
TIMEOUT = 15.0
CHAT = [{"role": "user", "content": "Hello"}]
WORKERS_MODEL = "@cf/meta/llama-3.1-8b-instruct"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def rest(gateway, tmp_path_factory):
    p = start_proxy(
        gateway.base_url,
        workdir=tmp_path_factory.mktemp("rest"),
        options={"cf_api": "rest"},
        env=quick_env(CLOUDFLARE_API_TOKEN=STANDIN_API_TOKEN, CF_AIG_TOKEN="unused-gateway-token-0123"),
    )
    yield p
    p.stop()


def oai(p: Proxy) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=p.url + "/v1",
        api_key=PLACEHOLDER,
        default_headers={"x-api-key": PLACEHOLDER},
        max_retries=0,
        timeout=TIMEOUT,
    )


def claude(p: Proxy) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=p.url,
        api_key=PLACEHOLDER,
        default_headers={"x-api-key": PLACEHOLDER},
        max_retries=0,
        timeout=TIMEOUT,
    )


def assert_rest_requests(gw, *routes: str) -> None:
    """The stand-in saw exactly these REST routes, each with the proxy's credentials and no client key."""
    assert [(r.method, r.path, r.query) for r in gw.requests] == [
        ("POST", f"{REST}{route}", "") for route in routes
    ]
    for r in gw.requests:
        assert r.header_values("authorization") == [f"Bearer {STANDIN_API_TOKEN}"]
        assert r.aig_gateway_id == GATEWAY_ID
        assert r.header("x-api-key") is None and r.header("cf-aig-authorization") is None
        assert PLACEHOLDER not in json.dumps(r.headers)


def test_chat_json_and_streamed(rest, gw):
    client = oai(rest)
    reply = client.chat.completions.create(model="openai/gpt-4o-mini", messages=CHAT)
    assert reply.choices[0].message.content == "Hello from the stand-in gateway."
    chunks = list(
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == reply.choices[0].message.content
    )
    assert chunks[-1].usage and chunks[-1].usage.total_tokens > 0
    assert_rest_requests(gw, "/ai/v1/chat/completions", "/ai/v1/chat/completions")


def test_responses_streamed_function_call_bare_model(rest, gw):
    """Codex sends a bare gpt-5: it reaches the REST API as openai/gpt-5."""
    events = list(
        oai(rest).responses.create(model="gpt-5", input="Weather?", tools=[WEATHER_TOOL], stream=True)
    )
    assert events[-1].type == "response.completed"
    call = [e.item for e in events if e.type == "response.output_item.done"][-1]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "example"}
    assert_rest_requests(gw, "/ai/v1/responses")
    assert gw.requests[0].json()["model"] == "openai/gpt-5"


def test_messages_bare_model(rest, gw):
    """Claude Code sends a bare claude-sonnet-4-5: it reaches the REST API as anthropic/claude-sonnet-4-5."""
    client = claude(rest)
    msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=CHAT)
    assert msg.content[0].text == "Hello from the stand-in gateway."
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=CHAT) as stream:
        assert "".join(stream.text_stream) == "Hello from the stand-in gateway."
    assert_rest_requests(gw, "/ai/v1/messages", "/ai/v1/messages")
    assert [r.json()["model"] for r in gw.requests] == ["anthropic/claude-sonnet-4-5"] * 2


@pytest.mark.parametrize("path", ["/ai/run", "/v1/ai/run"])
def test_ai_run_json_and_stream_with_usage_in_the_log(rest, gw, path):
    with httpx.Client(base_url=rest.url, timeout=TIMEOUT) as client:
        r = client.post(path, json={"model": WORKERS_MODEL, "input": {"prompt": "Say hello to me"}})
        assert r.status_code == 200, r.text
        assert r.json()["result"]["response"] == "Hello from the stand-in gateway."
        usage = r.json()["result"]["usage"]
        with client.stream(
            "POST", path, json={"model": WORKERS_MODEL, "input": {"prompt": "Say hello", "stream": True}}
        ) as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and '"usage"' in events[-2]
    assert_rest_requests(gw, "/ai/run", "/ai/run")
    want_json = rf"POST {re.escape(path)} run -> \S+{re.escape(REST)}/ai/run 200 \d+ms "
    want_json += rf"model={re.escape(WORKERS_MODEL)} "
    want_json += rf"tokens={usage['prompt_tokens']} input/{usage['completion_tokens']} output"
    want_stream = (
        rf"POST {re.escape(path)} run -> \S+/ai/run 200 \d+ms model=\S+ stream tokens=\d+ input/\d+ output"
    )
    assert rest.wait_output(f"POST {path} run ->")
    for pattern in (want_json, want_stream):
        assert _wait_match(rest, pattern), rest.output()[-2000:]


def _wait_match(p: Proxy, pattern: str) -> bool:
    return wait_for(lambda: re.search(pattern, p.output()) is not None, timeout=10)


def test_unsupported_paths_answered_locally(rest, gw):
    """The REST API has no models, embeddings, count_tokens or GET responses/{id}: 404 unsupported_path
    in the client's shape, nothing forwarded."""
    client = oai(rest)
    calls = [
        lambda: client.models.list(),
        lambda: client.embeddings.create(model="workers-ai/@cf/baai/bge-base-en-v1.5", input="hi"),
        lambda: client.responses.retrieve("resp_0123"),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.code == "unsupported_path" and "REST API" in e.value.message
    with pytest.raises(anthropic.NotFoundError) as a:
        claude(rest).messages.count_tokens(model="claude-sonnet-4-5", messages=CHAT)
    body = a.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and body["error"]["code"] == "unsupported_path"
    assert gw.requests == []


@pytest.mark.parametrize(
    ("status", "openai_error", "anthropic_error", "hint"),
    [
        (401, openai.AuthenticationError, anthropic.AuthenticationError, "check CLOUDFLARE_API_TOKEN"),
        (403, openai.PermissionDeniedError, anthropic.PermissionDeniedError, "lacks a permission"),
        (402, openai.APIStatusError, anthropic.APIStatusError, "no credits left"),
    ],
)
def test_v4_errors_reshaped_for_each_sdk(rest, gw, status, openai_error, anthropic_error, hint):
    """The REST API's v4 envelope becomes OpenAI's and Anthropic's error shape: status, code, hint."""
    code = {401: 10000, 403: 10000, 402: 2021}[status]
    force = {"x-standin-status": str(status)}
    with pytest.raises(openai_error) as e:
        oai(rest).chat.completions.create(model="openai/gpt-4o-mini", messages=CHAT, extra_headers=force)
    assert e.value.status_code == status and str(e.value.code) == str(code)
    assert hint in e.value.message and f"Cloudflare error {code}" in e.value.message
    with pytest.raises(anthropic_error) as a:
        claude(rest).messages.create(
            model="claude-sonnet-4-5", max_tokens=8, messages=CHAT, extra_headers=force
        )
    assert a.value.status_code == status
    body = a.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["code"] == code and hint in body["error"]["message"]
    assert_rest_requests(gw, "/ai/v1/chat/completions", "/ai/v1/messages")


def test_startup_needs_the_api_token():
    r = run_mitmdump(
        [
            "--mode",
            f"reverse:{UNSERVABLE}@127.0.0.1:0",
            "--set",
            f"cf_account_id={ACCOUNT_ID}",
            "--set",
            "cf_api=rest",
        ],
        quick_env(),
        None,
        60,
    )
    assert r.returncode != 0
    assert "cf_api_token (env CLOUDFLARE_API_TOKEN) must be set with cf_api=rest" in r.stdout


def test_gateway_token_with_rest_warns(rest):
    assert rest.wait_output("CF_AIG_TOKEN is unused with cf_api=rest")
    assert "REST API: requests go to" in rest.output()
