"""End to end: the proxy under hostile clients, each attack against a real mitmdump (or mitmweb).

Every test states its bound. The numbers are for this repository's 2-core machine with other work
running; they leave room for that and still fail by a wide margin if the guard is gone.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import resource
import select
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.harness import (
    ACCOUNT_ID,
    ADDON,
    MITMDUMP,
    UNSERVABLE,
    Proxy,
    clean_env,
    free_port,
    quick_env,
    read_until_end,
    run_mitmdump,
    split_answer,
    start_mitmweb,
    start_proxy,
    wait_for,
    wait_for_port,
    web_client,
)

TOKEN = "security-gateway-token-0123456789"
KEY = "team-a-access-key-7f3c9e1d2b"
OTHER_KEY = "team-b-access-key-0a1b2c3d4e"
LITERAL = "literal-secret-value"
GOOD_ORIGIN = "http://good.example"
CHAT_BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}
MESSAGES_BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "Hi"}],
}
TIMEOUT = 15.0


@pytest.fixture(scope="module")
def guarded(gateway, tmp_path_factory):
    """Injects a token, no access keys, loopback only: the browser guard is on."""
    p = start_proxy(
        gateway.base_url,
        workdir=tmp_path_factory.mktemp("guarded"),
        options={"cf_allowed_origins": GOOD_ORIGIN},
        env=quick_env(CF_AIG_TOKEN=TOKEN),
    )
    yield p
    p.stop()


@pytest.fixture(scope="module")
def shared(gateway, tmp_path_factory):
    """A shared proxy: token and access keys, plus a 0.0.0.0 reverse listener and a regular-mode one."""
    wide, regular = free_port(), free_port()
    p = start_proxy(
        gateway.base_url,
        workdir=tmp_path_factory.mktemp("shared"),
        env=quick_env(CF_AIG_TOKEN=TOKEN, PROXY_KEYS=f"{KEY},{OTHER_KEY}"),
        extra_args=[
            "--mode",
            f"reverse:{UNSERVABLE}@0.0.0.0:{wide}",
            "--mode",
            f"regular@127.0.0.1:{regular}",
        ],
    )
    p.extra_ports.update(wide=wide, regular=regular)
    yield p
    p.stop()


def post(p: Proxy, path: str, body: dict | None = None, **headers: str) -> httpx.Response:
    return httpx.post(p.url + path, json=body or CHAT_BODY, headers=headers, timeout=TIMEOUT)


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status memory field (VmRSS, VmHWM) in bytes."""
    m = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert m, field
    return int(m.group(1)) * 1024


# -- (1) idle connections past the descriptor limit --------------------------------------------------


def start_limited(gateway, workdir: Path, nofile: int) -> Proxy:
    """mitmdump with the addon under `ulimit -n nofile` (soft and hard), cf_max_connections=auto."""
    port = free_port()
    cmd = [
        str(MITMDUMP), "--set", f"confdir={workdir / 'conf'}",
        "--mode", f"reverse:{UNSERVABLE}@127.0.0.1:{port}", "--set", "connection_strategy=lazy",
        "--set", "flow_detail=0", "-s", str(ADDON),
        "--set", f"cf_account_id={ACCOUNT_ID}", "--set", f"cf_base_url={gateway.base_url}",
    ]  # fmt: skip
    log_path = workdir / "mitmdump.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=clean_env(**quick_env()), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=limit,
        )  # fmt: skip
    p = Proxy(proc=proc, port=port, workdir=workdir, log_path=log_path)
    if not wait_for_port(port, proc):
        p.stop()
        raise RuntimeError(p.output())
    return p


