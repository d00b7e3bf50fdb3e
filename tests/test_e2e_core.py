"""End to end: the three client families through a real mitmdump with the addon, in front of the stand-in.

Real clients (the openai and anthropic SDKs, httpx) talk to real mitmdump processes; the stand-in
records what reaches it. Processes are shared per module where their options allow.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.harness import (
    ACCOUNT_ID,
    GATEWAY_ID,
    ROOT,
    UNSERVABLE,
    Proxy,
    free_port,
    quick_env,
    raw_exchange,
    run_mitmdump,
    split_answer,
    start_proxy,
    wait_for,
)

TOKEN = "core-gateway-token-0123456789"
PREFIX = f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}"
TIMEOUT = 15.0  # seconds; the SDKs take a number (their own httpx fork)
CHAT = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
UNUSED_VARIABLE = "CF_CORE_TYPO_SETTING"
RFC3339_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def core(gateway, tmp_path_factory):
    """Token injected, no access keys, text lines, default verbosity; a CF_* variable no option reads."""
    p = start_proxy(
        gateway.base_url,
        workdir=tmp_path_factory.mktemp("core"),
        env=quick_env(CF_AIG_TOKEN=TOKEN, **{UNUSED_VARIABLE: "1"}),
    )
    yield p
    p.stop()


@pytest.fixture(scope="module")
def json_proxy(gateway, tmp_path_factory):
    """JSON request lines to the console and a file; mitmproxy's debug lines on."""
    workdir = tmp_path_factory.mktemp("json")
    log_file = workdir / "requests.jsonl"
    p = start_proxy(
        gateway.base_url,
        workdir=workdir,
        options={"cf_log_format": "json", "cf_log_file": str(log_file), "termlog_verbosity": "debug"},
        env=quick_env(CF_AIG_TOKEN=TOKEN),
    )
    p.log_file = log_file  # type: ignore[attr-defined]
    yield p
    p.stop()


def oai(p: Proxy, base: str = "/v1", timeout: float = TIMEOUT) -> openai.OpenAI:
    return openai.OpenAI(base_url=p.url + base, api_key="unused", max_retries=0, timeout=timeout)


def claude(p: Proxy, base: str = "") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=p.url + base, api_key="unused", max_retries=0, timeout=TIMEOUT)


def upstream(gw) -> list[tuple[str, str, str]]:
    """(method, path, query) of every request the stand-in received."""
    return [(r.method, r.path, r.query) for r in gw.requests]


def assert_credentials(gw) -> None:
    """Every forwarded request carries the proxy's token and none of the client's keys."""
    for r in gw.requests:
        assert r.header("cf-aig-authorization") == f"Bearer {TOKEN}"
        assert r.header("authorization") is None and r.header("x-api-key") is None


# -- the three families -----------------------------------------------------------------------


@pytest.mark.parametrize("base", ["", "/v1"])
def test_chat_completions_openai_sdk(core, gw, base):
    """Chat, JSON and streamed, from either base URL, reaches exactly .../compat/chat/completions."""
    client = oai(core, base)
    reply = client.chat.completions.create(model="openai/gpt-4o-mini", messages=CHAT)
    assert reply.choices[0].message.content == "Hello from the stand-in gateway."
    assert reply.usage and reply.usage.total_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the stand-in gateway."
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens > 0
    assert upstream(gw) == [("POST", f"{PREFIX}/compat/chat/completions", "")] * 2
    assert_credentials(gw)


def test_messages_anthropic_sdk(core, gw):
    """Messages, JSON and streamed; anthropic 2.17 sends its key as Authorization: Bearer: dropped."""
    client = claude(core)
    msg = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=CHAT)
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello from the stand-in gateway."
    assert msg.usage.input_tokens > 0
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=CHAT) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the stand-in gateway."
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert upstream(gw) == [("POST", f"{PREFIX}/anthropic/v1/messages", "")] * 2
    assert_credentials(gw)
    assert all(r.header("anthropic-version") for r in gw.requests)


