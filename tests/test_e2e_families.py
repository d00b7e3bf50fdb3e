"""End to end: Anthropic Messages and OpenAI Responses clients through a real mitmdump (and mitmweb).

The clients are the real SDKs (``anthropic``, ``openai``'s ``responses``); the upstream is
the stand-in gateway, which records every request exactly as it arrived, so each test
asserts what the client got *and* what the gateway saw (path, query, auth headers, body).

anthropic 2.14 sends ``api_key=`` and ``auth_token=`` alike as ``Authorization: Bearer``;
the ``x-api-key`` header (what Claude Code sends with ANTHROPIC_API_KEY) is set here
through ``default_headers`` with Authorization omitted (``anthropic_client(header=...)``).
Held streams (``x-standin-hold``) make liveness deterministic: the client has the first
event while the stand-in is still blocked, which a buffering proxy cannot do; the client
timeout only bounds a failure.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import RawMessageStartEvent, TextBlock, ToolUseBlock
from openai.types.responses import ResponseCompletedEvent, ResponseCreatedEvent, ResponseFunctionToolCall
from prometheus_client.parser import text_string_to_metric_families

from cfgw import chatview
from cfgw.gateway import GATEWAY_HINTS
from tests.harness import (
    ACCOUNT_ID,
    GATEWAY_ID,
    Proxy,
    raw_exchange,
    split_answer,
    start_mitmweb,
    start_proxy,
    web_client,
)
from tests.standin_gateway import REPLY_TEXT, TOOL_ARGUMENTS, StandinGateway

pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

PREFIX = f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}"
MESSAGES = f"{PREFIX}/anthropic/v1/messages"
RESPONSES = f"{PREFIX}/openai/responses"
WAIT = 10.0  # failure bound for one client call; the stand-in's hold gives up after 30 s

# Fixed fake secrets with distinctive tails (the stand-in checks only the provider prefixes).
TOKEN = "cfat-fam-Hq6TzW2nRk8VxJ4pLd"
KEY = "pk-fam-Wq4ZrT8yHn2LmXcVbKd"
WRONG_KEY = "pk-fam-guess-Fd3SaQ9wEr5Ty"
ANT_KEY = "sk-ant-fake.Jm5Qx8Rz2Tw4Yv6Np"  # a dot: no secret scanner takes it for a key
OAI_KEY = "sk-fake.Lp3Vn7Bx9Dk2Mz5QrGt"

MODEL = "claude-sonnet-4-5"
SYSTEM = "Be brief."
ASK: Any = [{"role": "user", "content": "Weather in Paris?"}]
ASK_TOKENS = 5  # the stand-in counts words: "Be brief." + "Weather in Paris?"
ANT_TOOLS: Any = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
OAI_TOOLS: Any = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
TEXT_TOKENS = len(REPLY_TEXT.split())
TOOL_TOKENS = len(TOOL_ARGUMENTS.split())


# -- helpers ----------------------------------------------------------------------------------


def anthropic_client(base_url: str, key: str | None, header: str = "authorization") -> anthropic.Anthropic:
    """The Anthropic SDK sending ``key`` as 'Authorization: Bearer' or as 'x-api-key' (or no key)."""
    if header == "x-api-key" or key is None:
        headers: dict = {"Authorization": anthropic.Omit()}
        if key is not None:
            headers["x-api-key"] = key
        return anthropic.Anthropic(
            base_url=base_url, api_key="unused", default_headers=headers, max_retries=0, timeout=WAIT
        )
    return anthropic.Anthropic(base_url=base_url, auth_token=key, max_retries=0, timeout=WAIT)


def openai_client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=WAIT)


def auth_headers(rec) -> dict[str, list[str]]:
    """The credential headers a recorded request carried, by lowercase name."""
    names = ("authorization", "x-api-key", "cf-aig-authorization")
    return {name: rec.header_values(name) for name in names if rec.header_values(name)}


def summary(proxy: Proxy, log_id: str) -> str:
    """The proxy's summary line for a response: no timestamp, timings and the size shown as N."""
    assert proxy.wait_output(f"log_id={log_id}"), proxy.output()
    (line,) = [x for x in proxy.output().splitlines() if f"log_id={log_id}" in x]
    line = line.partition("] ")[2]
    return re.sub(r"\b\d+ms\b", "Nms", re.sub(r" \d+B ", " NB ", line))