def healthz(p: Proxy) -> int | None:
    try:
        return httpx.get(p.url + "/healthz", timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_idle_connections_beyond_the_descriptor_limit(gateway, tmp_path):
    """Bounds: ulimit -n 256 (auto: (256 - 64) // 2 = 96 connections); of 300 idle sockets at most
    96 stay open, the rest are closed by the proxy within 10 s; it stays under 256 descriptors;
    /healthz answers within 5 s after they close, in the same process without a reload (no file
    touched); the log grows by at most 50 lines (accept errors: one record a minute)."""
    p = start_limited(gateway, tmp_path, 256)
    try:
        assert healthz(p) == 200
        files = sorted(os.listdir(tmp_path))
        lines = len(p.output().splitlines())
        socks: list[socket.socket] = []
        closed: set[socket.socket] = set()

        def count_closed() -> int:
            ready, _, _ = select.select([s for s in socks if s not in closed], [], [], 0)
            for s in ready:
                try:
                    if not s.recv(1):
                        closed.add(s)
                except OSError:
                    closed.add(s)
            return len(closed)

        try:
            for _ in range(300):
                socks.append(socket.create_connection(("127.0.0.1", p.port), timeout=5))
            assert wait_for(lambda: count_closed() >= 300 - 96, timeout=10), len(closed)
            assert p.proc.poll() is None
            assert len(os.listdir(f"/proc/{p.proc.pid}/fd")) < 256
            assert healthz(p) is None  # every slot is taken: refused, not queued
        finally:
            for s in socks:
                s.close()
        assert wait_for(lambda: healthz(p) == 200, timeout=5)
        assert p.proc.poll() is None
        metrics = httpx.get(p.url + "/metrics", timeout=TIMEOUT).text
        refused = re.search(r"^cf_gateway_refused_connections_total (\S+)", metrics, re.M)
        assert refused and float(refused.group(1)) >= 300 - 96, metrics
        out = p.output()
        assert len(out.splitlines()) - lines <= 50, out[-3000:]
        assert out.count("Loading script") == 1
        assert sorted(os.listdir(tmp_path)) == files
    finally:
        p.stop()


# -- (2) and (9): the open door ------------------------------------------------------------------


def test_token_without_keys_refuses_exposed_listeners():
    """A token-injecting proxy without keys refuses an extra regular-mode listener, and a non-loopback
    reverse listener: startup stops (exit 1) naming the remedy."""
    env = quick_env(CF_AIG_TOKEN=TOKEN, ACCOUNT_ID=ACCOUNT_ID)
    loopback = ["--mode", f"reverse:{UNSERVABLE}@127.0.0.1:{free_port()}"]
    runs = [
        [*loopback, "--mode", f"regular@127.0.0.1:{free_port()}"],
        ["--mode", f"reverse:{UNSERVABLE}@0.0.0.0:{free_port()}"],
    ]
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        results = list(pool.map(lambda args: run_mitmdump(args, env, None, 60), runs))
    for r in results:
        assert r.returncode != 0, r.stdout
        assert "refusing to inject the token for anyone who can reach the listener" in r.stdout
        assert "PROXY_KEYS" in r.stdout
    assert "regular@127.0.0.1" in results[0].stdout and "0.0.0.0" in results[1].stdout


def test_shared_proxy_starts_with_keys_and_warns_keys_travel_in_clear(shared, gw):
    """With access keys the same listeners start; without certs a 0.0.0.0 listener gets a warning."""
    assert shared.proc.poll() is None
    for name in ("wide", "regular"):
        assert wait_for_port(shared.extra_ports[name], timeout=5)
    r = httpx.post(
        f"http://127.0.0.1:{shared.extra_ports['wide']}/v1/chat/completions",
        json=CHAT_BODY, headers={"authorization": f"Bearer {KEY}"}, timeout=TIMEOUT,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert gw.requests[-1].header("cf-aig-authorization") == f"Bearer {TOKEN}"
    assert gw.requests[-1].header("authorization") is None
    assert shared.wait_output("access keys travel in clear on a non-loopback listener without TLS")


# -- (3) browser origins -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"host": "rebind.attacker.example:3000"},
        {"origin": "http://evil.example"},
        {"sec-fetch-site": "cross-site"},
    ],
    ids=["dns-rebinding", "origin", "sec-fetch-site"],
)
def test_browser_requests_refused_without_keys(guarded, gw, headers):
    """403 in the client's shape, nothing forwarded."""
    r = post(guarded, "/v1/chat/completions", **headers)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "cross_site_request"
    m = post(guarded, "/v1/messages", MESSAGES_BODY, **headers, **{"anthropic-version": "2023-06-01"})
    assert m.status_code == 403
    assert m.json()["type"] == "error" and m.json()["error"]["type"] == "permission_error"
    assert gw.requests == []


