"""End to end: record real SDK sessions with cf_record, then answer them with cf_replay, nothing upstream.

For each API (gateway and rest): a proxy records the sessions through this module's own stand-in;
a second proxy, with other credentials, replays them while its cf_base_url still points at that
stand-in, which must receive nothing; then ``./run.sh replay --strict`` replays the same file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import NamedTuple

import anthropic
import openai
import pytest

from tests.harness import (
    ACCOUNT_ID,
    GATEWAY_ID,
    ROOT,
    clean_env,
    free_port,
    quick_env,
    start_proxy,
    wait_for_port,
)
from tests.standin_gateway import StandinGateway

RECORD_TOKEN = "record-gateway-token-5b2f9c"
RECORD_API_TOKEN = "record-rest-api-token-8d1e7a"
RECORD_KEY = "record-access-key-3c6a0f"
REPLAY_TOKEN = "replay-gateway-token-4e8b2d"
REPLAY_KEY = "replay-access-key-9f7c1b"
REPLAY_API_TOKEN = "replay-rest-api-token-6a0d3f"
NEVER_RECORDED = [{"role": "user", "content": "never recorded"}]
TIMEOUT = 15.0
TOOLS_OPENAI = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
TOOLS_ANTHROPIC = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
SESSIONS = 5  # requests run_sessions makes


@pytest.fixture(scope="module")
def standin():
    """This module's own stand-in (the session one is shared and cleared by other tests)."""
    gw = StandinGateway(api_token=RECORD_API_TOKEN).start()
    yield gw
    gw.stop()


def settings(api: str, token: str, key: str) -> tuple[dict[str, str], dict[str, str]]:
    """(options, environment) of a proxy for this api with these credentials."""
    env = quick_env(
        PROXY_KEYS=key, **({"CLOUDFLARE_API_TOKEN": token} if api == "rest" else {"CF_AIG_TOKEN": token})
    )
    return {"cf_api": api}, env


def run_sessions(url: str, key: str) -> dict[str, object]:
    """What real clients see: chat (JSON, streamed), a Responses function call and its result, and an
    Anthropic streamed tool use; SDK objects as dicts, streams as their events in order."""
    oai = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)
    out: dict[str, object] = {}
    chat = [{"role": "user", "content": "Hello"}]
    out["chat"] = oai.chat.completions.create(model="openai/gpt-4o-mini", messages=chat).model_dump()
    out["chat_stream"] = [
        c.model_dump()
        for c in oai.chat.completions.create(
            model="openai/gpt-4o-mini", messages=chat, stream=True, stream_options={"include_usage": True}
        )
    ]
    events = list(
        oai.responses.create(model="gpt-5", input="Weather in Paris?", tools=TOOLS_OPENAI, stream=True)
    )
    out["responses_stream"] = [e.model_dump() for e in events]
    call = [e.item for e in events if e.type == "response.output_item.done"][-1]
    assert call.type == "function_call"
    follow = oai.responses.create(
        model="gpt-5",
        tools=TOOLS_OPENAI,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
    )
    out["responses_result"] = follow.model_dump()
    claude = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=TIMEOUT)
    with claude.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=256,
        tools=TOOLS_ANTHROPIC,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        out["messages_stream"] = [e.model_dump() for e in stream]
    return out


def check_sessions(out: dict) -> None:
    """The recorded sessions are what they should be (so equal replays mean something)."""
    assert out["chat"]["choices"][0]["message"]["content"] == "Hello from the stand-in gateway."
    assert out["chat_stream"][-1]["usage"]["total_tokens"] > 0
    assert out["responses_stream"][-1]["type"] == "response.completed"
    assert out["responses_result"]["output"][0]["content"][0]["text"].startswith("Done: the tool returned")
    tool_use = [e for e in out["messages_stream"] if e["type"] == "content_block_start"]
    assert tool_use and tool_use[-1]["content_block"]["type"] == "tool_use"
    assert out["messages_stream"][-1]["type"] == "message_stop"


def start_run_sh(args: list[str], env: dict[str, str], workdir: Path) -> tuple[subprocess.Popen, int, Path]:
    """./run.sh with HOST_ADDR=127.0.0.1 and a free HOST_PORT, in its own process group."""
    port = free_port()
    log = workdir / "run_sh.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(ROOT / "run.sh"), *args, "--set", f"confdir={workdir / 'conf'}"],
            env=clean_env(HOST_PORT=str(port), HOST_ADDR="127.0.0.1", **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    if not wait_for_port(port, proc, timeout=60):
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"run.sh did not start:\n{log.read_text()}")
    return proc, port, log


def stop_run_sh(proc: subprocess.Popen) -> int:
    """SIGINT to run.sh's process group, as Ctrl-C would; its exit status."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


class Session(NamedTuple):
    api: str
    recording: Path
    recorded: dict


@pytest.fixture(scope="module", params=["gateway", "rest"])
def session(request, standin, tmp_path_factory) -> Session:
    """The sessions recorded once per API through the stand-in, with the recording credentials."""
    api = request.param
    workdir = tmp_path_factory.mktemp(f"record-{api}")
    recording = workdir / "session.mitm"
    options, env = settings(api, RECORD_API_TOKEN if api == "rest" else RECORD_TOKEN, RECORD_KEY)
    recorder = start_proxy(
        standin.base_url, options={**options, "cf_record": str(recording)}, env=env, workdir=workdir
    )
    try:
        standin.clear()
        recorded = run_sessions(recorder.url, RECORD_KEY)
        assert recorder.wait_output("POST /v1/messages messages ->")  # the last exchange ended: it is saved
    finally:
        recorder.stop()
    check_sessions(recorded)
    prefix = f"/client/v4/accounts/{ACCOUNT_ID}/ai/" if api == "rest" else f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}/"
    assert len(standin.requests) == SESSIONS and all(r.path.startswith(prefix) for r in standin.requests)
    return Session(api, recording, recorded)


def replay_env(api: str) -> dict[str, str]:
    """Credentials other than the recording's."""
    if api == "rest":
        return {"CF_API": "rest", "CLOUDFLARE_API_TOKEN": REPLAY_API_TOKEN, "PROXY_KEYS": REPLAY_KEY}
    return {"CF_AIG_TOKEN": REPLAY_TOKEN, "PROXY_KEYS": REPLAY_KEY}


