"""End to end: the proxy fails closed and stays bounded under hostile input (issue 9).

Real mitmdump/mitmweb processes in front of the stand-in gateway, or in front of a tiny
upstream defined here when the stand-in cannot produce the bytes (compressed bombs,
``103 Early Hints``, a 10k-fragment stream). Every test asserts what reached the
upstream (nothing, for every refusal) and what the client got.

Where mitmproxy itself decides and an addon cannot change it, the test pins mitmproxy's
behaviour and names the source location, so that a mitmproxy upgrade that changes it is
noticed.
"""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import httpx
import pytest
from mitmproxy.version import VERSION
from prometheus_client.parser import text_string_to_metric_families

from cfgw import chatview
from tests import harness
from tests.harness import (
    ACCOUNT_ID,
    GATEWAY_ID,
    ROOT,
    UNSERVABLE,
    Proxy,
    RawUpstream,
    clean_env,
    free_port,
    raw_exchange,
    run_mitmdump,
    split_answer,
    start_proxy,
    wait_for_port,
    web_client,
)
from tests.standin_gateway import REPLY_TEXT, StandinGateway

PREFIX = f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}/compat"
CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
MiB = 1 << 20

# Fixed secrets with distinctive tails: none can turn up by chance in ids, hex or prose.
KEY = "pk-harden-Wq3ErTy7UiOpAsDf"
TOKEN = "cfat-harden-Zx8CvBn2MqWeRt"
CLIENT_TOKEN = "cfut-harden-Lk4JhGf6DsApOi"
FILE_KEY = "pk-file-Nb5VcXz9LkJhGfDs"
FILE_TOKEN = "cfat-file-Rt6YuIo3PlKjHgFd"


def assert_no_secret(where: str, text: str, *secrets: str) -> None:
    """Neither a secret nor any tail of it longer than the 4 characters a mask may keep."""
    for secret in secrets:
        assert secret[-5:] not in text, f"{where} holds (a tail of) secret {secret[:8]}..."


def settle(proxy: Proxy) -> None:
    """One answered request: mitmproxy's startup is over (it exits on any error logged before that,
    and its listener accepts connections a moment earlier)."""
    assert httpx.get(proxy.url + "/healthz", timeout=10).status_code == 200


def health_seconds(port: int) -> float:
    """Seconds for one GET /healthz over a fresh connection (no client library start-up in it)."""
    started = time.monotonic()
    answer = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", timeout=30)
    elapsed = time.monotonic() - started
    assert split_answer(answer)[0] == 200, answer[:200]
    return elapsed


def slowest_health_while(port: int, busy: threading.Thread) -> tuple[float, int]:
    """(slowest /healthz answer, probes sent) while ``busy`` runs; probing starts with it."""
    times = []
    busy.start()
    while busy.is_alive():
        times.append(health_seconds(port))
    busy.join()
    times.append(health_seconds(port))
    return max(times), len(times)