def test_allowed_origin_and_healthz_pass_the_guard(guarded, gw):
    assert post(guarded, "/v1/chat/completions", origin=GOOD_ORIGIN).status_code == 200
    assert len(gw.requests) == 1
    for headers in ({"host": "rebind.attacker.example:3000"}, {"origin": "http://evil.example"}):
        assert httpx.get(guarded.url + "/healthz", headers=headers, timeout=TIMEOUT).status_code == 200


def test_preflight_answered_locally(guarded, gw):
    """OPTIONS is always 204 from the proxy; CORS allow headers only for an origin in cf_allowed_origins."""
    ask = {"access-control-request-method": "POST", "access-control-request-headers": "authorization"}
    good = httpx.options(
        guarded.url + "/v1/chat/completions", headers={"origin": GOOD_ORIGIN, **ask}, timeout=TIMEOUT
    )
    assert good.status_code == 204
    assert good.headers["access-control-allow-origin"] == GOOD_ORIGIN
    assert "POST" in good.headers["access-control-allow-methods"]
    assert "authorization" in good.headers["access-control-allow-headers"]
    evil = httpx.options(
        guarded.url + "/v1/chat/completions",
        headers={"origin": "http://evil.example", **ask},
        timeout=TIMEOUT,
    )
    assert evil.status_code == 204
    assert not any(h.startswith("access-control-") for h in evil.headers)
    assert gw.requests == []


def test_keys_proxy_does_not_apply_the_browser_guard(shared, gw):
    """With access keys the key is the guard: a foreign Host or a cross-site request with a key goes."""
    key = {"authorization": f"Bearer {KEY}"}
    for headers in (
        {"host": "llm.internal.example"},
        {"origin": "http://evil.example"},
        {"sec-fetch-site": "cross-site"},
    ):
        assert post(shared, "/v1/chat/completions", **key, **headers).status_code == 200
    assert len(gw.requests) == 3


# -- (4) WebSocket -----------------------------------------------------------------------------


WS_HEADERS = {
    "upgrade": "websocket",
    "connection": "Upgrade",
    "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    "sec-websocket-version": "13",
}


@pytest.mark.parametrize("which", ["guarded", "shared"])
def test_websocket_upgrade_answered_426(request, gw, which):
    """Codex's Responses WebSocket: 426 at once (it then falls back to HTTPS), never forwarded."""
    p = request.getfixturevalue(which)
    headers = {**WS_HEADERS, "authorization": f"Bearer {KEY}"}
    r = httpx.get(p.url + "/v1/responses", headers=headers, timeout=TIMEOUT)
    assert r.status_code == 426
    assert r.json()["error"]["code"] == "websocket_not_supported"
    assert gw.requests == []


# -- (5) unauthenticated bodies --------------------------------------------------------------------


def test_missing_key_small_body_gets_401_in_its_shape(shared, gw):
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(
            base_url=shared.url + "/v1", api_key="wrong-key-000", max_retries=0
        ).chat.completions.create(model="openai/gpt-4o-mini", messages=CHAT_BODY["messages"])
    assert e.value.status_code == 401 and e.value.code == "invalid_proxy_key"
    with pytest.raises(anthropic.AuthenticationError) as a:
        anthropic.Anthropic(base_url=shared.url, api_key="wrong-key-000", max_retries=0).messages.create(
            **MESSAGES_BODY
        )
    body = a.value.body
    assert isinstance(body, dict) and body["type"] == "error"  # Anthropic's shape
    assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == "invalid_proxy_key"
    r = post(shared, "/v1/chat/completions")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert gw.requests == []