def json_summary(proxy: Proxy, log_id: str) -> dict:
    assert proxy.wait_output(f'"log_id":"{log_id}"'), proxy.output()
    (line,) = [x for x in proxy.output().splitlines() if f'"log_id":"{log_id}"' in x]
    return json.loads(line[line.index("{") :])


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text exposition; 0 when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def hold_name() -> str:
    return f"hold-{uuid.uuid4().hex[:12]}"


def upstream(gw: StandinGateway, path: str) -> str:
    """The upstream URL the summary line names for a gateway path."""
    return f"{gw.base_url}{path}"


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(gateway, tmp_path_factory):
    """Pass-through proxy (clients' own keys forwarded) in front of the tokenless stand-in."""
    p = start_proxy(gateway.base_url, workdir=tmp_path_factory.mktemp("plain"))
    yield p
    p.stop()


@pytest.fixture(scope="module")
def secured():
    """A stand-in that requires the gateway token, as every new gateway does."""
    with StandinGateway(require_token=TOKEN) as gw:
        yield gw


@pytest.fixture
def sgw(secured):
    secured.clear()
    return secured


@pytest.fixture(scope="module")
def keyed(secured, tmp_path_factory):
    """Access keys plus token injection in front of the token-requiring stand-in."""
    p = start_proxy(
        secured.base_url,
        options={"cf_proxy_keys": KEY, "cf_token": TOKEN},
        workdir=tmp_path_factory.mktemp("keyed"),
    )
    yield p
    p.stop()


# -- Anthropic Messages, pass-through -----------------------------------------------------------


def test_anthropic_sdk_pass_through_create_stream_and_count_tokens(plain, gw):
    client = anthropic_client(plain.url, ANT_KEY, header="x-api-key")
    version = client.default_headers["anthropic-version"]

    raw = client.messages.with_raw_response.create(model=MODEL, max_tokens=64, system=SYSTEM, messages=ASK)
    message = raw.parse()
    assert [b.text for b in message.content if isinstance(b, TextBlock)] == [REPLY_TEXT]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (ASK_TOKENS, TEXT_TOKENS)

    with client.messages.stream(
        model=MODEL, max_tokens=64, system=SYSTEM, messages=ASK, tools=ANT_TOOLS
    ) as stream:
        final = stream.get_final_message()
        stream_log_id = stream.response.headers["cf-aig-log-id"]
    (tool_use,) = final.content
    assert isinstance(tool_use, ToolUseBlock)
    assert (tool_use.type, tool_use.name, tool_use.input) == ("tool_use", "get_weather", {"city": "Paris"})
    assert final.stop_reason == "tool_use"

    counted = client.messages.with_raw_response.count_tokens(model=MODEL, system=SYSTEM, messages=ASK)
    assert counted.parse().input_tokens == ASK_TOKENS

    assert [(r.method, r.path, r.query) for r in gw.requests] == [
        ("POST", MESSAGES, ""),
        ("POST", MESSAGES, ""),
        ("POST", f"{MESSAGES}/count_tokens", ""),
    ]
    for rec in gw.requests:
        assert auth_headers(rec) == {"x-api-key": [ANT_KEY]}  # untouched, and no token added
        assert rec.header_values("anthropic-version") == [version]
        assert rec.json()["model"] == MODEL
    assert gw.requests[1].json()["tools"] == ANT_TOOLS

    url = upstream(gw, MESSAGES)
    head = f"POST /v1/messages messages -> anthropic {url}"
    assert summary(plain, raw.headers["cf-aig-log-id"]) == (
        f"{head} 200 Nms ttfb=Nms NB model={MODEL} cache=MISS log_id={raw.headers['cf-aig-log-id']} "
        f"tokens={ASK_TOKENS} in/{TEXT_TOKENS} out"
    )
    assert summary(plain, stream_log_id) == (
        f"{head} 200 Nms ttfb=Nms NB model={MODEL} stream cache=MISS log_id={stream_log_id} "
        f"tokens={ASK_TOKENS} in/{TOOL_TOKENS} out"
    )
    count_id = counted.headers["cf-aig-log-id"]
    assert summary(plain, count_id) == (
        f"POST /v1/messages/count_tokens messages -> anthropic {url}/count_tokens 200 Nms ttfb=Nms NB "
        f"model={MODEL} cache=MISS log_id={count_id} tokens={ASK_TOKENS} in"
    )