def test_messages_query_kept(core, gw):
    """Claude Code sends /v1/messages?beta=true: the query reaches the upstream byte for byte."""
    msg = claude(core).messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=CHAT, extra_query={"beta": "true"}
    )
    assert msg.content[0].text == "Hello from the stand-in gateway."
    r = httpx.post(
        core.url + "/v1/messages?beta=true&x=%2Fy",
        json={"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": CHAT},
        headers={"anthropic-version": "2023-06-01"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert upstream(gw) == [
        ("POST", f"{PREFIX}/anthropic/v1/messages", "beta=true"),
        ("POST", f"{PREFIX}/anthropic/v1/messages", "beta=true&x=%2Fy"),
    ]


@pytest.mark.parametrize("base", ["", "/v1"])
def test_responses_streamed_function_call(core, gw, base):
    """Responses, streamed, with a function call; 'openai/gpt-5' goes to the openai route as 'gpt-5'."""
    events = list(
        oai(core, base).responses.create(
            model="openai/gpt-5", input="Weather in Paris?", tools=[WEATHER_TOOL], stream=True
        )
    )
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in types
    done = [e for e in events if e.type == "response.output_item.done"]
    call = done[-1].item
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "example"}  # the stand-in fills required properties
    assert events[-1].response.usage.total_tokens > 0
    assert upstream(gw) == [("POST", f"{PREFIX}/openai/responses", "")]
    assert gw.requests[0].json()["model"] == "gpt-5"
    assert_credentials(gw)


PATHS = [
    ("POST", "/v1/chat/completions", f"{PREFIX}/compat/chat/completions", ""),
    ("POST", "/chat/completions", f"{PREFIX}/compat/chat/completions", ""),
    ("POST", "/v1/messages/count_tokens", f"{PREFIX}/anthropic/v1/messages/count_tokens", ""),
    ("POST", "/messages", f"{PREFIX}/anthropic/v1/messages", ""),
    ("POST", "/v1/responses", f"{PREFIX}/openai/responses", ""),
    ("GET", "/v1/responses/r1/input_items?limit=2", f"{PREFIX}/openai/responses/r1/input_items", "limit=2"),
    ("POST", "/v1/embeddings", f"{PREFIX}/compat/embeddings", ""),
    ("GET", "/v1/models?limit=5", f"{PREFIX}/compat/models", "limit=5"),
    ("GET", "/v1x/foo", f"{PREFIX}/compat/v1x/foo", ""),
]  # fmt: skip


def test_upstream_paths_are_the_documented_ones(core, gw):
    """Each client path reaches exactly its documented gateway path, query byte for byte."""
    with httpx.Client(base_url=core.url, timeout=TIMEOUT) as client:
        for method, path, _, _ in PATHS:
            client.request(method, path, json={"model": "x"} if method == "POST" else None)
    assert upstream(gw) == [(m, up, q) for m, _, up, q in PATHS]
    assert {r.header("host") for r in gw.requests} == {gw.base_url.removeprefix("http://")}


def test_upstream_host_without_a_client_host(core, gw):
    """An HTTP/1.0 request without Host still reaches the stand-in with its Host."""
    answer = raw_exchange(core.port, b"GET /v1/models HTTP/1.0\r\n\r\n")
    assert split_answer(answer)[0] == 200
    assert [(r.path, r.header("host")) for r in gw.requests] == [
        (f"{PREFIX}/compat/models", gw.base_url.removeprefix("http://"))
    ]


# -- streaming ------------------------------------------------------------------------------


def test_chat_stream_relayed_live(core, gw):
    """The first event reaches the client while the stand-in still holds the rest of the stream.

    Bound: the client's read timeout is 5 s and the stand-in holds 30 s, so a buffering proxy fails here.
    """
    hold = f"live-{uuid.uuid4().hex[:8]}"
    client = oai(core, timeout=5.0)
    stream = client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=CHAT, stream=True, extra_headers={"x-standin-hold": hold}
    )
    try:
        it = iter(stream)
        first = next(it)
        assert gw.wait_held(hold, timeout=1)  # the stand-in has not sent more than the first event
        assert first.choices[0].delta.role == "assistant"
        gw.release(hold)
        rest = "".join(c.choices[0].delta.content or "" for c in it if c.choices)
    finally:
        gw.release(hold)
        stream.close()
    assert rest == "Hello from the stand-in gateway."