def test_missing_key_large_body_cut_off_unread(shared, gw):
    """Bound: a 30 MB Content-Length without a key, body never sent or sent slowly: the connection is
    closed within 3 s and no answer comes first."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: 30000000\r\n\r\n"
    )
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", shared.port), timeout=3) as s:
        s.sendall(head)
        answer = read_until_end(s)
    assert time.monotonic() - start < 3
    assert split_answer(answer)[0] in (0, 401, 413), answer[:200]
    start = time.monotonic()
    closed = False
    with socket.create_connection(("127.0.0.1", shared.port), timeout=3) as s:
        s.sendall(head)
        try:
            while time.monotonic() - start < 3:
                s.sendall(b"x" * 1024)
                time.sleep(0.05)
        except OSError:
            closed = True
    assert closed and time.monotonic() - start < 3
    assert gw.requests == []


def test_missing_key_uploads_do_not_pile_up_in_memory(shared, gw):
    """Bound: 12 connections each sending 31 MB (under body_size_limit) without a key raise the
    proxy's peak RSS by less than 150 MB (buffering them would take 372 MB).

    (A client that keeps sending is not always disconnected at once: mitmproxy can leave the socket
    open, unread, until garbage collection; so the uploads here give up after 3 s.)
    """
    body = b"x" * (31 << 20)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
    )
    peak = vm(shared.proc.pid, "VmHWM")

    def upload() -> None:
        try:
            with socket.create_connection(("127.0.0.1", shared.port), timeout=3) as s:
                s.sendall(head)
                s.sendall(body)
                read_until_end(s)
        except OSError:
            pass  # cut off: what should happen

    threads = [threading.Thread(target=upload) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    grown = vm(shared.proc.pid, "VmHWM") - peak
    assert grown < 150 << 20, f"peak RSS grew by {grown >> 20} MB"
    assert healthz(shared) == 200
    assert gw.requests == []


def test_missing_key_http2_bodies_without_a_length_are_cut_off(shared, gw):
    """Bound: 6 HTTP/2 streams of 8 MB each without a key and without content-length (their size
    is unknown until read) raise the proxy's peak RSS by less than 30 MB (read, they take 48 MB)."""
    import ssl

    import h2.config
    import h2.connection
    import h2.events

    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
    tls.set_alpn_protocols(["h2"])
    peak = vm(shared.proc.pid, "VmHWM")
    with tls.wrap_socket(socket.create_connection(("127.0.0.1", shared.port), timeout=5)) as s:
        assert s.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        head = [(":method", "POST"), (":path", "/v1/chat/completions"), (":scheme", "https"),
                (":authority", "127.0.0.1"), ("content-type", "application/json")]  # fmt: skip
        streams = []
        for _ in range(6):
            streams.append(conn.get_next_available_stream_id())
            conn.send_headers(streams[-1], head)
        s.sendall(conn.data_to_send())
        chunk, sent, answered = b"x" * 16384, 0, set()
        deadline = time.monotonic() + 20
        while sent < 6 * (8 << 20) and time.monotonic() < deadline and len(answered) < 6:
            for sid in streams:
                if sid not in answered and conn.local_flow_control_window(sid) >= len(chunk):
                    conn.send_data(sid, chunk)
                    sent += len(chunk)
            try:
                s.sendall(conn.data_to_send())
                s.settimeout(0.01)
                data = s.recv(1 << 16)
            except TimeoutError:
                continue
            except (OSError, ssl.SSLError):
                break  # the connection was cut: what should happen
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamReset | h2.events.ResponseReceived):
                    answered.add(event.stream_id)
    grown = vm(shared.proc.pid, "VmHWM") - peak
    assert grown < 30 << 20, f"peak RSS grew by {grown >> 20} MB"
    assert sent < 6 * (8 << 20), "every body was read"
    assert healthz(shared) == 200
    assert gw.requests == []


# -- (6) metric labels ---------------------------------------------------------------------------