def test_anthropic_bearer_key_passes_through_untouched(plain, gw):
    client = anthropic_client(plain.url, ANT_KEY)  # auth_token=: Claude Code's ANTHROPIC_AUTH_TOKEN
    message = client.messages.create(model=MODEL, max_tokens=64, messages=ASK)
    assert [b.text for b in message.content if isinstance(b, TextBlock)] == [REPLY_TEXT]
    (rec,) = gw.requests
    assert (rec.path, auth_headers(rec)) == (MESSAGES, {"authorization": [f"Bearer {ANT_KEY}"]})


def test_claude_code_shaped_stream_keeps_query_and_beta_header(plain, gw):
    """Claude Code: POST /v1/messages?beta=true, anthropic-beta, x-api-key, stream."""
    body = {"model": MODEL, "max_tokens": 64, "stream": True, "system": SYSTEM, "messages": ASK}
    headers = {
        "x-api-key": ANT_KEY,
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "user-agent": "claude-cli/2.0.0 (external, cli)",
    }
    with (
        httpx.Client(timeout=WAIT) as c,
        c.stream("POST", plain.url + "/v1/messages?beta=true", json=body, headers=headers) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        text = r.read().decode()
    names = re.findall(r"^event: (\S+)$", text, re.M)
    assert names[0] == "message_start" and names[-1] == "message_stop"
    deltas = [json.loads(d) for d in re.findall(r"^data: (.*)$", text, re.M)]
    assert "".join(d["delta"]["text"] for d in deltas if d["type"] == "content_block_delta") == REPLY_TEXT

    (rec,) = gw.requests
    assert (rec.method, rec.path, rec.query) == ("POST", MESSAGES, "beta=true")
    assert auth_headers(rec) == {"x-api-key": [ANT_KEY]}
    assert rec.header_values("anthropic-beta") == [headers["anthropic-beta"]]
    assert rec.header_values("anthropic-version") == ["2023-06-01"]
    log_id = r.headers["cf-aig-log-id"]
    assert summary(plain, log_id) == (
        f"POST /v1/messages messages -> anthropic {upstream(gw, MESSAGES)} 200 Nms ttfb=Nms NB "
        f"model={MODEL} stream cache=MISS log_id={log_id} tokens={ASK_TOKENS} in/{TEXT_TOKENS} out"
    )


# -- Anthropic Messages, access keys and token injection -----------------------------------------


@pytest.mark.parametrize("header", ["x-api-key", "authorization"])
def test_anthropic_sdk_key_mode_swaps_the_access_key_for_the_token(keyed, sgw, header):
    client = anthropic_client(keyed.url, KEY, header=header)
    message = client.messages.create(model=MODEL, max_tokens=64, messages=ASK)
    assert [b.text for b in message.content if isinstance(b, TextBlock)] == [REPLY_TEXT]
    with client.messages.stream(model=MODEL, max_tokens=64, messages=ASK, tools=ANT_TOOLS) as stream:
        (tool_use,) = stream.get_final_message().content
    assert isinstance(tool_use, ToolUseBlock) and tool_use.input == {"city": "Paris"}
    assert client.messages.count_tokens(model=MODEL, messages=ASK).input_tokens == 3

    assert [r.path for r in sgw.requests] == [MESSAGES, MESSAGES, f"{MESSAGES}/count_tokens"]
    for rec in sgw.requests:
        assert auth_headers(rec) == {"cf-aig-authorization": [f"Bearer {TOKEN}"]}
        assert rec.json()["model"] == MODEL


# -- model spelling on the provider routes ---------------------------------------------------------


def test_compat_model_spelling_is_dropped_on_provider_routes_only(plain, gw):
    """'anthropic/claude-sonnet-4-5' on the Anthropic route (and 'openai/gpt-5' on Responses) reach
    the provider bare; every other byte of the body is kept, a mention in the text included."""
    cases = [
        (
            "/v1/messages",
            {"x-api-key": ANT_KEY, "anthropic-version": "2023-06-01"},
            b'{"max_tokens": 64,  "model" : "anthropic/claude-sonnet-4-5", "messages": [{"role": "user", '
            b'"content": "Are you anthropic/claude-sonnet-4-5?"}]}',
            b'"anthropic/claude-sonnet-4-5"',
            b'"claude-sonnet-4-5"',
            MESSAGES,
        ),
        (
            "/v1/responses",
            {"authorization": f"Bearer {OAI_KEY}"},
            b'{"model":"openai/gpt-5","input":"Are you openai/gpt-5?","metadata":{"model":"openai/gpt-5x"}}',
            b'"openai/gpt-5"',
            b'"gpt-5"',
            RESPONSES,
        ),
    ]
    for path, headers, body, compat, bare, gateway_path in cases:
        r = httpx.post(
            plain.url + path, content=body, headers={**headers, "content-type": "application/json"}
        )
        assert r.status_code == 200, r.text
        model = bare.strip(b'"').decode()
        assert r.json()["model"] == model
        rec = gw.requests[-1]
        assert rec.path == gateway_path
        assert rec.body == body.replace(compat, bare, 1)
        assert rec.header("content-length") == str(len(rec.body))
        log_id = r.headers["cf-aig-log-id"]
        assert f" model={model} " in summary(plain, log_id)

    # The SDKs see the bare name come back too.
    message = anthropic_client(plain.url, ANT_KEY).messages.create(
        model="anthropic/claude-sonnet-4-5", max_tokens=64, messages=ASK
    )
    response = openai_client(plain.url + "/v1", OAI_KEY).responses.create(model="openai/gpt-5", input="Hi")
    assert (message.model, response.model) == (MODEL, "gpt-5")
    assert [r.json()["model"] for r in gw.requests[-2:]] == [MODEL, "gpt-5"]

    # compat wants the provider prefix: it stays.
    chat = {"model": "anthropic/claude-sonnet-4-5", "messages": ASK}
    assert httpx.post(plain.url + "/v1/chat/completions", json=chat).status_code == 200
    assert (gw.requests[-1].path, gw.requests[-1].json()) == (f"{PREFIX}/compat/chat/completions", chat)


# -- OpenAI Responses ---------------------------------------------------------------------------


def run_responses_lifecycle(client: openai.OpenAI) -> str:
    """create (plain, streamed, function call), retrieve, input_items, delete; returns the created id."""
    created = client.responses.create(model="gpt-5", instructions=SYSTEM, input="Weather in Paris?")
    assert created.output_text == REPLY_TEXT
    usage = created.usage
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (ASK_TOKENS, TEXT_TOKENS)

    events = list(client.responses.create(model="gpt-5", input="Say hello", stream=True))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY_TEXT
    assert events[-1].type == "response.completed"

    called = client.responses.create(model="gpt-5", input="Weather in Paris?", tools=OAI_TOOLS)
    (call,) = called.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert (call.type, call.name, call.arguments) == ("function_call", "get_weather", TOOL_ARGUMENTS)

    assert client.responses.retrieve(created.id).output_text == REPLY_TEXT
    items = client.responses.input_items.list(created.id, limit=5, order="asc")
    assert [i.model_dump(include={"role", "content"}, exclude_unset=True) for i in items.data] == [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}
    ]
    client.responses.delete(created.id)
    return created.id


