"""End to end: real mitmdump + the addon in front of the stand-in gateway, with real clients."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import openai
import pytest

from tests.harness import ACCOUNT_ID, GATEWAY_ID, free_port, raw_exchange, run_mitmdump

PREFIX = f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}/compat"
CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


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


def test_gateway_errors_pass_through(proxy, gw):
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="openai/gpt-4o-mini", input="hi")
    assert e.value.status_code == 400
    body = e.value.response.json()
    assert body["error"][0]["code"] == 2019 and body["name"] == "AiGatewayError"
    assert gw.requests[0].path == f"{PREFIX}/responses"


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
    ],
)
def test_unsafe_paths_answered_400_and_never_forwarded(proxy, gw, target):
    answer = raw_exchange(proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "invalid_path"
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
    assert p.wait_output(f"-> http://127.0.0.1:{gw.port}{PREFIX}/chat/completions 200")
    p.stop()
    out = p.output()
    lines = [line for line in out.splitlines() if "POST /v1/chat/completions ->" in line]
    assert len(lines) == 3, out
    assert "model=openai/gpt-4o-mini" in lines[0] and "tokens=" in lines[0]
    assert secret not in out and secret[-12:] not in out


def test_upstream_down_gives_502(make_proxy, gw):
    dead = f"http://127.0.0.1:{free_port()}"
    p = make_proxy(upstream=dead)
    r = httpx.post(p.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 502
    assert p.wait_output("upstream failed before a response")
    # and the proxy keeps serving
    r = httpx.get(p.url + "/healthz")
    assert r.json() == {"status": "ok"}


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
        ({"ACCOUNT_ID": ACCOUNT_ID}, {}, "cf_gateway_id (env GATEWAY_ID) is required"),
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