def answer_with(answer: bytes) -> Callable[[RawUpstream, socket.socket], None]:
    """A RawUpstream behaviour: read each request (head and Content-Length body), keep its head,
    answer with fixed raw bytes and close."""

    def behaviour(server: RawUpstream, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        server.heads.append(head)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length and (chunk := conn.recv(65536)):
            body += chunk
        conn.sendall(answer)

    return behaviour


@contextlib.contextmanager
def upstream(answer: bytes) -> Iterator[RawUpstream]:
    server = RawUpstream(answer_with(answer))
    try:
        yield server
    finally:
        server.close()


def json_answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = "".join(f"{h}\r\n" for h in ("content-type: application/json", *headers))
    return (
        f"HTTP/1.1 {status}\r\n{head}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body
    )


# ---- 1. fail closed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "cf_gateway_id=x", "--set", "cf_gateway_id=x"],
            "cf_gateway_id (env GATEWAY_ID) is given 2 times with --set; give it once",
        ),
        (
            ["--set", "cf_redact"],
            "cf_redact (env CF_REDACT) is given without a value with --set; give it once",
        ),
    ],
)
def test_repeated_or_valueless_option_stops_startup_naming_it(gw, args, message):
    """mitmproxy would drop the script silently; the addon takes the values out of its hands."""
    port = free_port()
    done = run_mitmdump(
        ["--mode", f"reverse:{UNSERVABLE}@127.0.0.1:{port}", "--set", f"cf_account_id={ACCOUNT_ID}",
         "--set", f"cf_base_url={gw.base_url}", *args],
        env={"GATEWAY_ID": GATEWAY_ID},
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert message in out
    assert "Traceback" not in out
    assert gw.requests == []


def test_a_proxy_without_the_addon_forwards_nothing(make_proxy, gw):
    """Fail closed by construction: whatever keeps the addon out (any cause above or below), the
    reverse target every launcher uses, port 0, can never serve."""
    p = make_proxy(addon=False, reverse_target=UNSERVABLE)
    answers = [
        httpx.get(p.url + "/healthz"),
        httpx.post(p.url + "/v1/chat/completions", json=CHAT),
        httpx.post(p.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {KEY}"}),
    ]
    assert [r.status_code for r in answers] == [502, 502, 502]
    assert gw.requests == []


def copy_addon(into: Path) -> Path:
    """A private copy of addons/ to break on purpose; returns its entry script."""
    shutil.copytree(ROOT / "addons", into / "addons", ignore=shutil.ignore_patterns("__pycache__"))
    return into / "addons" / "cf_gateway.py"


def start_copy(script: Path, gw: StandinGateway, workdir: Path) -> Proxy:
    """mitmdump running ``script`` with access keys and a token, as a shared proxy would."""
    options = {
        "cf_account_id": ACCOUNT_ID,
        "cf_gateway_id": GATEWAY_ID,
        "cf_base_url": gw.base_url,
        "cf_proxy_keys": KEY,
        "cf_token": TOKEN,
    }
    return start_proxy(
        gw.base_url,
        addon=False,
        reverse_target=UNSERVABLE,
        workdir=workdir,
        env={"PYTHONDONTWRITEBYTECODE": "1"},  # a stale .pyc could hide an edit made in the same second
        extra_args=["-s", str(script), *[a for k, v in options.items() for a in ("--set", f"{k}={v}")]],
    )


def edit(path: Path, change: Callable[[str], str]) -> None:
    text = path.read_text()
    changed = change(text)
    assert changed != text, f"the edit of {path.name} changed nothing: is the text it looks for gone?"
    path.write_text(changed)


def wait_after(proxy: Proxy, mark: int, needle: str, timeout: float = 15) -> None:
    """Wait until the proxy printed ``needle`` after its first ``mark`` characters of output
    (a reload takes up to 2 s: mitmproxy's and the module watcher's 1 s polls)."""
    deadline = time.monotonic() + timeout
    while needle not in proxy.output()[mark:]:
        assert time.monotonic() < deadline, f"no {needle!r} after the edit:\n{proxy.output()[mark:]}"
        time.sleep(0.05)


def answers(proxy: Proxy) -> list[tuple[int, str | None]]:
    """(status, server) for /healthz, a chat request without a key and one with a valid key."""
    out = []
    for path, headers in (
        ("/healthz", {}),
        ("/v1/chat/completions", {}),
        ("/v1/chat/completions", {"authorization": f"Bearer {KEY}"}),
    ):
        if path == "/healthz":
            r = httpx.get(proxy.url + path)
        else:
            r = httpx.post(proxy.url + path, json=CHAT, headers=headers)
        out.append((r.status_code, r.headers.get("server")))
    return out


LOADED = "cf-gateway: requests go to "  # configure's line: a load got as far as a working addon
MITMPROXY_502 = (502, f"mitmproxy {VERSION}")  # mitmproxy's own answer: the flow went nowhere


def _broken_hook(hook: str) -> Callable[[str], str]:
    return lambda text: (
        text
        + (
            f"\n\ndef _broken(self, *args):\n    raise RuntimeError('cf-test: {hook} fails on purpose')\n\n\n"
            f"CfGateway.{hook} = _broken\n"
        )
    )


# (file under addons/, the breaking edit, what the proxy logs once it took effect, what clients get)
BREAKAGES = {
    "syntax error in the entry script": (
        "cf_gateway.py",
        lambda text: text + "\nthis is not python(\n",
        "SyntaxError",
        MITMPROXY_502,
    ),
    "syntax error in a module": (
        "cfgw/replies.py",
        lambda text: text + "\nthis is not python(\n",
        "SyntaxError",
        MITMPROXY_502,
    ),
    "a module raising at import": (
        "cfgw/families.py",
        lambda text: text + "\nraise ImportError('cf-test: this module cannot be imported')\n",
        "cf-test: this module cannot be imported",
        MITMPROXY_502,
    ),
    "an exception in load": (
        "cf_gateway.py",
        _broken_hook("load"),
        "cf-test: load fails on purpose",
        MITMPROXY_502,
    ),
    # The addon is registered but never configured: it answers every request 503 itself.
    "an exception in configure": (
        "cf_gateway.py",
        _broken_hook("configure"),
        "cf-test: configure fails on purpose",
        (503, "cf-gateway"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("cause", BREAKAGES)
def test_a_broken_edit_while_running_fails_closed_and_its_fix_takes_effect(gw, tmp_path, cause):
    script = copy_addon(tmp_path)
    proxy = start_copy(script, gw, tmp_path)
    try:
        settle(proxy)
        assert answers(proxy) == [(200, "cf-gateway"), (401, "cf-gateway"), (200, "cloudflare")]
        assert [r.path for r in gw.requests] == [f"{PREFIX}/chat/completions"]
        gw.clear()

        name, breaking, logged, refused = BREAKAGES[cause]
        path = script.parent / name
        original = path.read_text()
        mark = len(proxy.output())
        edit(path, breaking)
        wait_after(proxy, mark, logged)
        assert answers(proxy) == [refused] * 3
        assert gw.requests == []
        assert proxy.proc.poll() is None

        mark = len(proxy.output())
        if name == "cfgw/replies.py":  # the fix also changes a constant: edited modules take effect
            path.write_text(original.replace('SERVER = "cf-gateway"', 'SERVER = "cf-gateway-edited"'))
            working = [(200, "cf-gateway-edited"), (401, "cf-gateway-edited"), (200, "cloudflare")]
        else:
            path.write_text(original)
            working = [(200, "cf-gateway"), (401, "cf-gateway"), (200, "cloudflare")]
        wait_after(proxy, mark, LOADED)
        assert answers(proxy) == working
        assert [r.path for r in gw.requests] == [f"{PREFIX}/chat/completions"]
        assert gw.requests[0].header_values("cf-aig-authorization") == [f"Bearer {TOKEN}"]
    finally:
        proxy.stop()


def test_demo_with_the_users_own_gateway_id(tmp_path):
    """`./run.sh demo --set cf_gateway_id=demo`: the demo leaves out its own value of an option the
    user gives, so mitmproxy sees it once and the addon stays loaded."""
    port = free_port()
    out = tmp_path / "demo.log"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "demo.py"), "--set", f"confdir={tmp_path / 'conf'}",
             "--set", "cf_gateway_id=demo"],
            env=clean_env(HOST_PORT=str(port)),
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "Try it yourself" not in out.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        text = out.read_text()
        assert f"POST http://127.0.0.1:{port}/v1/chat/completions -> '{REPLY_TEXT}'" in text
        assert f"the stand-in received POST /v1/{ACCOUNT_ID}/demo/compat/chat/completions" in text
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the demo stops mitmdump and the stand-in
        assert proc.wait(15) == 0


# ---- 2. memory: clients without a key -----------------------------------------------------------


def memory_mb(pid: int, field: str) -> float:
    """A /proc/<pid>/status memory figure (VmRSS, VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise AssertionError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> None:
    """Make VmHWM (the peak RSS) start again from the current RSS (Linux >= 4.0)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def answered(data: bytes) -> bool:
    """Whether ``data`` holds a whole HTTP/1 answer (head and Content-Length body)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def push(port: int, head: bytes, chunks: Iterable[bytes], timeout: float = 60) -> tuple[int, bytes]:
    """Send ``head`` then ``chunks`` for as long as the proxy takes them, reading at the same time,
    until a whole answer arrived or the proxy closed: (bytes of ``chunks`` sent, answer).

    Why not read once everything is sent: the proxy answers early, and then does not always
    close (about half the time mitmproxy leaves a refused connection open and unread), so a
    sender waiting for that would block until its timeout.
    """
    pending: memoryview | None = memoryview(head)
    more = iter(chunks)
    sent, answer = -len(head), b""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setblocking(False)
        while not answered(answer):
            assert time.monotonic() < deadline, f"no whole answer within {timeout} s: {answer[:200]!r}"
            readable, writable, _ = select.select([sock], [sock] if pending is not None else [], [], 1)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                answer += data
            if writable and pending is not None:
                try:
                    n = sock.send(pending)
                except OSError:  # closed by the proxy: what it answered is already read or on its way
                    pending = None
                    continue
                sent += n
                pending = pending[n:]
                if not pending:
                    chunk = next(more, None)
                    pending = memoryview(chunk) if chunk is not None else None
    return sent, answer


@pytest.fixture(scope="module")
def keyed(gateway, tmp_path_factory):
    """Access keys (and a token): what a shared proxy on 0.0.0.0 runs with."""
    p = start_proxy(
        gateway.base_url,
        options={"cf_proxy_keys": KEY, "cf_token": TOKEN},
        workdir=tmp_path_factory.mktemp("keyed"),
    )
    settle(p)
    yield p
    p.stop()


ONE_MIB = b"x" * MiB
HEADER_LINES = b"".join(b"x-filler-%04d: %s\r\n" % (i, b"y" * 1000) for i in range(1000))  # ~1 MB
UPLOADS = {
    # mitmproxy compares a declared length with body_size_limit (32m by default from the addon)
    # before reading any of it, and answers its own HTML 413.
    "300 MiB Content-Length": (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % (300 * MiB),
        lambda: (ONE_MIB for _ in range(300)),
        413,
    ),
    # A chunked body is buffered until it passes body_size_limit: about 32 MiB per connection.
    "300 MiB chunked": (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\n\r\n",
        lambda: (b"100000\r\n" + ONE_MIB + b"\r\n" for _ in range(300)),
        413,
    ),
    # Expect: 100-continue: the length is refused before any "100 Continue".
    "Expect: 100-continue with 100 MB": (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"expect: 100-continue\r\ncontent-length: 100000000\r\n\r\n",
        lambda: (ONE_MIB for _ in range(96)),
        413,
    ),
}


@pytest.mark.parametrize("upload", UPLOADS)
def test_big_upload_without_a_key_costs_under_50_mb(keyed, gw, upload):
    head, chunks, status = UPLOADS[upload]
    pid = keyed.proc.pid
    rss_before = memory_mb(pid, "VmRSS")
    reset_peak(pid)
    sent, answer = push(keyed.port, head, chunks())
    peak = memory_mb(pid, "VmHWM") - rss_before
    assert split_answer(answer)[0] == status, answer[:300]
    assert b"100 Continue" not in answer
    assert peak < 50, f"{upload}: peak RSS grew {peak:.0f} MB ({sent // MiB} MiB sent)"
    assert sent < 64 * MiB, f"{upload}: the proxy took {sent // MiB} MiB before refusing"
    assert gw.requests == []
    settle(keyed)


def test_expect_100_without_a_key_gets_no_continue_and_a_401_for_a_body_under_the_limit(keyed, gw):
    """Under body_size_limit, no "100 Continue" invites the upload; mitmproxy still sends the 401
    only once the body has arrived (a response set in requestheaders waits for it:
    mitmproxy/proxy/layers/http/__init__.py, HttpStream.state_consume_request_body)."""
    body = json.dumps({**CHAT, "pad": "x" * (4 * MiB)}).encode()
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"expect: 100-continue\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        s.settimeout(1)
        with pytest.raises(TimeoutError):
            s.recv(65536)  # nothing within a second: no 100 Continue
        s.settimeout(10)
        s.sendall(body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status, _, payload = split_answer(answer)
    assert status == 401 and b"100 Continue" not in answer
    assert json.loads(payload)["error"]["code"] == "invalid_proxy_key"
    assert gw.requests == []


def test_a_100_mb_header_block_is_buffered_whole_by_mitmproxy(keyed, gw):
    """mitmproxy's HTTP/1 reader has no header size limit: it buffers the whole block before any
    hook runs (mitmproxy/proxy/layers/http/_http1.py, Http1Server.read_headers: "FIXME: protect
    against header size DoS"; h11's max_incomplete_event_size is never used, mitmproxy calls
    ReceiveBuffer.maybe_extract_lines itself). The addon then refuses it (431, nothing forwarded);
    the memory one connection costs is pinned here: a few times the block, about 100 MB -> 300 MB."""
    pid = keyed.proc.pid
    rss_before = memory_mb(pid, "VmRSS")
    reset_peak(pid)
    head = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
    sent, answer = push(keyed.port, head, [*(HEADER_LINES for _ in range(100)), b"\r\n"])
    peak = memory_mb(pid, "VmHWM") - rss_before
    status, _, payload = split_answer(answer)
    assert status == 431, answer[:300]
    assert json.loads(payload)["error"]["code"] == "request_headers_too_large"
    assert sent > 100e6
    assert peak < 5 * sent / 1e6, f"peak RSS grew {peak:.0f} MB for a {sent / 1e6:.0f} MB header block"
    assert gw.requests == []
    settle(keyed)


# ---- 3. compressed bombs from upstream -----------------------------------------------------------


def zstd_frame() -> bytes | None:
    """An empty zstd frame from whichever zstd library this venv has, else None."""
    for name in ("compression.zstd", "backports.zstd"):
        with contextlib.suppress(ImportError):
            return __import__(name, fromlist=["compress"]).compress(b"")
    with contextlib.suppress(ImportError):
        import zstandard

        return zstandard.ZstdCompressor().compress(b"")
    return None


def empty_zstd_frames() -> bytes | None:
    frame = zstd_frame()
    return frame * (MiB // len(frame)) if frame else None  # 1 MiB of empty frames


BOMBS: dict[str, Callable[[], bytes | None]] = {
    "gzip": lambda: zlib.compress(b"", 9, 31) * 157286,  # 3 MiB of empty gzip members
    "zstd": empty_zstd_frames,
}


@pytest.mark.parametrize("coding", BOMBS)
def test_compressed_bomb_from_upstream_never_stalls_the_proxy(make_proxy, coding):
    body = BOMBS[coding]()
    if body is None:
        pytest.skip("no zstd library in this venv")  # pragma: no cover - both venvs have one
    with upstream(json_answer(body, f"content-encoding: {coding}")) as up:
        p = make_proxy(upstream=up.url)
        settle(p)
        got: list[bytes] = []

        def fetch() -> None:
            with httpx.stream("POST", p.url + "/v1/chat/completions", json=CHAT, timeout=60) as r:
                got.append(b"".join(r.iter_raw()))

        slowest, probes = slowest_health_while(p.port, threading.Thread(target=fetch))
        assert got == [body]  # every byte, still encoded
        assert len(up.heads) == 1 and up.heads[0].startswith(f"POST {PREFIX}/chat/completions ".encode())
        assert slowest < 1.0, f"/healthz waited {slowest:.2f} s while the bomb was decoded ({probes} probes)"


# ---- 4. mitmweb's chat view on an adversarial stream ---------------------------------------------


def start_mitmweb(
    upstream_url: str, workdir: Path, env: dict[str, str] | None = None
) -> tuple[Proxy, httpx.Client]:
    p, url = harness.start_mitmweb(upstream_url, workdir, env=env)
    return p, web_client(url)


def tool_fragment_stream(n: int) -> bytes:
    """A chat stream of ``n`` tool-call fragments, each without an index and with a new id (so each
    starts a call: the case that once rebuilt an id map per fragment)."""

    def chunk(i: int) -> dict:
        call = {"id": f"call_{i:05d}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        choice = {"index": 0, "delta": {"tool_calls": [call]}}
        return {
            "id": "chatcmpl-x",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [choice],
        }

    events = [b"data: " + json.dumps(chunk(i), separators=(",", ":")).encode() + b"\n\n" for i in range(n)]
    return b"".join(events) + b"data: [DONE]\n\n"


def test_mitmweb_chat_view_of_a_10k_fragment_stream_is_quick_and_never_blocks(tmp_path):
    if not chatview.register():
        pytest.skip("no contentview API on this mitmproxy (11): the view is a mitmproxy 12 feature")
    stream = tool_fragment_stream(10_000)
    assert 1.5e6 < len(stream) < 2.5e6
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % len(stream)
    ) + stream
    with upstream(answer) as up:
        p, ui = start_mitmweb(up.url, tmp_path)
        try:
            with httpx.stream("POST", p.url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
                assert b"".join(r.iter_raw()) == stream
            assert p.wait_output("POST /v1/chat/completions chat ")
            (flow,) = [f for f in ui.get("/flows").json() if f["type"] == "http"]
            view: dict = {}

            def open_view() -> None:
                started = time.monotonic()
                view.update(ui.get(f"/flows/{flow['id']}/response/content/auto.json").json())
                view["seconds"] = time.monotonic() - started

            slowest, probes = slowest_health_while(p.port, threading.Thread(target=open_view))
            assert view["view_name"] == "LLM chat"
            assert "call_00000" in view["text"] and "call_09999" in view["text"]
            assert view["seconds"] < 2.0, f"the view took {view['seconds']:.2f} s"
            assert slowest < 1.0, f"/healthz waited {slowest:.2f} s while the view rendered ({probes} probes)"
        finally:
            ui.close()
            p.stop()


# ---- 5. secrets in mitmweb's options -------------------------------------------------------------


def test_mitmweb_options_never_show_the_token_or_the_keys(gateway, gw, tmp_path):
    p, ui = start_mitmweb(
        gateway.base_url, tmp_path, env={"CF_AIG_TOKEN": TOKEN, "PROXY_KEYS": f"{KEY},pk-second-Hg7Fd2SaQw"}
    )
    try:
        r = httpx.post(p.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {KEY}"})
        assert r.status_code == 200
        assert gw.requests[-1].header_values("cf-aig-authorization") == [f"Bearer {TOKEN}"]

        options = ui.get("/options")
        assert options.status_code == 200
        shown = options.json()
        assert shown["cf_token"]["value"] == shown["cf_token"]["default"] == "(from CF_AIG_TOKEN)"
        assert shown["cf_proxy_keys"]["value"] == "(from PROXY_KEYS)"
        for where in ("/options", "/events", "/flows", "/state"):
            assert_no_secret(f"mitmweb {where}", ui.get(where).text, TOKEN, KEY, "pk-second-Hg7Fd2SaQw")

        # The Options page's way: '@/path/file' for both, taking effect at once.
        (tmp_path / "token").write_text(FILE_TOKEN + "\n")
        (tmp_path / "keys").write_text(f"# rotated\n{FILE_KEY}\n")
        update = {"cf_token": f"@{tmp_path / 'token'}", "cf_proxy_keys": f"@{tmp_path / 'keys'}"}
        for cookie in ("_mitmproxy_xsrf", "_xsrf"):  # double submit, as the UI does (mitmproxy 12, 11)
            ui.cookies.set(cookie, "cf-test-xsrf")
        put = ui.put("/options", json=update, headers={"X-XSRFToken": "cf-test-xsrf"})
        assert put.status_code == 200, put.text
        shown = ui.get("/options").json()
        assert {name: shown[name]["value"] for name in update} == update
        gw.clear()
        new = httpx.post(
            p.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {FILE_KEY}"}
        )
        old = httpx.post(
            p.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {KEY}"}
        )
        assert (new.status_code, old.status_code) == (200, 401)
        assert [req.header_values("cf-aig-authorization") for req in gw.requests] == [
            [f"Bearer {FILE_TOKEN}"]
        ]
        for where in ("/options", "/events", "/flows"):
            assert_no_secret(f"mitmweb {where}", ui.get(where).text, FILE_TOKEN, FILE_KEY, TOKEN, KEY)

        # A secret typed in clear into the Options page is taken out of the option at once.
        typed = "cfat-typed-Lk8Jh5Gf3Ds1"
        put = ui.put("/options", json={"cf_token": typed}, headers={"X-XSRFToken": "cf-test-xsrf"})
        assert put.status_code == 200, put.text
        assert ui.get("/options").json()["cf_token"]["value"] == "(from --set cf_token)"
        gw.clear()
        r = httpx.post(
            p.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {FILE_KEY}"}
        )
        assert r.status_code == 200
        assert gw.requests[-1].header_values("cf-aig-authorization") == [f"Bearer {typed}"]
        for where in ("/options", "/events", "/flows"):
            assert_no_secret(f"mitmweb {where}", ui.get(where).text, typed)
        assert_no_secret("mitmweb output", p.output(), FILE_TOKEN, FILE_KEY, TOKEN, KEY, typed)
    finally:
        ui.close()
        p.stop()


def test_secrets_given_literally_with_set_are_shown_as_their_source(gateway, gw, tmp_path):
    literal_token, literal_key = "cfat-literal-Qw3Er5Ty7U", "pk-literal-Zx9Cv7Bn5M"
    p, url = harness.start_mitmweb(
        gateway.base_url,
        tmp_path,
        options={"cf_token": literal_token, "cf_proxy_keys": literal_key},
    )
    ui = web_client(url)
    try:
        shown = ui.get("/options").json()
        assert shown["cf_token"]["value"] == "(from --set cf_token)"
        assert shown["cf_proxy_keys"]["value"] == "(from --set cf_proxy_keys)"
        r = httpx.post(p.url + "/v1/chat/completions", json=CHAT, headers={"x-api-key": literal_key})
        assert r.status_code == 200
        assert gw.requests[-1].header_values("cf-aig-authorization") == [f"Bearer {literal_token}"]
        for where in ("/options", "/events", "/flows", "/state"):
            assert_no_secret(f"mitmweb {where}", ui.get(where).text, literal_token, literal_key)
    finally:
        ui.close()
        p.stop()


# ---- 6. no open door on 0.0.0.0 ------------------------------------------------------------------

OPEN_DOOR = (
    "refusing to inject the gateway token (CF_AIG_TOKEN) for anyone who can reach 0.0.0.0: set access keys "
    "(PROXY_KEYS), listen on 127.0.0.1 (HOST_ADDR=127.0.0.1 with run.sh), or set cf_open_proxy=on "
    "(env CF_OPEN_PROXY)"
)


def test_token_without_keys_on_all_interfaces_refuses_to_start(gw):
    port = free_port()
    done = run_mitmdump(
        ["--mode", f"reverse:{UNSERVABLE}@0.0.0.0:{port}", "--set", f"cf_base_url={gw.base_url}"],
        env={"ACCOUNT_ID": ACCOUNT_ID, "GATEWAY_ID": GATEWAY_ID, "CF_AIG_TOKEN": TOKEN},
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert OPEN_DOOR in out
    assert "Traceback" not in out
    assert_no_secret("startup output", out, TOKEN)
    assert gw.requests == []


@pytest.mark.parametrize(
    ("listen", "env"),
    [
        ("127.0.0.1", {"CF_AIG_TOKEN": TOKEN}),
        ("0.0.0.0", {"CF_AIG_TOKEN": TOKEN, "CF_OPEN_PROXY": "on"}),
        ("0.0.0.0", {"CF_AIG_TOKEN": TOKEN, "PROXY_KEYS": KEY}),
        ("0.0.0.0", {}),  # pass-through: clients bring their own keys
    ],
)
def test_the_three_ways_out_and_pass_through_start(make_proxy, gw, listen, env):
    port = free_port()
    p = make_proxy(env=env, extra_args=["--mode", f"reverse:{UNSERVABLE}@{listen}:{port}"])
    assert wait_for_port(port, p.proc), p.output()
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {KEY}"}
    )
    assert r.status_code == 200
    (req,) = gw.requests
    assert req.header_values("cf-aig-authorization") == ([f"Bearer {TOKEN}"] if env else [])


# ---- 7. clients' cf-aig-* headers in key mode ----------------------------------------------------

CLIENT_GATEWAY_HEADERS = {
    "cf-aig-authorization": f"Bearer {CLIENT_TOKEN}",
    "cf-aig-collect-log": "false",
    "cf-aig-custom-cost": '{"per_token_in": 0.000001, "per_token_out": 0.000002}',
    "cf-aig-cache-key": "client-chosen-key",
}
OTHERS = {k: v for k, v in CLIENT_GATEWAY_HEADERS.items() if k != "cf-aig-authorization"}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"cf_proxy_keys": KEY, "cf_token": TOKEN}, {"cf-aig-authorization": f"Bearer {TOKEN}"}),
        (
            {"cf_proxy_keys": KEY, "cf_token": TOKEN, "cf_client_gateway_headers": "allow"},
            {**OTHERS, "cf-aig-authorization": f"Bearer {TOKEN}"},
        ),
        ({"cf_token": TOKEN}, CLIENT_GATEWAY_HEADERS),  # pass-through: the client's own token wins
    ],
    ids=["keys", "keys-allow", "pass-through"],
)
def test_client_gateway_headers_reach_the_gateway_only_as_the_operator_allows(
    make_proxy, gw, options, expected
):
    p = make_proxy(options)
    r = httpx.post(
        p.url + "/v1/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {KEY}", **CLIENT_GATEWAY_HEADERS},
    )
    assert r.status_code == 200
    (req,) = gw.requests
    received = {name: req.header_values(name) for name in CLIENT_GATEWAY_HEADERS}
    assert received == {name: [expected[name]] if name in expected else [] for name in CLIENT_GATEWAY_HEADERS}


# ---- 8. header and log hygiene -------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain(gateway, tmp_path_factory):
    """Pass-through, logging on: what a developer runs on a laptop."""
    p = start_proxy(gateway.base_url, workdir=tmp_path_factory.mktemp("plain"))
    settle(p)
    yield p
    p.stop()


def raw_post(extra_header: bytes) -> bytes:
    body = json.dumps(CHAT).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + extra_header
        + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
        + body
    )


@pytest.mark.parametrize(
    "header",
    [b"x-note: one\r\n two\r\n", b"x-note: one\rtwo\r\n", b"x-note: one\x00two\r\n"],
    ids=["obs-fold", "bare-CR", "NUL"],
)
def test_header_values_with_cr_lf_or_nul_are_refused(plain, gw, header):
    status, _, body = split_answer(raw_exchange(plain.port, raw_post(header)))
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_header"
    assert gw.requests == []


def test_control_characters_never_reach_the_log(plain, gw):
    mark = len(plain.output())
    status, _, _ = split_answer(
        raw_exchange(
            plain.port,
            b"GET /v1/\x1b[31mFORGED\x1b[0m\x08\x08 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
    )
    assert status == 400
    assert plain.wait_output(r"GET /v1/\x1b[31mFORGED\x1b[0m\x08\x08 other 400")  # escaped, visible
    logged = plain.output()[mark:]
    assert "\x1b" not in logged and "\x08" not in logged
    assert gw.requests == []


SK_HEADER = "sk-proj-HdrSecret012345"  # the log filter's key shape, too short for a scanner
SK_QUERY = "sk-proj-QrySecret012345"


@pytest.mark.parametrize(
    ("request_bytes", "logged"),
    [
        (
            f"GET /v1/models HTTP/1.1\r\nhost: x\r\nAuthorization Bearer {SK_HEADER}\r\n\r\n".encode(),
            "Invalid header line: b'Authorization Bearer ********",
        ),
        (
            f"GET /v1/models?api_key={SK_QUERY} HTTP/1.1 extra\r\nhost: x\r\n\r\n".encode(),
            "Bad HTTP request line: b'GET /v1/models?api_key=********",
        ),
        (
            f"GET /v1/models?api_key={SK_QUERY} HTTP/9\r\nhost: x\r\n\r\n".encode(),
            "Bad HTTP request line: b'GET /v1/models?api_key=********",
        ),
    ],
    ids=["header-line", "request-line", "version"],
)
def test_mitmproxys_own_errors_never_log_a_secret(plain, gw, request_bytes, logged):
    mark = len(plain.output())
    status, _, _ = split_answer(raw_exchange(plain.port, request_bytes))
    assert status == 400  # mitmproxy's own refusal
    wait_after(plain, mark, logged)  # its message was logged, masked
    assert_no_secret("proxy output", plain.output()[mark:], SK_HEADER, SK_QUERY)
    assert gw.requests == []


# ---- 9. protocol edge cases ----------------------------------------------------------------------


def test_upstream_103_early_hints_becomes_a_clear_502(make_proxy):
    """mitmproxy's HTTP/1 client takes any response head as final (mitmproxy/proxy/layers/http/
    _http1.py, Http1Client.read_headers; a 1xx has no body: mitmproxy/net/http/http1/read.py,
    expected_http_body_size), so the 200 after a 103 is never relayed, and a client library that
    skips 1xx (httpx, the SDKs) would wait for a final answer until its timeout. The addon cannot
    recover the real answer, but it turns the interim one into a 502 in the client's shape."""
    ok = json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
    hints = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
    with upstream(hints + json_answer(ok)) as up:
        p = make_proxy(upstream=up.url)
        body = json.dumps(CHAT).encode()
        status, _, raw = split_answer(
            raw_exchange(
                p.port,
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body),
            )
        )
        assert status == 502
        assert json.loads(raw)["error"]["code"] == "interim_response"
        assert p.wait_output("/compat/chat/completions 502 ")  # the summary says what the client got
        r = httpx.post(p.url + "/v1/chat/completions", json=CHAT, timeout=5)
        assert r.status_code == 502 and "interim 103" in r.json()["error"]["message"]
        assert len(up.heads) == 2


def test_request_with_chunked_trailers_gets_no_answer_and_is_not_forwarded(make_proxy, gw):
    """Pinned mitmproxy behaviour: its HTTP/1 body reader raises on trailers
    (mitmproxy/proxy/layers/http/_http1.py, Http1Connection.read_body: "HTTP trailers are not
    implemented yet."), before any hook sees the request; the connection is left open without an
    answer. An addon cannot refuse it: answering in requestheaders waits for the same body."""
    p = make_proxy()
    settle(p)  # the traceback is an error: logged during startup, mitmproxy would exit
    body = json.dumps(CHAT).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n"
        b"%x\r\n%s\r\n0\r\nx-checksum: 1\r\n\r\n" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", p.port), timeout=2) as s:
        s.sendall(request)
        with pytest.raises(TimeoutError):
            s.recv(65536)  # no answer, no close
    assert p.wait_output("NotImplementedError: HTTP trailers are not implemented yet.")
    assert gw.requests == []
    r = httpx.post(p.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and p.proc.poll() is None


def test_upstream_failing_mid_body_is_logged_and_counted_as_the_502_the_client_got(make_proxy, gw):
    p = make_proxy()
    r = httpx.post(p.url + "/v1/chat/completions", json=CHAT, headers={"x-standin-close": "mid-body"})
    assert r.status_code == 502
    assert len(gw.requests) == 1
    assert p.wait_output("/compat/chat/completions 502 upstream_failed ")
    summaries = [line for line in p.output().splitlines() if " chat -> compat " in line]
    assert len(summaries) == 1 and " 502 upstream_failed " in summaries[0]
    samples = {
        (s.name, s.labels.get("status")): s.value
        for family in text_string_to_metric_families(httpx.get(p.url + "/metrics").text)
        for s in family.samples
        if s.name == "cf_gateway_requests_total"
    }
    assert samples == {("cf_gateway_requests_total", "502"): 1.0}