def expected_lifecycle(resp_id: str) -> list[tuple[str, str, str]]:
    """(method, path, query) the gateway gets for run_responses_lifecycle."""
    return [
        ("POST", RESPONSES, ""),
        ("POST", RESPONSES, ""),
        ("POST", RESPONSES, ""),
        ("GET", f"{RESPONSES}/{resp_id}", ""),
        ("GET", f"{RESPONSES}/{resp_id}/input_items", "limit=5&order=asc"),
        ("DELETE", f"{RESPONSES}/{resp_id}", ""),
    ]


@pytest.mark.parametrize("prefix", ["/v1", ""], ids=["v1", "no-v1"])
def test_responses_sdk_pass_through(plain, gw, prefix):
    resp_id = run_responses_lifecycle(openai_client(plain.url + prefix, OAI_KEY))
    assert [(r.method, r.path, r.query) for r in gw.requests] == expected_lifecycle(resp_id)
    for rec in gw.requests:
        assert auth_headers(rec) == {"authorization": [f"Bearer {OAI_KEY}"]}
    assert [r.json()["model"] for r in gw.requests[:3]] == ["gpt-5"] * 3


def test_responses_sdk_key_mode(keyed, sgw):
    resp_id = run_responses_lifecycle(openai_client(keyed.url + "/v1", KEY))
    assert [(r.method, r.path, r.query) for r in sgw.requests] == expected_lifecycle(resp_id)
    for rec in sgw.requests:
        assert auth_headers(rec) == {"cf-aig-authorization": [f"Bearer {TOKEN}"]}


