"""End to end: real mitmdump + the addon in front of the stand-in gateway, with real clients."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import httpx
import openai
import pytest

from tests.harness import ACCOUNT_ID, GATEWAY_ID, UNSERVABLE, free_port, raw_exchange, run_mitmdump

PREFIX = f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}/compat"
CHAT: dict[str, Any] = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.mark.parametrize("suffix", ["/v1", ""])
def test_openai_sdk_chat_completion(proxy, gw, suffix):
    client = openai.OpenAI(base_url=proxy.url + suffix, api_key="sk-test-provider-key", max_retries=0)
    done = client.chat.completions.create(**CHAT)
    assert done.choices[0].message.content == "Hello from the stand-in gateway."
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    (req,) = gw.requests
    assert (req.method, req.path) == ("POST", f"{PREFIX}/chat/completions")
    assert req.header("authorization") == "Bearer sk-test-provider-key"
    assert req.header("host") == f"127.0.0.1:{gw.port}"
    assert req.json() == CHAT


def test_openai_sdk_stream(proxy, gw):
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0)
    stream = client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the stand-in gateway."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_openai_sdk_embeddings_and_models(proxy, gw):
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0)
    emb = client.embeddings.create(model="workers-ai/@cf/baai/bge-base-en-v1.5", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    models = client.models.list()
    assert any(m.id == "openai/gpt-4o-mini" for m in models.data)
    assert [r.path for r in gw.requests] == [f"{PREFIX}/embeddings", f"{PREFIX}/models"]


def test_gateway_errors_reach_the_sdk_in_its_shape(proxy, gw):
    """The gateway's own error (its ``error`` is an array) is reshaped so the SDK names its message
    and code; the gateway's other top-level fields are kept."""
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="openai/gpt-4o-mini", prompt="hi")
    assert e.value.status_code == 400 and e.value.code == "2019"  # the SDK keeps codes as text
    message = "Compatibility endpoint: completions is not supported. (AI Gateway error 2019)"
    assert message in str(e.value)
    body = e.value.response.json()
    assert body["error"] == {"message": message, "type": "gateway_error", "param": None, "code": 2019}
    assert (body["name"], body["internalCode"]) == ("AiGatewayError", 2019)
    assert [r.path for r in gw.requests] == [f"{PREFIX}/completions"]


def test_responses_go_to_the_openai_endpoint(proxy, gw):
    """By default /v1/responses goes to the gateway's openai route (not compat), with the bare model."""
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0)
    done = client.responses.create(model="openai/gpt-4o-mini", input="hi")
    assert done.output_text == "Hello from the stand-in gateway."
    (req,) = gw.requests
    assert req.path == f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}/openai/responses"
    assert req.json() == {"model": "gpt-4o-mini", "input": "hi"}


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
def test_every_method_query_headers_and_body_pass_through(proxy, gw, method):
    body = b"" if method in ("GET", "HEAD", "OPTIONS") else b'{"any": "body", "not": json'
    r = httpx.request(
        method,
        proxy.url + "/v1/files/file-1?b=2&a=%2F&empty=&flag&x=%7E",
        headers={"x-standin-echo": "1", "authorization": "Bearer sk-pass", "x-custom": "kept"},
        content=body,
    )
    assert r.status_code == 200
    (req,) = gw.requests
    assert req.method == method
    assert req.path == f"{PREFIX}/files/file-1"
    assert req.query == "b=2&a=%2F&empty=&flag&x=%7E"
    assert req.header("authorization") == "Bearer sk-pass"
    assert req.header("x-custom") == "kept"
    assert req.body == body
    assert r.headers["cf-aig-log-id"]  # response headers come back
    if method != "HEAD":
        assert r.json()["method"] == method


@pytest.mark.parametrize(
    ("status", "retry_after"), [(401, None), (404, None), (429, "17"), (500, None), (503, "3")]
)
def test_provider_status_body_and_headers_pass_through(proxy, gw, status, retry_after):
    headers = {"x-standin-status": str(status)}
    if retry_after:
        headers["x-standin-retry-after"] = retry_after
    r = httpx.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == status
    assert r.json()["error"]["message"] == f"Stand-in provider error {status}"
    assert r.headers.get("retry-after") == retry_after
    assert r.headers["server"] == "cloudflare"


