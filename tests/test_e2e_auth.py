"""End to end: access keys, gateway token and secret hygiene through a real mitmdump."""

from __future__ import annotations

import socket
import threading
from typing import Any

import httpx
import openai
import pytest
from mitmproxy import io

from tests.harness import ACCOUNT_ID, GATEWAY_ID, free_port, run_mitmdump, start_proxy
from tests.standin_gateway import StandinGateway

PREFIX = f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}/compat"
CHAT: dict[str, Any] = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
MASK = "********"

# Fixed secrets with distinctive tails: none can turn up by chance in ids, hex or prose.
KEY_A = "pk-alpha-Qz7vWx2LmNpRtYkJhG"
KEY_B = "pk-bravo-Hd9sUe4FcVbXoZqWmT"
TOKEN = "cfat-Tq8RwE3yUiOpLkJhGfDsZx"
PROVIDER_KEY = "prov-key-Zx4CvBnM7aSdFgHjKlPq"
AZURE_KEY = "az-Wm3NbVcXzLkJhGfDsAqPoI"
CLIENT_TOKEN = "cfut-Yb6TgRfEdCvBnMjKiLoPu"
WRONG_KEY = "pk-guess-Rv5EcWxQaZsXdCfVgB"
STRAY_KEY = "pk-stray-Jn2MkLoPiUyTrEwQaS"
BASIC = "dXNlcjpQdzlYcTJMbVpyVmtXcQ=="
PROVIDER_HEADERS = {"x-api-key": PROVIDER_KEY, "api-key": AZURE_KEY}
SECRETS = (KEY_A, KEY_B, TOKEN, PROVIDER_KEY, AZURE_KEY, CLIENT_TOKEN, WRONG_KEY, STRAY_KEY, BASIC)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def log_lines(output: str) -> list[str]:
    """The event-log lines (timestamped), not mitmdump's own flow dump."""
    return [line for line in output.splitlines() if line.startswith("[")]


def assert_no_secret(where: str, text: str | bytes) -> None:
    """Neither a secret nor any tail of it longer than the 4 characters a mask may keep."""
    for secret in SECRETS:
        tail = secret[-5:]
        found = tail.encode() in text if isinstance(text, bytes) else tail in text
        assert not found, f"{where} holds (a tail of) secret {secret[:8]}..."


@pytest.fixture(scope="module")
def keyed_proxy(gateway, tmp_path_factory):
    """Access keys from a file (with comments) plus an injected gateway token."""
    workdir = tmp_path_factory.mktemp("keyed")
    keyfile = workdir / "proxy-keys.txt"
    keyfile.write_text(f"# cf-gateway access keys\n\n{KEY_A}\n  # {KEY_B} was rotated in below\n{KEY_B}\n")
    p = start_proxy(
        gateway.base_url, options={"cf_proxy_keys": f"@{keyfile}", "cf_token": TOKEN}, workdir=workdir
    )
    yield p
    p.stop()


def test_startup_line_names_the_mode_never_a_secret(keyed_proxy):
    assert keyed_proxy.wait_output("gateway token injected")
    out = keyed_proxy.output()
    assert "access keys: 2 keys (file " in out and "proxy-keys.txt)" in out
    assert_no_secret("startup output", out)


