"""End to end through mitmweb's own API (what its Replay, Duplicate, Edit and Export buttons call),
with masking on: replays send the real secrets, while every copy of a flow a person can see,
save or export stays masked; a replay whose secret is gone is answered, never sent (issue 14).
"""

from __future__ import annotations

import json
import secrets
import time
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
from mitmproxy import http, io

from tests.harness import Proxy, start_mitmweb, start_proxy, web_client
from tests.standin_gateway import StandinGateway

MASK = "********"
# Fixed secrets with distinctive tails: none can turn up by chance in ids, hex or prose.
PROVIDER_KEY = "sk-rEpLaY.Provider-Qw7Er9Ty"
ANTHROPIC_KEY = "sk-ant-rEpLaY-Key-Mn4Bv2Cx"
TOKEN = "cfat-rEpLaY-Token-Zx3Cv5Bn"
TYPED_KEY = "sk-typed-by-hand-Lk8Jh6Gf"
ACCESS_KEY = "pk-rEpLaY-Access-Po9Iu7Yt"
SECRETS = (PROVIDER_KEY, ANTHROPIC_KEY, TOKEN, TYPED_KEY, ACCESS_KEY)
CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}
EDITED = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "four five"}]}
MESSAGES = {"model": "claude-sonnet-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def masked(secret: str, scheme: str = "Bearer ") -> str:
    return f"{scheme}{MASK}{secret[-4:]}"


def assert_no_secret(where: str, text: str | bytes) -> None:
    """Neither a secret nor any tail of it longer than the 4 characters a mask may keep."""
    for secret in SECRETS:
        tail = secret[-5:]
        found = tail.encode() in text if isinstance(text, bytes) else tail in text
        assert not found, f"{where} holds (a tail of) secret {secret[:8]}..."


def header(flow: dict, name: str) -> list[str]:
    return [v for k, v in flow["request"]["headers"] if k.lower() == name]


def http_flows(file: BinaryIO) -> list[http.HTTPFlow]:
    flows = list(io.FlowReader(file).stream())
    assert all(isinstance(f, http.HTTPFlow) for f in flows)
    return flows  # type: ignore[return-value]


def typed_key(flow: dict) -> list[list[str]]:
    """The flow's request headers with a new key typed over the masked Authorization, as in the UI."""
    return [
        [k, f"Bearer {TYPED_KEY}" if k.lower() == "authorization" else v]
        for k, v in flow["request"]["headers"]
    ]


class WebUI:
    """mitmweb's HTTP API as its UI calls it: password login, then XSRF-checked POST/PUT."""

    def __init__(self, base_url: str) -> None:
        self.http = web_client(base_url, timeout=10)
        # tornado accepts a plain token the client puts in both the cookie (named "_xsrf" by
        # mitmweb 11, "_mitmproxy_xsrf" by 12) and the header
        xsrf = secrets.token_hex(16)
        for cookie in ("_xsrf", "_mitmproxy_xsrf"):
            self.http.cookies.set(cookie, xsrf)
        self.http.headers["X-XSRFToken"] = xsrf

    def flows(self, in_flight: bool = False) -> list[dict]:
        """The flow list; no secret in it, except on a request being sent right now (masked as soon
        as its response starts, as any request is)."""
        r = self.http.get("/flows")
        assert r.status_code == 200
        if not in_flight:
            assert_no_secret("mitmweb's /flows", r.text)
        return [f for f in r.json() if f["type"] == "http"]

    def flow(self, flow_id: str, in_flight: bool = False) -> dict:
        (f,) = [f for f in self.flows(in_flight) if f["id"] == flow_id]
        return f

    def post(self, path: str, **kwargs) -> httpx.Response:
        r = self.http.post(path, **kwargs)
        assert r.status_code == 200, r.text
        return r

    def replay(self, flow_id: str) -> dict:
        """Replay a flow and wait (bounded) until it has its new response."""
        # (no secret check here: a key the person just typed is on the flow until it is sent)
        before = (self.flow(flow_id, in_flight=True).get("response") or {}).get("timestamp_end")
        self.post(f"/flows/{flow_id}/replay")
        for _ in range(500):
            end = (self.flow(flow_id, in_flight=True).get("response") or {}).get("timestamp_end")
            if end is not None and end != before:
                return self.flow(flow_id)
            time.sleep(0.02)
        raise AssertionError(f"the replay of {flow_id} did not finish: {self.flow(flow_id)}")

    def duplicate(self, flow_id: str) -> str:
        return self.post(f"/flows/{flow_id}/duplicate").text

    def edit(self, flow_id: str, **changes) -> None:
        r = self.http.put(f"/flows/{flow_id}", json=changes)
        assert r.status_code == 200, r.text

    def command(self, name: str, *arguments: str) -> object:
        result = self.post(f"/commands/{name}", json={"arguments": list(arguments)}).json()
        assert "error" not in result, result
        return result.get("value")

    def close(self) -> None:
        self.http.close()


def start_web(upstream: str, workdir: Path, options: dict[str, str], *args: str) -> tuple[Proxy, WebUI]:
    p, url = start_mitmweb(upstream, workdir, *args, options={"cf_redact": "on", **options})
    return p, WebUI(url)


@pytest.fixture(scope="module")
def strict():
    """An authenticated gateway: a replay without the real token would get 401/2009."""
    with StandinGateway(require_token=TOKEN) as gw:
        yield gw


def received(gw: StandinGateway, count: int):
    """The count-th request the stand-in received (waiting, bounded, for it to arrive)."""
    for _ in range(250):
        if len(gw.requests) >= count:
            break
        time.sleep(0.02)
    assert len(gw.requests) == count, [r.path for r in gw.requests]
    return gw.requests[count - 1]


def test_replay_duplicate_and_edits_send_the_real_secrets_and_nothing_shows_them(strict, tmp_path):
    """Laptop setup (token injected, clients' own provider keys forwarded): the replays the UI offers."""
    strict.clear()
    saved = tmp_path / "flows.mitm"
    options = {"cf_token": TOKEN, "cf_provider_keys": "forward"}
    p, ui = start_web(strict.base_url, tmp_path, options, "--set", f"save_stream_file={saved}")
    try:
        r = httpx.post(
            p.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {PROVIDER_KEY}"}
        )
        assert r.status_code == 200
        first = received(strict, 1)
        assert (first.header("authorization"), first.header("cf-aig-authorization")) == (
            f"Bearer {PROVIDER_KEY}",
            f"Bearer {TOKEN}",
        )
        assert p.wait_output("tokens=3 in/5 out")
        (original,) = ui.flows()
        fid = original["id"]
        assert header(original, "authorization") == [masked(PROVIDER_KEY)]
        assert header(original, "cf-aig-authorization") == [masked(TOKEN)]

        def assert_real_secrets(got, authorization: str = PROVIDER_KEY) -> None:
            assert got.header_values("authorization") == [f"Bearer {authorization}"]
            assert got.header_values("cf-aig-authorization") == [f"Bearer {TOKEN}"]

        # Replay, twice: the secrets are kept for the flow, not used up
        for n in (2, 3):
            replayed = ui.replay(fid)
            assert replayed["response"]["status_code"] == 200
            got = received(strict, n)
            assert_real_secrets(got)
            assert (got.path, got.body) == (first.path, first.body)
            assert header(replayed, "authorization") == [masked(PROVIDER_KEY)]
            assert header(replayed, "cf-aig-authorization") == [masked(TOKEN)]

        # Duplicate, then Replay the copy
        copy = ui.duplicate(fid)
        assert copy != fid and len(ui.flows()) == 2
        assert ui.replay(copy)["response"]["status_code"] == 200
        assert_real_secrets(received(strict, 4))

        # Edit the body and add a header (the masked ones come back as the UI shows them), then Replay
        headers = [*ui.flow(copy)["request"]["headers"], ["x-debug-note", "second try"]]
        ui.edit(copy, request={"headers": headers})
        ui.edit(copy, request={"content": json.dumps(EDITED)})  # content-length follows the new body
        assert ui.replay(copy)["response"]["status_code"] == 200
        got = received(strict, 5)
        assert_real_secrets(got)
        assert got.json() == EDITED and got.header("x-debug-note") == "second try"

        # Type a new key into the Authorization header: it is sent as typed, the token still restored
        ui.edit(fid, request={"headers": typed_key(original)})
        after = ui.replay(fid)
        assert_real_secrets(received(strict, 6), authorization=TYPED_KEY)
        assert header(after, "authorization") == [masked(TYPED_KEY)]  # masked once sent, like any other

        # Export (the UI's Export menu: curl, raw), HAR, and File > Save: all masked
        for fmt in ("curl", "httpie", "raw_request", "raw"):
            text = ui.command("export", fmt, f"@{fid}")
            assert isinstance(text, str) and MASK in text, fmt
            assert_no_secret(f"export as {fmt}", text)
        har = tmp_path / "flows.har"
        ui.command("save.har", "@all", str(har))
        assert MASK in har.read_text()
        assert_no_secret("HAR", har.read_text())
        dump = ui.http.get("/flows/dump").content
        assert_no_secret("File > Save", dump)
        dumped = http_flows(BytesIO(dump))
        assert [f.request.headers["cf-aig-authorization"] for f in dumped] == [masked(TOKEN)] * 2
    finally:
        ui.close()
        p.stop()
    assert len(strict.requests) == 6
    raw = saved.read_bytes()
    assert_no_secret("the -w file", raw)
    with open(saved, "rb") as f:
        flows = http_flows(f)
    assert len(flows) == 6  # the original and each replay, each written when its response came
    assert {f.request.headers["cf-aig-authorization"] for f in flows} == {masked(TOKEN)}
    assert_no_secret("mitmweb's output", p.output())


def test_flows_loaded_from_a_file_are_answered_not_sent(gw, tmp_path):
    """After a restart the proxy holds no secret for a masked header: the replay is answered with
    an error in the client API's shape and the gateway receives nothing."""
    saved = tmp_path / "flows.mitm"
    (tmp_path / "first").mkdir()
    first = start_proxy(gw.base_url, extra_args=["-w", str(saved)], workdir=tmp_path / "first")
    try:
        r = httpx.post(
            first.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {PROVIDER_KEY}"}
        )
        assert r.status_code == 200
        anthropic_headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
        assert (
            httpx.post(first.url + "/v1/messages", json=MESSAGES, headers=anthropic_headers).status_code
            == 200
        )
        assert first.wait_output("/v1/messages messages")
    finally:
        first.stop()
    assert_no_secret("the -w file", saved.read_bytes())
    gw.clear()

    (tmp_path / "web").mkdir()
    p, ui = start_web(gw.base_url, tmp_path / "web", {}, "-r", str(saved))
    try:
        flows = {f["request"]["path"].rpartition("/")[2]: f for f in ui.flows()}
        assert sorted(flows) == ["completions", "messages"]
        chat, messages = ui.replay(flows["completions"]["id"]), ui.replay(flows["messages"]["id"])
        time.sleep(0.2)  # had either been sent, the stand-in would have it by now
        assert gw.requests == []
        for f in (chat, messages):
            assert f["response"]["status_code"] == 400
        bodies = [
            json.loads(ui.http.get(f"/flows/{f['id']}/response/content.data").content)
            for f in (chat, messages)
        ]
        hint = "Type the key into the header and replay again, or replay the original flow."
        error = bodies[0]["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error", "unrestorable_secret")
        assert error["message"].startswith(
            "This replay was not sent: its 'authorization' header holds a mask"
        )
        assert error["message"].endswith(hint)
        assert bodies[1]["type"] == "error" and bodies[1]["error"]["type"] == "invalid_request_error"
        assert bodies[1]["error"]["code"] == "unrestorable_secret"
        assert bodies[1]["error"]["message"].startswith("This replay was not sent: its 'x-api-key' header")
        assert header(ui.flow(chat["id"]), "authorization") == [masked(PROVIDER_KEY)]

        # typing the key in is the way out
        ui.edit(chat["id"], request={"headers": typed_key(chat)})
        assert ui.replay(chat["id"])["response"]["status_code"] == 200
        assert received(gw, 1).header("authorization") == f"Bearer {TYPED_KEY}"
    finally:
        ui.close()
        p.stop()
    warnings = [
        line.partition("cf-gateway: ")[2] for line in p.output().splitlines() if "not sent: its" in line
    ]
    why = (
        "header is masked and this proxy does not hold the secret (flow loaded from a file, or its "
        "original is gone)"
    )
    assert warnings == [
        f"replay of flow {chat['id']} not sent: its authorization {why}",
        f"replay of flow {messages['id']} not sent: its x-api-key {why}",
    ]
    assert_no_secret("mitmweb's output", p.output())


def test_shared_mode_replays_get_the_fresh_token_and_skip_the_key_check(strict, tmp_path):
    """Access keys + token: the person at mitmweb is the operator; even a flow loaded from a file
    replays, since the only secret on it is the proxy's own token."""
    strict.clear()
    saved = tmp_path / "flows.mitm"
    options = {"cf_token": TOKEN, "cf_proxy_keys": ACCESS_KEY}
    (tmp_path / "live").mkdir()
    p, ui = start_web(strict.base_url, tmp_path / "live", options, "--set", f"save_stream_file={saved}")
    try:
        r = httpx.post(
            p.url + "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {ACCESS_KEY}"}
        )
        assert r.status_code == 200
        assert httpx.post(p.url + "/v1/chat/completions", json=CHAT).status_code == 401  # no key: refused
        sent = received(strict, 1)
        assert (sent.header("authorization"), sent.header("cf-aig-authorization")) == (
            None,
            f"Bearer {TOKEN}",
        )
        (flow, refused) = ui.flows()
        assert header(flow, "cf-aig-authorization") == [masked(TOKEN)] and header(flow, "authorization") == []

        assert ui.replay(flow["id"])["response"]["status_code"] == 200
        copy = ui.duplicate(flow["id"])
        ui.edit(copy, request={"content": json.dumps(EDITED)})
        assert ui.replay(copy)["response"]["status_code"] == 200
        # the refused flow (no key) replayed by the operator goes through too
        assert ui.replay(refused["id"])["response"]["status_code"] == 200
        received(strict, 4)
        for got in strict.requests[1:]:
            assert got.header_values("cf-aig-authorization") == [f"Bearer {TOKEN}"]
            assert got.header("authorization") is None
        assert [r.json() for r in strict.requests[1:]] == [CHAT, EDITED, CHAT]
        dump = tmp_path / "saved.mitm"  # File > Save: one copy of each flow (-w appends every replay)
        dump.write_bytes(ui.http.get("/flows/dump").content)
    finally:
        ui.close()
        p.stop()
    assert_no_secret("the -w file", saved.read_bytes())
    assert_no_secret("File > Save", dump.read_bytes())

    (tmp_path / "restarted").mkdir()
    p, ui = start_web(strict.base_url, tmp_path / "restarted", options, "-r", str(dump))
    try:
        loaded = ui.flows()[0]
        assert header(loaded, "cf-aig-authorization") == [masked(TOKEN)]
        assert ui.replay(loaded["id"])["response"]["status_code"] == 200
        assert received(strict, 5).header_values("cf-aig-authorization") == [f"Bearer {TOKEN}"]
    finally:
        ui.close()
        p.stop()
    assert_no_secret("mitmweb's output", p.output())