def test_gzip_json_passes_through_encoded(proxy, gw):
    with httpx.Client() as c:
        r = c.post(proxy.url + "/v1/chat/completions", json=CHAT, headers={"accept-encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip"
    assert r.json()["object"] == "chat.completion"


def test_curl(proxy, gw):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    out = subprocess.run(
        [
            curl,
            "-sS",
            "--http1.1",
            proxy.url + "/chat/completions",
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps(CHAT),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert json.loads(out)["choices"][0]["message"]["content"] == "Hello from the stand-in gateway."
    assert gw.requests[0].path == f"{PREFIX}/chat/completions"


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/../../other/compat/x",
        b"/v1/%2e%2e/x",
        b"/v1/chat%2Fcompletions",
        b"/v1/a%5Cb",
        b"/v1//chat",
        b"/v1/chat\\x",
        b"/v1/%252e%252e/x",
        b"/v1/\xc3\xa9",
        b"/v1/messages/%2e%2e/x",
        b"/v1/responses/../../compat/x",
    ],
)
def test_unsafe_paths_answered_400_and_never_forwarded(proxy, gw, target):
    """Refused in the shape of the client's API: Anthropic's for /v1/messages, OpenAI's elsewhere."""
    answer = raw_exchange(
        proxy.port, b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"application/json" in head.lower()
    error = json.loads(body)
    if target.startswith(b"/v1/messages"):
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    else:
        assert "type" not in error and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == "invalid_path"
    assert error["error"]["message"].startswith("Refused request path: the ")
    assert gw.requests == []


def test_absolute_form_request_line(proxy, gw):
    answer = raw_exchange(
        proxy.port,
        f"GET http://127.0.0.1:{proxy.port}/v1/models HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 200")
    assert gw.requests[0].path == f"{PREFIX}/models"
    assert gw.requests[0].header("host") == f"127.0.0.1:{gw.port}"


def test_http2_client(make_proxy, gw):
    """curl over TLS with ALPN h2 (httpx offers http/1.1 first, and mitmproxy honours client order)."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    # As in production the reverse target is https (the addon rewrites to the stand-in's http URL),
    # which is what makes mitmproxy offer h2 to TLS clients.
    p = make_proxy(reverse_target="https://gateway.ai.cloudflare.com")
    ca = p.workdir / "conf" / "mitmproxy-ca-cert.pem"
    out = subprocess.run(
        [
            curl,
            "-sS",
            "--http2",
            "--cacert",
            str(ca),
            "-w",
            "\n%{http_version}",
            "-H",
            "content-type: application/json",
            "-d",
            json.dumps(CHAT),
            f"https://127.0.0.1:{p.port}/v1/chat/completions",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    body, version = out.rsplit("\n", 1)
    assert version == "2"
    assert json.loads(body)["object"] == "chat.completion"
    assert gw.requests[0].path == f"{PREFIX}/chat/completions"
    assert gw.requests[0].header("host") == f"127.0.0.1:{gw.port}"


def test_one_info_line_per_flow_and_no_secret(make_proxy, gw):
    p = make_proxy()
    secret = "live-secret-value-abcdefghijklmnop"
    for i in range(3):
        r = httpx.post(
            p.url + f"/v1/chat/completions?i={i}", json=CHAT, headers={"authorization": f"Bearer {secret}"}
        )
        assert r.status_code == 200
    assert p.wait_output(f"-> compat http://127.0.0.1:{gw.port}{PREFIX}/chat/completions 200")
    p.stop()
    out = p.output()
    lines = [line for line in out.splitlines() if "POST /v1/chat/completions chat -> compat " in line]
    assert len(lines) == 3, out
    for line in lines:  # the stand-in counts words: 2 in, and its reply's 5 out
        assert " model=openai/gpt-4o-mini " in line and line.endswith(" tokens=2 in/5 out"), line
    assert secret not in out and secret[-12:] not in out


def test_unreachable_gateway_gives_mitmproxys_502(make_proxy, gw):
    """The original contract, with ./run.sh's arguments (reverse target port 0, lazy connections,
    one line per request): a gateway nobody answers at gives mitmproxy's own 502, naming the
    gateway's address (not port 0: the addon did aim the flow), and the proxy keeps serving."""
    dead_port = free_port()
    p = make_proxy(upstream=f"http://127.0.0.1:{dead_port}", extra_args=["--set", "flow_detail=0"])
    assert f"reverse:{UNSERVABLE}@" in " ".join(p.proc.args)
    r = httpx.post(p.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 502
    assert r.headers["server"].startswith("mitmproxy ") and r.headers["content-type"] == "text/html"
    assert f"Connect call failed (&#x27;127.0.0.1&#x27;, {dead_port})" in r.text
    upstream = f"http://127.0.0.1:{dead_port}{PREFIX}/chat/completions"
    assert p.wait_output(f"POST /v1/chat/completions chat -> compat {upstream} 502 upstream_failed ")
    assert p.wait_output("upstream failed before a response")
    # and the proxy keeps serving
    r = httpx.get(p.url + "/healthz")
    assert r.json() == {"status": "ok"}
    assert gw.requests == []


def test_regular_mode_listener_is_left_alone(make_proxy, gw):
    regular = free_port()
    p = make_proxy(extra_args=["--mode", f"regular@127.0.0.1:{regular}"])
    with httpx.Client(proxy=f"http://127.0.0.1:{regular}") as c:
        r = c.get(f"http://127.0.0.1:{gw.port}/v1/{ACCOUNT_ID}/{GATEWAY_ID}/compat/models?x=1")
    assert r.status_code == 200
    assert gw.requests[0].path == f"{PREFIX}/models"  # not prefixed twice
    with httpx.Client(proxy=f"http://127.0.0.1:{regular}") as c:
        r = c.get(f"http://127.0.0.1:{gw.port}/v1/../healthz-not-checked")
    assert gw.requests[-1].path.endswith("healthz-not-checked")  # no path checks either
    assert p.proc.poll() is None


@pytest.mark.parametrize(
    ("env", "options", "message"),
    [
        ({}, {}, "cf_account_id (env ACCOUNT_ID) is required"),
        ({"ACCOUNT_ID": "nothex"}, {}, "cf_account_id (env ACCOUNT_ID) must be 32 lowercase hexadecimal"),
        (
            {"ACCOUNT_ID": ACCOUNT_ID, "GATEWAY_ID": "My Gateway"},
            {},
            "cf_gateway_id (env GATEWAY_ID) must be 1-64 characters",
        ),
        (
            {"ACCOUNT_ID": ACCOUNT_ID, "GATEWAY_ID": "gw", "CF_BASE_URL": "https://x.example/v1"},
            {},
            "cf_base_url (env CF_BASE_URL) must be scheme://host[:port] without path",
        ),
        (
            {"ACCOUNT_ID": ACCOUNT_ID, "GATEWAY_ID": "gw"},
            {"cf_record_limit": "lots"},
            "cf_record_limit (env CF_RECORD_LIMIT)",
        ),
        (
            {"ACCOUNT_ID": ACCOUNT_ID, "GATEWAY_ID": "gw", "PROXY_KEYS": "@/nonexistent/keys.txt"},
            {},
            "cf_proxy_keys (env PROXY_KEYS) cannot read key file",
        ),
    ],
)
def test_startup_failures_exit_1_naming_the_setting(env, options, message):
    port = free_port()
    args = ["--mode", f"reverse:http://127.0.0.1:1@127.0.0.1:{port}"]
    for k, v in options.items():
        args += ["--set", f"{k}={v}"]
    done = run_mitmdump(args, env=env)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert message in out
    assert "Traceback" not in out