def test_responses_summary_lines(plain, gw):
    client = openai_client(plain.url + "/v1", OAI_KEY)
    raw = client.responses.with_raw_response.create(
        model="gpt-5", instructions=SYSTEM, input="Weather in Paris?"
    )
    stream = client.responses.create(
        model="gpt-5", instructions=SYSTEM, input="Hi", stream=True, tools=OAI_TOOLS
    )
    list(stream)
    url = upstream(gw, RESPONSES)
    log_id, stream_id = raw.headers["cf-aig-log-id"], stream.response.headers["cf-aig-log-id"]
    assert summary(plain, log_id) == (
        f"POST /v1/responses responses -> openai {url} 200 Nms ttfb=Nms NB model=gpt-5 cache=MISS "
        f"log_id={log_id} tokens={ASK_TOKENS} in/{TEXT_TOKENS} out"
    )
    assert summary(plain, stream_id) == (
        f"POST /v1/responses responses -> openai {url} 200 Nms ttfb=Nms NB model=gpt-5 stream cache=MISS "
        f"log_id={stream_id} tokens=3 in/{TOOL_TOKENS} out"
    )


# -- errors in each SDK's own shape ---------------------------------------------------------------


def test_proxy_401_in_each_sdks_shape(keyed, sgw):
    with pytest.raises(anthropic.AuthenticationError) as missing:
        anthropic_client(keyed.url, None).messages.create(model=MODEL, max_tokens=64, messages=ASK)
    with pytest.raises(anthropic.AuthenticationError) as invalid:
        anthropic_client(keyed.url, WRONG_KEY, header="x-api-key").messages.create(
            model=MODEL, max_tokens=64, messages=ASK
        )
    with pytest.raises(openai.AuthenticationError) as oai:
        openai_client(keyed.url + "/v1", WRONG_KEY).responses.create(model="gpt-5", input="Hi")
    hint = (
        "proxy key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>' "
        "with one of this proxy's access keys."
    )
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": f"Missing {hint}", "code": "invalid_proxy_key"},
    }
    assert invalid.value.response.json()["error"]["message"] == f"Invalid {hint}"
    assert f"Invalid {hint}" in str(invalid.value) and f"Missing {hint}" in str(missing.value)
    assert oai.value.body == {
        "message": f"Invalid {hint}",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_proxy_key",
    }
    assert f"Invalid {hint}" in str(oai.value)
    assert sgw.requests == []


def test_unsafe_path_400_in_each_sdks_shape(plain, gw):
    with pytest.raises(anthropic.BadRequestError) as ant:
        anthropic_client(plain.url, ANT_KEY).post("/v1/messages/%2E%2E/admin", cast_to=object, body={})
    with pytest.raises(openai.BadRequestError) as oai:
        openai_client(plain.url + "/v1", OAI_KEY).post("/responses/%2e%2e/admin", cast_to=object, body={})
    assert ant.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "Refused request path: the path contains the encoded character %2E.",
            "code": "invalid_path",
        },
    }
    assert "Refused request path: the path contains the encoded character %2E." in str(ant.value)
    assert "Refused request path: the path contains the encoded character %2e." in str(oai.value)
    assert oai.value.code == "invalid_path"

    # Literal dot segments, which every HTTP library would normalise away, sent raw.
    for path, shape in (("/v1/messages/../x", "anthropic"), ("/v1/responses/../x", "openai")):
        answer = raw_exchange(
            plain.port,
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode(),
        )
        status, _, body = split_answer(answer)
        message = "Refused request path: the path contains a dot segment."
        error = {"type": "invalid_request_error", "message": message, "code": "invalid_path"}
        if shape == "anthropic":
            expected: dict = {"type": "error", "error": error}
        else:
            expected = {
                "error": {"message": message, "type": error["type"], "param": None, "code": "invalid_path"}
            }
        assert (status, json.loads(body)) == (400, expected)
    assert gw.requests == []