def test_junk_model_names_do_not_fill_the_model_labels(guarded, gw):
    """Bound: 110 junk names (more than the 100 label slots) in GET /v1/models bodies take no slot:
    a real model named by an answer still gets a label of its own."""
    with httpx.Client(base_url=guarded.url, timeout=TIMEOUT) as client:
        for n in range(110):
            assert client.request("GET", "/v1/models", json={"model": f"zz-junk-{n}"}).status_code == 200
        assert client.post("/v1/chat/completions", json=CHAT_BODY).status_code == 200
        metrics = client.get("/metrics").text
    assert "zz-junk" not in metrics
    assert re.search(
        r'cf_gateway_requests_total\{family="chat",model="openai/gpt-4o-mini",status="200"\}', metrics
    )


# -- (7) and (8) secrets in mitmweb and saved flows ------------------------------------------------------


@pytest.fixture(scope="module")
def web(gateway, tmp_path_factory):
    """mitmweb with a token given literally with --set, access keys, and -w."""
    workdir = tmp_path_factory.mktemp("web")
    flows = workdir / "saved.mitm"
    p, ui_url = start_mitmweb(
        gateway.base_url,
        workdir,
        "-w",
        str(flows),
        options={"cf_token": LITERAL},
        env=quick_env(PROXY_KEYS=KEY),
    )
    ui = web_client(ui_url, timeout=TIMEOUT)
    yield p, ui, flows
    ui.close()
    p.stop()


def test_slow_upload_key_masked_in_mitmweb_before_the_body_ends(web, gw):
    """mitmweb's /flows shows the flow with its access key masked while the body is still uploading."""
    p, ui, _ = web
    marker = uuid.uuid4().hex
    body = json.dumps({**CHAT_BODY, "user": marker}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", p.port), timeout=TIMEOUT) as s:
        s.sendall(head + body[:10])

        def listed():
            flows = ui.get("/flows").json()
            return [
                f for f in flows if f["request"]["path"] == "/v1/chat/completions" and not f.get("response")
            ]

        assert wait_for(listed, timeout=10)
        text = ui.get("/flows").text
        assert KEY not in text
        flow = listed()[-1]
        auth = [v for k, v in flow["request"]["headers"] if k.lower() == "authorization"]
        assert auth and auth[0].startswith("Bearer ********") and KEY not in auth[0]
        assert gw.requests == []  # the body really was still uploading
        s.sendall(body[10:])
        status, _, _ = split_answer(s.recv(65536))
    assert status == 200
    assert gw.requests[-1].json()["user"] == marker


def test_literal_secret_never_shown(web, gw):
    """--set cf_token=<literal>: a warning; the token works, yet it is not in the output, mitmweb's
    /options or /flows, nor the -w file (a request still in flight at shutdown included)."""
    p, ui, flows = web
    assert p.wait_output("cf_token was given literally")
    r = post(p, "/v1/chat/completions", authorization=f"Bearer {KEY}")
    assert r.status_code == 200
    assert gw.requests[-1].header("cf-aig-authorization") == f"Bearer {LITERAL}"
    options = ui.get("/options")
    assert options.status_code == 200
    assert options.json()["cf_token"]["value"] == "(from CF_AIG_TOKEN)"
    assert LITERAL not in options.text and KEY not in options.text
    assert LITERAL not in ui.get("/flows").text
    # a request in flight when the proxy stops is saved by -w at shutdown: masked too
    hold = f"held-{uuid.uuid4().hex[:8]}"
    headers = {"authorization": f"Bearer {KEY}", "x-standin-hold": hold}
    late = threading.Thread(target=lambda: _quietly(post, p, "/v1/chat/completions", None, **headers))
    late.start()
    try:
        assert gw.wait_held(hold, timeout=10)
        p.stop()
    finally:
        gw.release(hold)
        late.join(20)
    saved = flows.read_bytes()
    assert saved.count(b"/v1/chat/completions") >= 2
    assert LITERAL.encode() not in saved and KEY.encode() not in saved
    assert LITERAL not in p.output() and KEY not in p.output()


def _quietly(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except httpx.HTTPError:
        return None