def test_messages_stream_first_event_before_upstream_finishes(core, gw):
    """Bound: with 250 ms between the stand-in's events, the first text arrives long before the last."""
    client = claude(core)
    start = time.monotonic()
    arrivals = []
    with client.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=CHAT,
        extra_headers={"x-standin-delay-ms": "250", "x-standin-events": "5"},
    ) as stream:
        for _ in stream.text_stream:
            arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 5
    assert arrivals[-1] >= 1.0  # the stand-in really paced its events (at least 4 pauses of 250 ms)
    assert arrivals[0] < arrivals[-1] - 0.7, arrivals


# -- the console and the log file -------------------------------------------------------------


def test_one_console_line_per_request(core, gw):
    """Bound: exactly one line names each request; no connect/disconnect chatter by default."""
    marker = f"line-check-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=core.url, timeout=TIMEOUT) as client:
        for i in range(3):
            client.post(f"/v1/{marker}-{i}", json={"model": "openai/gpt-4o-mini"})
    for i in range(3):
        assert core.wait_output(f"/v1/{marker}-{i} ")
    out = core.output()
    for i in range(3):
        assert len([line for line in out.splitlines() if f"{marker}-{i}" in line]) == 1, out
    for chatter in ("client connect", "server connect", "client disconnect", "server disconnect"):
        assert chatter not in out


def test_debug_verbosity_brings_connection_lines_back(json_proxy, gw):
    oai(json_proxy).chat.completions.create(model="openai/gpt-4o-mini", messages=CHAT)
    assert json_proxy.wait_output("server connect")
    assert "client connect" in json_proxy.output()


def test_json_log_lines(json_proxy, gw):
    """Every line of cf_log_file is one JSON object with an RFC 3339 UTC time with milliseconds."""
    client = oai(json_proxy)
    client.chat.completions.create(model="openai/gpt-4o-mini", messages=CHAT)
    list(
        client.chat.completions.create(
            model="openai/gpt-4o-mini", messages=CHAT, stream=True, stream_options={"include_usage": True}
        )
    )
    httpx.get(json_proxy.url + "/v1/models", timeout=TIMEOUT)
    log_file: Path = json_proxy.log_file
    assert wait_for(lambda: log_file.exists() and len(log_file.read_text().splitlines()) >= 3)
    lines = log_file.read_text().splitlines()
    now = datetime.now(UTC)
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict)
        assert RFC3339_MS_UTC.fullmatch(record["time"]), record["time"]
        assert abs((now - datetime.fromisoformat(record["time"])).total_seconds()) < 120
    chats = [json.loads(line) for line in lines if '"family":"chat"' in line]
    assert [r["stream"] for r in chats[-2:]] == [False, True]
    assert all(r["status"] == 200 and r["output_tokens"] > 0 for r in chats[-2:])
    # the console carries the same JSON objects
    assert json_proxy.wait_output(lines[-1])


def test_unused_cf_variable_warns(core):
    assert core.wait_output(f"{UNUSED_VARIABLE} is set but no option reads it")


# -- errors ---------------------------------------------------------------------------------


def test_unreachable_upstream_is_502(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    p = start_proxy(dead, workdir=tmp_path, env=quick_env(CF_AIG_TOKEN=TOKEN))
    try:
        with pytest.raises(openai.InternalServerError) as e:
            oai(p).chat.completions.create(model="openai/gpt-4o-mini", messages=CHAT)
        assert e.value.status_code == 502
        r = httpx.post(p.url + "/v1/messages", json={"model": "m"}, timeout=TIMEOUT)
        assert r.status_code == 502
        assert p.wait_output("POST /v1/messages messages ->")
    finally:
        p.stop()


def test_doubled_v1_answered_locally(core, gw):
    with pytest.raises(openai.NotFoundError) as e:
        oai(core, "/v1/v1").chat.completions.create(model="openai/gpt-4o-mini", messages=CHAT)
    assert e.value.code == "doubled_v1" and "drop /v1" in e.value.message
    with pytest.raises(anthropic.NotFoundError) as a:
        claude(core, "/v1").messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=CHAT)
    body = a.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and "drop /v1" in body["error"]["message"]
    assert gw.requests == []