def test_gateway_401_2009_names_the_gateway_message_and_code(secured, sgw, make_proxy):
    tokenless = make_proxy(upstream=secured.base_url)
    with pytest.raises(anthropic.AuthenticationError) as ant:
        anthropic_client(tokenless.url, ANT_KEY).messages.create(model=MODEL, max_tokens=64, messages=ASK)
    with pytest.raises(openai.AuthenticationError) as oai:
        openai_client(tokenless.url + "/v1", OAI_KEY).responses.create(model="gpt-5", input="Hi")
    cloudflare = {
        "success": False,
        "result": [],
        "messages": [],
        "name": "AiGatewayError",
        "httpCode": 401,
        "internalCode": 2009,
        "message": "Unauthorized",
        "description": "Unauthorized",
    }
    shown = "Unauthorized (AI Gateway error 2009)"
    assert ant.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": shown, "code": 2009},
        **{k: v for k, v in cloudflare.items() if k != "type"},
    }
    assert shown in str(ant.value) and shown in str(oai.value)
    assert oai.value.response.json() == {
        "error": {"message": shown, "type": "gateway_error", "param": None, "code": 2009},
        **cloudflare,
    }
    assert ant.value.response.headers["cf-aig-log-id"]  # the gateway's headers are kept
    assert [r.path for r in sgw.requests] == [MESSAGES, RESPONSES]
    assert tokenless.wait_output(" gateway_code=2009") and tokenless.wait_output(GATEWAY_HINTS[2009])


def test_compat_routes_send_both_families_to_compat_and_reshape_2019(gw, make_proxy):
    compat = make_proxy({"cf_routes": "compat"})
    with pytest.raises(anthropic.BadRequestError) as ant:
        anthropic_client(compat.url, ANT_KEY).messages.create(model=MODEL, max_tokens=64, messages=ASK)
    with pytest.raises(openai.BadRequestError) as oai:
        openai_client(compat.url + "/v1", OAI_KEY).responses.create(model="gpt-5", input="Hi")
    assert ant.value.response.json()["error"] == {
        "type": "invalid_request_error",
        "message": "Compatibility endpoint: messages is not supported. (AI Gateway error 2019)",
        "code": 2019,
    }
    for exc in (ant.value, oai.value):
        assert "2019" in str(exc) and "not supported" in str(exc)
    assert oai.value.response.json()["error"]["code"] == 2019
    assert [r.path for r in gw.requests] == [f"{PREFIX}/compat/messages", f"{PREFIX}/compat/responses"]
    assert compat.wait_output(" gateway_code=2019") and compat.wait_output(GATEWAY_HINTS[2019])


def test_raw_gateway_errors_leave_the_gateway_body_as_is(secured, sgw, make_proxy):
    raw_proxy = make_proxy({"cf_gateway_errors": "raw"}, upstream=secured.base_url)
    body = {"model": MODEL, "max_tokens": 64, "messages": ASK}
    headers = {"x-api-key": ANT_KEY, "anthropic-version": "2023-06-01", "accept-encoding": "identity"}
    via_proxy = httpx.post(raw_proxy.url + "/v1/messages", json=body, headers=headers)
    direct = httpx.post(secured.anthropic_url + "/v1/messages", json=body, headers=headers)
    assert (via_proxy.status_code, via_proxy.content) == (401, direct.content)
    assert via_proxy.json()["error"] == [{"code": 2009, "message": "Unauthorized"}]
    with pytest.raises(anthropic.AuthenticationError) as ant:
        anthropic_client(raw_proxy.url, ANT_KEY).messages.create(model=MODEL, max_tokens=64, messages=ASK)
    assert ant.value.body == direct.json()