def test_valid_key_reaches_gateway_without_authorization_and_with_token(keyed_proxy, gw):
    client = openai.OpenAI(base_url=keyed_proxy.url + "/v1", api_key=KEY_A, max_retries=0)
    done = client.chat.completions.create(**CHAT)
    assert done.choices[0].message.content == "Hello from the stand-in gateway."
    stream = client.chat.completions.create(**CHAT, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert len(gw.requests) == 2
    for req in gw.requests:
        assert req.path == f"{PREFIX}/chat/completions"
        assert req.header_values("authorization") == []
        assert req.header_values("cf-aig-authorization") == [f"Bearer {TOKEN}"]


def test_second_key_and_lowercase_scheme_accepted(keyed_proxy, gw):
    r = httpx.get(keyed_proxy.url + "/v1/models", headers={"Authorization": f"bearer {KEY_B}"})
    assert r.status_code == 200
    (req,) = gw.requests
    assert req.header("authorization") is None


def test_proxy_token_wins_and_client_gateway_headers_are_stripped(keyed_proxy, gw):
    """Key mode: a client cannot bring its own gateway token, logging, caching or cost headers."""
    client_headers = {
        "cf-aig-authorization": f"Bearer {CLIENT_TOKEN}",
        "cf-aig-collect-log": "false",
        "cf-aig-custom-cost": '{"per_token_in": 0}',
        "cf-aig-cache-key": "shared",
    }
    r = httpx.post(
        keyed_proxy.url + "/v1/chat/completions", json=CHAT, headers={**bearer(KEY_A), **client_headers}
    )
    assert r.status_code == 200
    (req,) = gw.requests
    assert [name for name, _ in req.headers if name.lower().startswith("cf-aig-")] == ["cf-aig-authorization"]
    assert req.header_values("cf-aig-authorization") == [f"Bearer {TOKEN}"]


def test_x_api_key_is_an_access_key_and_removed(keyed_proxy, gw):
    """Anthropic clients send their key as x-api-key: it admits them and never reaches the gateway."""
    r = httpx.get(keyed_proxy.url + "/v1/models", headers={"x-api-key": KEY_B})
    assert r.status_code == 200
    (req,) = gw.requests
    assert req.header_values("x-api-key") == [] and req.header_values("authorization") == []
    assert req.header_values("cf-aig-authorization") == [f"Bearer {TOKEN}"]
    r = httpx.get(keyed_proxy.url + "/v1/models", headers={"x-api-key": WRONG_KEY})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_proxy_key"
    assert len(gw.requests) == 1


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({}, "Missing"),
        (bearer(WRONG_KEY), "Invalid"),
        (bearer(KEY_A[:-1]), "Invalid"),
        ({"authorization": KEY_A}, "Invalid"),  # no scheme
        ({"authorization": f"Basic {BASIC}"}, "Invalid"),
        ({"authorization": f"Bearer {KEY_A} {KEY_B}"}, "Invalid"),
        ({"authorization": "Bearer"}, "Invalid"),
    ],
)
def test_missing_wrong_or_malformed_key_is_401_and_not_forwarded(keyed_proxy, gw, headers, problem):
    r = httpx.post(keyed_proxy.url + "/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "invalid_proxy_key" and error["message"].startswith(problem)
    assert_no_secret("401 body", r.text)
    assert gw.requests == []


def test_openai_sdk_sees_a_401_as_authentication_error(keyed_proxy, gw):
    client = openai.OpenAI(base_url=keyed_proxy.url + "/v1", api_key=WRONG_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(**CHAT)
    assert e.value.status_code == 401 and e.value.code == "invalid_proxy_key"
    assert gw.requests == []


def test_health_without_key_never_forwarded_nor_logged(keyed_proxy, gw):
    before = len(log_lines(keyed_proxy.output()))
    r = httpx.get(keyed_proxy.url + "/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    with socket.create_connection(("127.0.0.1", keyed_proxy.port), timeout=10) as s:
        s.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b""
    # a marker request whose log line shows the health checks before it were not logged
    httpx.get(keyed_proxy.url + "/v1/models?after-health", headers=bearer(KEY_A))
    assert keyed_proxy.wait_output("GET /v1/models other -> compat ")
    new = log_lines(keyed_proxy.output())[before:]
    assert not [line for line in new if "healthz" in line], new
    assert [r.path for r in gw.requests] == [f"{PREFIX}/models"]


def test_metrics_need_a_key_and_are_never_forwarded(keyed_proxy, gw):
    assert httpx.get(keyed_proxy.url + "/metrics").status_code == 401
    assert httpx.get(keyed_proxy.url + "/metrics", headers=bearer(WRONG_KEY)).status_code == 401
    r = httpx.get(keyed_proxy.url + "/metrics", headers=bearer(KEY_B))
    assert r.status_code == 200 and "cf_gateway_requests_total" in r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert gw.requests == []


def test_gateway_requiring_a_token(make_proxy):
    """A second stand-in that insists on cf-aig-authorization, as an authenticated gateway does."""
    with StandinGateway(require_token=TOKEN) as strict:
        injecting = make_proxy(
            upstream=strict.base_url, env={"CF_AIG_TOKEN": TOKEN, "PROXY_KEYS": f"{KEY_A}, {KEY_B}"}
        )
        plain = make_proxy(upstream=strict.base_url)

        client = openai.OpenAI(base_url=injecting.url + "/v1", api_key=KEY_B, max_retries=0)
        assert client.chat.completions.create(**CHAT).choices[0].message.content
        assert strict.requests[-1].header("cf-aig-authorization") == f"Bearer {TOKEN}"

        # with access keys the proxy's token wins over the client's own (wrong) one
        r = httpx.post(
            injecting.url + "/v1/chat/completions",
            json=CHAT,
            headers={**bearer(KEY_A), "cf-aig-authorization": f"Bearer {CLIENT_TOKEN}"},
        )
        assert r.status_code == 200
        assert strict.requests[-1].header_values("cf-aig-authorization") == [f"Bearer {TOKEN}"]

        # no token configured: the gateway's own 401 reaches the client in the SDK's shape, with
        # Cloudflare's code and its other fields; the proxy says what to do, once per process
        client = openai.OpenAI(base_url=plain.url + "/v1", api_key=PROVIDER_KEY, max_retries=0)
        for _ in range(2):
            with pytest.raises(openai.AuthenticationError) as e:
                client.chat.completions.create(**CHAT)
        body = e.value.response.json()
        message = "Unauthorized (AI Gateway error 2009)"
        assert body["error"] == {"message": message, "type": "gateway_error", "param": None, "code": 2009}
        assert message in str(e.value)
        assert body["name"] == "AiGatewayError"
        assert e.value.response.headers["server"] == "cloudflare"
        assert strict.requests[-1].header("authorization") == f"Bearer {PROVIDER_KEY}"
        assert strict.requests[-1].header("cf-aig-authorization") is None
        hint = "the gateway answered 401/2009: the gateway requires authentication"
        assert plain.wait_output("gateway_code=2009", timeout=10)
        assert plain.output().count(hint) == 1, plain.output()


def session_traffic(p) -> None:
    """Every kind of flow that carries a secret: answered, streamed, refused, local, failed."""
    url = p.url + "/v1/chat/completions"
    stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    assert httpx.post(url, json=CHAT, headers={**bearer(KEY_A), **PROVIDER_HEADERS}).status_code == 200
    assert httpx.post(url, json=stream, headers=bearer(KEY_B)).status_code == 200
    own = {**bearer(KEY_A), "cf-aig-authorization": f"Bearer {CLIENT_TOKEN}"}
    assert httpx.post(url, json=CHAT, headers=own).status_code == 200
    for refused in ({}, bearer(WRONG_KEY), {"authorization": f"Bearer {KEY_A} x"}, {"authorization": BASIC}):
        assert httpx.post(url, json=CHAT, headers={**refused, **PROVIDER_HEADERS}).status_code == 401
    assert httpx.get(p.url + "/healthz", headers=bearer(STRAY_KEY)).status_code == 200
    assert httpx.get(p.url + "/metrics", headers=bearer(KEY_A)).status_code == 200
    # upstream fails before answering, and in the middle of a stream
    closed = {**bearer(KEY_A), **PROVIDER_HEADERS, "x-standin-close": "before-headers"}
    assert httpx.post(url, json=CHAT, headers=closed).status_code == 502
    reset = {**bearer(KEY_B), "x-standin-reset-after": "2"}
    with pytest.raises(httpx.HTTPError), httpx.stream("POST", url, json=stream, headers=reset) as r:
        r.read()
    assert p.wait_output("upstream failed mid-stream")


def saved_flows(p, name: str) -> tuple[bytes, list]:
    path = p.workdir / name
    with open(path, "rb") as f:
        return path.read_bytes(), list(io.FlowReader(f).stream())


@pytest.mark.parametrize("flow_detail", [None, "3"])
def test_session_output_and_saved_flows_hold_no_secret(make_proxy, gw, flow_detail):
    """Default output, and flow_detail=3 (headers printed) with -v; plus, once, an unreachable upstream."""
    options = {"cf_proxy_keys": f"{KEY_A},{KEY_B}", "cf_token": TOKEN}
    extra = ["-w", "flows.mitm"]
    if flow_detail:
        options["flow_detail"] = flow_detail
        extra.append("-v")
    live = make_proxy(options, extra_args=extra)
    session_traffic(live)
    procs = [live]
    if flow_detail:
        dead = make_proxy(options, upstream=f"http://127.0.0.1:{free_port()}", extra_args=extra)
        r = httpx.post(
            dead.url + "/v1/chat/completions", json=CHAT, headers={**bearer(KEY_A), **PROVIDER_HEADERS}
        )
        assert r.status_code == 502
        assert dead.wait_output("upstream failed before a response")
        metrics = httpx.get(dead.url + "/metrics", headers=bearer(KEY_B)).text
        assert 'cf_gateway_upstream_errors_total{reason="connect"} 1.0' in metrics
        procs.append(dead)
    for p in procs:
        p.stop()

    # what was forwarded is never masked; access keys (Authorization, x-api-key) and the client's
    # own gateway token are not forwarded at all in key mode
    first, _streamed, own = gw.requests[:3]
    assert first.header("cf-aig-authorization") == f"Bearer {TOKEN}"
    assert (first.header("x-api-key"), first.header("api-key")) == (None, AZURE_KEY)
    assert own.header_values("cf-aig-authorization") == [f"Bearer {TOKEN}"]
    assert all(r.header("authorization") is None and r.header("x-api-key") is None for r in gw.requests)
    assert len(gw.requests) == 5  # 3 answered + 2 failed upstream; nothing refused or local

    for p in procs:
        assert_no_secret(f"mitmdump output (flow_detail={flow_detail})", p.output())
        raw, flows = saved_flows(p, "flows.mitm")
        assert flows
        assert_no_secret("flow file", raw)
        for fl in flows:
            assert_no_secret("flow state", repr(fl.get_state()))

    _, live_flows = saved_flows(live, "flows.mitm")
    assert len(live_flows) == 11
    statuses = [fl.response.status_code if fl.response else None for fl in live_flows]
    assert statuses.count(401) == 4 and statuses.count(None) == 1  # closed before headers
    masked = repr([fl.request.headers.fields for fl in live_flows])
    for secret in (TOKEN, PROVIDER_KEY, AZURE_KEY, WRONG_KEY, STRAY_KEY):
        assert (MASK + secret[-4:]).encode() in masked.encode()  # masked, not dropped
    assert (MASK + CLIENT_TOKEN[-4:]).encode() not in masked.encode()  # replaced before it was sent
    if flow_detail == "3":
        # mitmdump's dumper prints headers after our hooks ran, so it prints the masked values
        out = live.output()
        assert f"cf-aig-authorization: Bearer {MASK}{TOKEN[-4:]}" in out
        assert f"authorization: Bearer {MASK}{WRONG_KEY[-4:]}" in out
        assert f"api-key: {MASK}{AZURE_KEY[-4:]}" in dead.output()


def test_flow_in_flight_at_shutdown_is_saved_masked(make_proxy, gw):
    p = make_proxy({"cf_token": TOKEN}, extra_args=["-w", "flows.mitm"])
    outcome: list[object] = []

    def call():
        try:
            outcome.append(
                httpx.post(
                    p.url + "/v1/chat/completions",
                    json=CHAT,
                    headers={"x-standin-hold": "shutdown", "x-api-key": PROVIDER_KEY},
                    timeout=15,
                )
            )
        except httpx.HTTPError as e:
            outcome.append(e)

    client = threading.Thread(target=call)
    client.start()
    try:
        assert gw.wait_held("shutdown", timeout=10)
        p.stop()
    finally:
        gw.release("shutdown")
        client.join(20)
    raw = (p.workdir / "flows.mitm").read_bytes()
    assert b"chat/completions" in raw
    assert_no_secret("flow file written at shutdown", raw)


@pytest.mark.parametrize(
    ("keyfile", "message"),
    [
        (b"# all keys revoked\n\n  # " + KEY_A.encode() + b"\n", "holds no keys"),
        (b"\xff\xfe" + KEY_A.encode(), "cannot read key file"),
        (f"{KEY_A}\n{KEY_B} extra\n".encode(), "printable ASCII without spaces (value not shown)"),
    ],
)
def test_startup_fails_on_bad_key_file_without_showing_keys(tmp_path, keyfile, message):
    (tmp_path / "keys.txt").write_bytes(keyfile)
    env = {"ACCOUNT_ID": ACCOUNT_ID, "GATEWAY_ID": GATEWAY_ID, "PROXY_KEYS": f"@{tmp_path / 'keys.txt'}"}
    args = ["--mode", f"reverse:http://127.0.0.1:1@127.0.0.1:{free_port()}"]
    done = run_mitmdump(args, env=env, workdir=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert message in out
    assert "cf_proxy_keys (env PROXY_KEYS)" in out
    assert "Traceback" not in out
    assert_no_secret("startup error", out)
