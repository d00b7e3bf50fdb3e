"""mitmweb as a plain HTTP proxy with only ``-s addons/llm_view.py``: its web API shows each
family's requests, answers and streams as transcripts, recognised by path and shape alone."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.standin_gateway import REPLY_TEXT, STANDIN_API_TOKEN, StandinGateway

ROOT = Path(__file__).resolve().parent.parent
MITMWEB = Path(sys.executable).parent / "mitmweb"
PASSWORD = "llm-view-e2e"
TAG = "x-llm-view-test"  # names each request, to find its flow
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": CHAT["messages"]}
RESPONSES = {"model": "gpt-4.1-mini", "input": "Say hello"}
RUN = {"model": "@cf/meta/llama-3.1-8b-instruct", "input": {"prompt": "Say hello"}}
STREAM_ENDS = {"chat": ", [DONE]\n", "messages": ", message_stop\n", "responses": ", response.completed\n"}
STREAM_ENDS["run"] = STREAM_ENDS["chat"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mitmweb exited with {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"mitmweb did not listen on {port}:\n{log.read_text()}")


@pytest.fixture(scope="module")
def gateway():
    gw = StandinGateway()
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def mitmweb(tmp_path_factory):
    """(proxy port, web port) of a mitmweb in regular mode running only the view's script."""
    tmp = tmp_path_factory.mktemp("mitmweb")
    proxy_port, web_port = free_port(), free_port()
    log = tmp / "mitmweb.log"
    args = [str(MITMWEB), "-s", str(ROOT / "addons" / "llm_view.py"), "--set", f"confdir={tmp}"]
    args += ["--web-host", "127.0.0.1", "--web-port", str(web_port), "--set", "web_open_browser=false"]
    args += ["--set", f"web_password={PASSWORD}", "--mode", f"regular@{proxy_port}"]
    args += ["--set", "listen_host=127.0.0.1"]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(proxy_port, proc, log)
        wait_for_port(web_port, proc, log)
        yield proxy_port, web_port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


CHAT_STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
COMPAT = {**CHAT, "model": "openai/gpt-4o-mini"}
SENT = {
    "chat": ("openai_url", "/chat/completions", CHAT),
    "chat stream": ("openai_url", "/chat/completions", CHAT_STREAM),
    "chat compat": ("compat_url", "/chat/completions", COMPAT),
    "chat rest": ("rest_openai_url", "/chat/completions", COMPAT),
    "messages": ("anthropic_url", "/v1/messages", MESSAGES),
    "messages stream": ("anthropic_url", "/v1/messages", {**MESSAGES, "stream": True}),
    "responses": ("openai_url", "/responses", RESPONSES),
    "responses stream": ("openai_url", "/responses", {**RESPONSES, "stream": True}),
    "run": ("rest_url", "/ai/run", RUN),
    "run stream": ("rest_url", "/ai/run", {**RUN, "input": {**RUN["input"], "stream": True}}),
}
"""name -> (the stand-in's base URL, path, body): each family, streamed or not, through each route."""


def send(client: httpx.Client, gw: StandinGateway, name: str) -> None:
    base, path, body = SENT[name]
    headers = {TAG: name, "anthropic-version": "2023-06-01"}
    if base.startswith("rest_"):
        headers |= {"authorization": f"Bearer {STANDIN_API_TOKEN}", "cf-aig-gateway-id": gw.gateway_id}
    assert client.post(getattr(gw, base) + path, json=body, headers=headers).status_code == 200, name


def wait_for_flows(api: httpx.Client, n: int) -> dict[str, dict]:
    """The flows with an answer, by the name in their TAG header."""
    deadline = time.monotonic() + 20
    while True:
        flows = [f for f in api.get("/flows").json() if f.get("response")]
        if len(flows) >= n or time.monotonic() > deadline:
            return {v: f for f in flows for k, v in f["request"]["headers"] if k == TAG}
        time.sleep(0.1)


def views(api: httpx.Client, flow: dict, side: str) -> tuple[dict, dict]:
    """What mitmweb's UI gets for a message: the "auto" view, and the view picked by name."""
    url = f"/flows/{flow['id']}/{side}/content"
    return api.get(f"{url}/auto.json").json(), api.get(f"{url}/llm%20chat.json").json()


@pytest.fixture(scope="module")
def shown(gateway, mitmweb):
    """name -> (request view, response view) of each request sent through mitmweb."""
    proxy_port, web_port = mitmweb
    with httpx.Client(proxy=f"http://127.0.0.1:{proxy_port}", trust_env=False, timeout=10) as client:
        for name in SENT:
            send(client, gateway, name)
    with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", trust_env=False, timeout=10) as api:
        assert api.get("/", params={"token": PASSWORD}).status_code == 200  # sets the login cookie
        flows = wait_for_flows(api, len(SENT))
        assert sorted(flows) == sorted(SENT)
        return {
            name: (views(api, flow, "request"), views(api, flow, "response")) for name, flow in flows.items()
        }


@pytest.mark.parametrize("name", SENT)
def test_each_request_and_answer_is_a_transcript(shown, name):
    (request, request_named), (response, response_named) = shown[name]
    assert request["view_name"] == response["view_name"] == "LLM chat"
    assert request["text"] == request_named["text"]
    assert response["text"] == response_named["text"]
    assert "\n[user]\nSay hello\n" in request["text"]
    assert f"\n[assistant]\n{REPLY_TEXT}\n" in response["text"]
    family = name.split()[0]
    if name.endswith("stream"):
        assert "stream=true" in request["text"]
        assert STREAM_ENDS[family] in response["text"]
    else:
        assert "\nstream: " not in response["text"]