def test_recording_holds_no_secret(session):
    data = session.recording.read_bytes()
    assert data.count(b"cf_gateway") >= SESSIONS  # the flows are there, with the addon's metadata
    for secret in (RECORD_TOKEN, RECORD_API_TOKEN, RECORD_KEY):
        assert secret.encode() not in data, secret


def test_replay_gives_the_same_answers(session, standin, tmp_path):
    """Other credentials, the same client: equal bodies and SSE events in order, and the streams'
    usage in the log lines; unmatched requests get 404 no_recording in their family's shape; the
    report is written at SIGTERM."""
    report = tmp_path / "report.json"
    replayer = start_proxy(
        standin.base_url,
        # a record limit smaller than the answers: replayed answers are whole all the same
        options={
            "cf_replay": str(session.recording),
            "cf_replay_report": str(report),
            "cf_record_limit": "1k",
        },
        env=quick_env(**replay_env(session.api)),
        workdir=tmp_path,
    )
    try:
        standin.clear()
        assert run_sessions(replayer.url, REPLAY_KEY) == session.recorded
        chat = openai.OpenAI(
            base_url=replayer.url + "/v1", api_key=REPLAY_KEY, max_retries=0, timeout=TIMEOUT
        )
        with pytest.raises(openai.NotFoundError) as e:
            chat.chat.completions.create(model="openai/gpt-4o-mini", messages=NEVER_RECORDED)
        assert e.value.code == "no_recording" and "no recording matches" in e.value.message
        claude = anthropic.Anthropic(
            base_url=replayer.url, api_key=REPLAY_KEY, max_retries=0, timeout=TIMEOUT
        )
        with pytest.raises(anthropic.NotFoundError) as a:
            claude.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=NEVER_RECORDED)
        body = a.value.body
        assert isinstance(body, dict) and body["type"] == "error"
        assert body["error"]["type"] == "not_found_error" and body["error"]["code"] == "no_recording"
        assert not report.exists()
    finally:
        replayer.stop(signal.SIGTERM)
    streams = [line for line in replayer.output().splitlines() if "-> replay:" in line and " stream" in line]
    assert len(streams) == 3 and all(" tokens=" in line for line in streams), streams  # usage, as recorded
    summary = json.loads(report.read_text())
    assert (summary["used"], summary["unused"], summary["unmatched"]) == (SESSIONS, 0, 2)
    assert len(summary["unmatched_requests"]) == 2
    assert standin.requests == []


def test_run_sh_replay_strict_exit_status(session, standin, tmp_path):
    """./run.sh replay --strict, stopped with SIGINT on its process group: 0 when every request matched
    (the gateway recording), non-zero when one did not (the rest recording)."""
    unmatched = session.api == "rest"
    env = {"ACCOUNT_ID": ACCOUNT_ID, "GATEWAY_ID": GATEWAY_ID, "CF_BASE_URL": standin.base_url}
    proc, port, log = start_run_sh(
        ["replay", "--strict", str(session.recording)],
        {**env, **replay_env(session.api), **quick_env()},
        tmp_path,
    )
    standin.clear()
    try:
        url = f"http://127.0.0.1:{port}"
        assert run_sessions(url, REPLAY_KEY) == session.recorded
        if unmatched:
            with pytest.raises(openai.NotFoundError):
                openai.OpenAI(
                    base_url=url + "/v1", api_key=REPLAY_KEY, max_retries=0
                ).chat.completions.create(model="openai/gpt-4o-mini", messages=NEVER_RECORDED)
    finally:
        status = stop_run_sh(proc)
    output = log.read_text()
    assert standin.requests == []
    if unmatched:
        assert status != 0, output
        assert "replay --strict: 1 unmatched request(s)" in output
    else:
        assert f"{SESSIONS} used, 0 unused, 0 unmatched" in output
        assert status == 0, output


def test_a_recording_opens_in_the_llm_view(session):
    """What a reviewer sees in mitmweb (-r FILE): every recorded request and answer as a transcript."""
    from mitmproxy import io
    from mitmproxy.contentviews import Metadata

    from llmview.view import PRIORITY, LLMView

    view = LLMView()
    with open(session.recording, "rb") as f:
        flows = list(io.FlowReader(f).stream())
    assert flows
    for flow in flows:
        for message in (flow.request, flow.response):
            media_type = message.headers.get("content-type", "").partition(";")[0]  # as mitmproxy passes it
            meta = Metadata(flow=flow, content_type=media_type, http_message=message)
            assert view.render_priority(message.content, meta) == PRIORITY, (flow.request.path, message)
            assert view.prettify(message.content, meta).strip()