def test_provider_errors_pass_through_unchanged(plain, gw):
    status = {"x-standin-status": "429"}
    with pytest.raises(anthropic.RateLimitError) as ant:
        anthropic_client(plain.url, ANT_KEY).messages.create(
            model=MODEL, max_tokens=64, messages=ASK, extra_headers=status
        )
    with pytest.raises(openai.RateLimitError) as oai:
        openai_client(plain.url + "/v1", OAI_KEY).responses.create(
            model="gpt-5", input="Hi", extra_headers=status
        )
    assert ant.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Stand-in provider error 429"},
        "request_id": ant.value.response.headers["request-id"],
    }
    assert oai.value.body == {
        "message": "Stand-in provider error 429",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert [r.path for r in gw.requests] == [MESSAGES, RESPONSES]


# -- usage, JSON log and metrics -------------------------------------------------------------------


def test_json_log_and_metrics_carry_family_model_and_tokens(gw, make_proxy):
    proxy = make_proxy({"cf_log_format": "json"})
    ant = anthropic_client(proxy.url, ANT_KEY)
    oai = openai_client(proxy.url + "/v1", OAI_KEY)
    created = ant.messages.with_raw_response.create(model=MODEL, max_tokens=64, system=SYSTEM, messages=ASK)
    with ant.messages.stream(model=MODEL, max_tokens=64, system=SYSTEM, messages=ASK, tools=ANT_TOOLS) as s:
        s.get_final_message()
        streamed = s.response
    response = oai.responses.with_raw_response.create(
        model="gpt-5", instructions=SYSTEM, input="Weather in Paris?"
    )
    events = oai.responses.create(model="gpt-5", instructions=SYSTEM, input="Weather in Paris?", stream=True)
    list(events)

    fields = ("family", "route", "model", "stream", "prompt_tokens", "completion_tokens", "total_tokens")
    records = [
        {k: json_summary(proxy, r.headers["cf-aig-log-id"])[k] for k in fields}
        for r in (created, streamed, response, events.response)
    ]
    both = ASK_TOKENS + TEXT_TOKENS
    assert records == [
        dict(
            zip(fields, ("messages", "anthropic", MODEL, False, ASK_TOKENS, TEXT_TOKENS, both), strict=True)
        ),
        dict(zip(fields, ("messages", "anthropic", MODEL, True, ASK_TOKENS, TOOL_TOKENS, 7), strict=True)),
        dict(
            zip(fields, ("responses", "openai", "gpt-5", False, ASK_TOKENS, TEXT_TOKENS, both), strict=True)
        ),
        dict(zip(fields, ("responses", "openai", "gpt-5", True, ASK_TOKENS, TEXT_TOKENS, both), strict=True)),
    ]

    text = httpx.get(proxy.url + "/metrics").text
    requests = "cf_gateway_requests_total"
    assert metric(text, requests, family="messages", model=MODEL, status="200") == 2
    assert metric(text, requests, family="responses", model="gpt-5", status="200") == 2
    tokens = "cf_gateway_tokens_total"
    assert metric(text, tokens, model=MODEL, kind="prompt") == 2 * ASK_TOKENS
    assert metric(text, tokens, model=MODEL, kind="completion") == TEXT_TOKENS + TOOL_TOKENS
    assert metric(text, tokens, model="gpt-5", kind="prompt") == 2 * ASK_TOKENS
    assert metric(text, tokens, model="gpt-5", kind="completion") == 2 * TEXT_TOKENS


# -- streams are relayed live --------------------------------------------------------------------


def test_held_streams_deliver_their_first_event_before_release(plain, gw):
    ant_hold, oai_hold = hold_name(), hold_name()
    ant_stream = anthropic_client(plain.url, ANT_KEY).messages.create(
        model=MODEL, max_tokens=64, messages=ASK, stream=True, extra_headers={"x-standin-hold": ant_hold}
    )
    ant_events = iter(ant_stream)
    assert isinstance(next(ant_events), RawMessageStartEvent)  # while the stand-in is blocked
    assert gw.wait_held(ant_hold)

    oai_stream = openai_client(plain.url + "/v1", OAI_KEY).responses.create(
        model="gpt-5", input="Hi", stream=True, extra_headers={"x-standin-hold": oai_hold}
    )
    oai_events = iter(oai_stream)
    assert isinstance(next(oai_events), ResponseCreatedEvent)
    assert gw.wait_held(oai_hold)

    gw.release(ant_hold)
    gw.release(oai_hold)
    assert [getattr(e, "type", None) for e in ant_events][-2:] == ["message_delta", "message_stop"]
    assert [getattr(e, "type", None) for e in oai_events][-1] == "response.completed"


# -- mitmweb: the transcript of each new family ------------------------------------------------------


@pytest.fixture
def mitmweb(gateway, tmp_path):
    p, url = start_mitmweb(gateway.base_url, tmp_path)
    ui = web_client(url, timeout=WAIT)
    yield p, ui
    ui.close()
    p.stop()


def comment_re(model: str, tokens: int) -> str:
    return rf"{re.escape(model)} · {tokens} tok · (\d+ ms|\d+\.\d s)"


def llm_view(ui: httpx.Client, flow_id: str, side: str) -> str:
    """The text mitmweb shows for a message in the 'LLM chat' view (asked for by name)."""
    got = ui.get(f"/flows/{flow_id}/{side}/content/llm%20chat.json").json()
    assert got["view_name"] == "LLM chat"
    return got["text"]


def test_mitmweb_transcripts_of_streamed_tool_turns(mitmweb, gw):
    proxy, ui = mitmweb
    with anthropic_client(proxy.url, ANT_KEY).messages.stream(
        model=MODEL, max_tokens=100, system=SYSTEM, messages=ASK, tools=ANT_TOOLS
    ) as stream:
        message = stream.get_final_message()
        ant_log_id = stream.response.headers["cf-aig-log-id"]
    (tool_use,) = message.content
    assert isinstance(tool_use, ToolUseBlock)
    events = list(
        openai_client(proxy.url + "/v1", OAI_KEY).responses.create(
            model="gpt-5", instructions=SYSTEM, input="Weather in Paris?", stream=True, tools=OAI_TOOLS
        )
    )
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    response = completed.response
    (call,) = response.output
    assert isinstance(call, ResponseFunctionToolCall)
    assert proxy.wait_output(f"log_id={ant_log_id}") and proxy.wait_output(" model=gpt-5 stream ")

    ant_flow, oai_flow = [f for f in ui.get("/flows").json() if f["type"] == "http"]
    assert re.fullmatch(comment_re(MODEL, ASK_TOKENS + TOOL_TOKENS), ant_flow["comment"])
    assert re.fullmatch(comment_re("gpt-5", ASK_TOKENS + TOOL_TOKENS), oai_flow["comment"])
    assert [v for k, v in ant_flow["request"]["headers"] if k.lower() == "authorization"] == [
        "Bearer ********v6Np"
    ]

    if not chatview.register():
        return  # mitmproxy 11 has no contentview API: the flow comment is what it shows
    assert llm_view(ui, ant_flow["id"], "request") == (
        f"model: {MODEL}\nparams: max_tokens=100 · stream=true\ntools:\n"
        "  tool get_weather(city) — Weather for a city\n\n[system]\nBe brief.\n\n[user]\nWeather in Paris?\n"
    )
    assert llm_view(ui, ant_flow["id"], "response") == (
        f"model: {MODEL}\nid: {message.id}\n"
        f"usage: input {ASK_TOKENS} · output {TOOL_TOKENS} · cache read 0 · cache write 0\n"
        "stream: 11 events, message_stop\n\n[assistant]\n"
        f'→ tool_use {tool_use.id}: get_weather({{"city": "Paris"}})\nstop_reason: tool_use\n'
    )
    assert llm_view(ui, oai_flow["id"], "request") == (
        "model: gpt-5\nparams: stream=true\ntools:\n  tool get_weather(city) — Weather for a city\n\n"
        "[instructions]\nBe brief.\n\n[user]\nWeather in Paris?\n"
    )
    assert llm_view(ui, oai_flow["id"], "response") == (
        f"model: gpt-5\nid: {response.id}\nstatus: completed\n"
        f"usage: input {ASK_TOKENS} · output {TOOL_TOKENS} · total {ASK_TOKENS + TOOL_TOKENS}\n"
        f"stream: {len(events)} events, response.completed\n\n"
        f'→ function_call {call.call_id}: get_weather({{"city": "Paris"}})\n'
    )