def test_gateway_error_2008_reshaped_with_hint(core, gw):
    """A bare model on compat: the stand-in's 2008 arrives in OpenAI's shape with the provider/model hint."""
    with pytest.raises(openai.BadRequestError) as e:
        oai(core).chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert e.value.status_code == 400 and str(e.value.code) == "2008"
    assert isinstance(e.value.body, dict) and e.value.body["code"] == 2008
    assert "openai/gpt-4o-mini" in e.value.message and "Invalid provider" in e.value.message
    assert len(gw.requests) == 1
    assert core.wait_output("Cloudflare error 2008: the compat endpoint wants provider/model names")


# -- startup --------------------------------------------------------------------------------


def test_startup_refuses_bad_options():
    """An unknown option, a repeated one and a bad value stop startup (exit 1), each with a clear line.

    The first two are found together when the addon loads; a bad value is found when it configures.
    """
    base = ["--mode", f"reverse:{UNSERVABLE}@127.0.0.1:0", "--set", "connection_strategy=lazy"]
    good = ["--set", f"cf_account_id={ACCOUNT_ID}"]
    runs = {
        "names": [
            *base,
            *good,
            "--set",
            "cf_tokn=x",
            "--set",
            "cf_log_format=json",
            "--set",
            "cf_log_format=json",
        ],
        "bad": [*base, "--set", "cf_account_id=abc"],
    }
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        futures = {k: pool.submit(run_mitmdump, args, quick_env(), None, 60) for k, args in runs.items()}
        done = {k: f.result() for k, f in futures.items()}
    for name, r in done.items():
        assert r.returncode != 0, (name, r.stdout, r.stderr)
    assert "unknown option cf_tokn: did you mean cf_token?" in done["names"].stdout
    assert "cf_log_format (env CF_LOG_FORMAT) is given more than once" in done["names"].stdout
    assert "cf_account_id (env ACCOUNT_ID) must be 32 lowercase hexadecimal characters, got 'abc'" in (
        done["bad"].stdout
    )


def test_fail_closed_when_the_addon_breaks(gateway, tmp_path):
    """A copy of addons/ loads and forwards; after a syntax error in cfgw/gateway.py (reloaded as a
    user's edit is), nothing reaches the stand-in and clients get 502."""
    shutil.copytree(ROOT / "addons", tmp_path / "addons", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "run").mkdir()
    script = tmp_path / "addons" / "cf_gateway.py"
    p = start_proxy(
        gateway.base_url,
        workdir=tmp_path / "run",
        addon=False,
        reverse_target=UNSERVABLE,
        extra_args=["-s", str(script)],
        env=quick_env(
            ACCOUNT_ID=ACCOUNT_ID, GATEWAY_ID=GATEWAY_ID, CF_BASE_URL=gateway.base_url, CF_AIG_TOKEN=TOKEN
        ),
    )
    try:
        client = oai(p)
        assert client.chat.completions.create(model="openai/gpt-4o-mini", messages=CHAT).choices
        gateway.clear()
        gateway_py = tmp_path / "addons" / "cfgw" / "gateway.py"
        gateway_py.write_text(gateway_py.read_text() + "\ndef broken(:\n")
        later = time.time() + 5
        os.utime(script, (later, later))  # what a user does after editing a module
        assert wait_for(lambda: "SyntaxError" in p.output(), 15), p.output()
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="openai/gpt-4o-mini", messages=CHAT)
        assert e.value.status_code == 502
        r = httpx.post(p.url + "/v1/messages", json={"model": "claude-sonnet-4-5"}, timeout=TIMEOUT)
        assert r.status_code == 502
        assert gateway.requests == []
    finally:
        p.stop()
