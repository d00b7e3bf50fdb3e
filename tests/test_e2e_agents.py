"""End to end with the real agent CLIs: Claude Code and Codex finish a tool-using turn.

Each CLI sends a prompt; the stand-in answers with a call to the CLI's shell tool (x-standin-tool),
the CLI runs ``echo standin`` and sends the result back, and the stand-in's closing text must come
out on stdout. The ``*_direct`` tests talk to the stand-in without the proxy, so a failure of the
proxied ones that they do not share is the proxy's. The CLIs come from tests/agents
(``./run.sh test`` installs them); when they are missing these tests fail, not skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from tests.agent_clis import (
    CLAUDE_SHELL_TOOL,
    CODEX_SHELL_TOOL,
    missing_clis,
    run_claude,
    run_codex,
    tool_result_text,
)
from tests.harness import GATEWAY_ID, quick_env, start_proxy
from tests.standin_gateway import TOOL_RESULT_REPLY, Recorded, StandinGateway

TIMEOUT = 120  # per CLI run; a turn takes 1-3 s here
PROMPT = "Run the shell command `echo standin` and tell me what it printed."
TOKEN = "agents-test-token"
# "Done: the tool returned N characters." with any N.
REPLY_RE = re.compile(r"\d+".join(re.escape(part) for part in TOOL_RESULT_REPLY.split("{}")))


def _require_clis() -> None:
    problem = missing_clis()
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="module")
def standin() -> Iterator[StandinGateway]:
    """A stand-in of this module's own that requires a gateway token, for the direct runs."""
    with StandinGateway(require_token=TOKEN) as gw:
        yield gw


@pytest.fixture
def direct(standin: StandinGateway) -> StandinGateway:
    standin.clear()
    return standin


def _describe(result: subprocess.CompletedProcess[str], received: list[Recorded]) -> str:
    seen = "\n".join(f"  {r.method} {r.path}{'?' + r.query if r.query else ''}" for r in received)
    return (
        f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
        f"\n--- requests the gateway received\n{seen or '  (none)'}"
    )


def _run(
    fn: Callable[..., subprocess.CompletedProcess[str]], *args: object, **kwargs: object
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Call run_claude/run_codex with the test timeout; a timeout fails the test with the output."""
    start = time.monotonic()
    try:
        result = fn(*args, timeout=TIMEOUT, **kwargs)
    except subprocess.TimeoutExpired as exc:
        out = exc.output or ""
        err = exc.stderr or ""
        pytest.fail(f"{fn.__name__} did not finish within {TIMEOUT} s\n--- stdout\n{out}\n--- stderr\n{err}")
    return result, time.monotonic() - start


def _assert_turn(
    result: subprocess.CompletedProcess[str], received: list[Recorded], route: str
) -> list[Recorded]:
    """Exit 0, the stand-in's closing text on stdout, and a tool result sent upstream."""
    info = _describe(result, received)
    assert result.returncode == 0, info
    assert REPLY_RE.search(result.stdout), f"no closing text {TOOL_RESULT_REPLY!r} on stdout\n{info}"
    model_calls = [r for r in received if r.method == "POST" and r.path.endswith(route)]
    assert model_calls, f"no POST ...{route} reached the gateway\n{info}"
    results = [text for r in model_calls if (text := tool_result_text(r.json())) is not None]
    assert results, f"no request ending with a tool result reached the gateway\n{info}"
    assert "standin" in results[-1], f"the tool result does not hold the command's output: {results[-1]!r}"
    return model_calls


def _websocket_attempts(received: list[Recorded]) -> list[Recorded]:
    return [
        r
        for r in received
        if r.method == "GET"
        and r.path.endswith("/responses")
        and (r.header("upgrade") or "").lower() == "websocket"
    ]


# ---- directly against the stand-in (the CLI setup itself) ----------------------------


def test_claude_code_direct(direct: StandinGateway, tmp_path) -> None:
    _require_clis()
    result, _ = _run(
        run_claude,
        direct.anthropic_url,
        tmp_path,
        PROMPT,
        headers={"cf-aig-authorization": f"Bearer {TOKEN}"},
    )
    calls = _assert_turn(result, list(direct.requests), "/anthropic/v1/messages")
    tools = [t.get("name") for t in calls[0].json().get("tools", [])]
    assert CLAUDE_SHELL_TOOL in tools, tools


def test_codex_direct(direct: StandinGateway, tmp_path) -> None:
    _require_clis()
    result, _ = _run(
        run_codex, direct.openai_url, tmp_path, PROMPT, headers={"cf-aig-authorization": f"Bearer {TOKEN}"}
    )
    calls = _assert_turn(result, list(direct.requests), "/openai/responses")
    tools = [t.get("name") for t in calls[0].json().get("tools", [])]
    assert CODEX_SHELL_TOOL in tools, tools
    assert not _websocket_attempts(list(direct.requests))


# ---- through the proxy --------------------------------------------------------------


def test_claude_code_through_proxy(proxy, gw, tmp_path) -> None:
    """ANTHROPIC_BASE_URL=<proxy>: POST /v1/messages?beta=true, streamed, tool loop of two requests."""
    _require_clis()
    result, _ = _run(run_claude, proxy.url, tmp_path, PROMPT)
    _assert_turn(result, list(gw.requests), "/anthropic/v1/messages")


def test_codex_through_proxy(proxy, gw, tmp_path) -> None:
    """A custom provider with base_url <proxy>/v1: POST /v1/responses over HTTP (no WebSocket)."""
    _require_clis()
    result, _ = _run(run_codex, proxy.url + "/v1", tmp_path, PROMPT)
    _assert_turn(result, list(gw.requests), "/openai/responses")
    assert len(_websocket_attempts(list(gw.requests))) <= 1


def test_codex_builtin_provider_through_proxy(proxy, gw, tmp_path) -> None:
    """``openai_base_url = <proxy>/v1``: Codex first tries a WebSocket upgrade of /v1/responses.

    The proxy must turn it down with 426 Upgrade Required (Codex then falls back to HTTP POSTs at
    once); a 404/405/401 costs 5 retries with backoff and a warning, a 400 ends the run.
    """
    _require_clis()
    result, elapsed = _run(run_codex, proxy.url + "/v1", tmp_path, PROMPT, tool=None, builtin_provider=True)
    received = list(gw.requests)
    _assert_turn(result, received, "/openai/responses")
    attempts = _websocket_attempts(received)
    assert len(attempts) <= 1, (
        f"{len(attempts)} WebSocket upgrades reached the gateway\n{_describe(result, received)}"
    )
    retried = re.search(r"Reconnecting|Falling back from WebSockets", result.stderr)
    assert not retried, (
        f"Codex retried the WebSocket upgrade before falling back to HTTP ({elapsed:.1f} s)\n"
        f"{result.stderr[-3000:]}"
    )


# ---- through the proxy, with Cloudflare's REST API upstream ---------------------------


@pytest.fixture(scope="module")
def rest_proxy(gateway, tmp_path_factory):
    """cf_api=rest with the stand-in's Cloudflare API token."""
    p = start_proxy(
        gateway.base_url,
        options={"cf_api": "rest"},
        env=quick_env(CLOUDFLARE_API_TOKEN=gateway.api_token),
        workdir=tmp_path_factory.mktemp("rest-proxy"),
    )
    yield p
    p.stop()


def _rest_calls(gw: StandinGateway, calls: list[Recorded], author: str) -> None:
    """The documented REST path's calls carry the API token, the gateway and author/model names."""
    for call in calls:
        assert call.authorization == f"Bearer {gw.api_token}"
        assert call.aig_gateway_id == GATEWAY_ID
        assert call.json()["model"].startswith(author), call.json()["model"]


def test_claude_code_through_the_rest_api(rest_proxy, gw, tmp_path) -> None:
    """Claude Code sends bare model names; the REST API gets anthropic/<name>."""
    _require_clis()
    result, _ = _run(run_claude, rest_proxy.url, tmp_path, PROMPT)
    calls = _assert_turn(result, list(gw.requests), "/ai/v1/messages")
    _rest_calls(gw, calls, "anthropic/")


def test_codex_through_the_rest_api(rest_proxy, gw, tmp_path) -> None:
    """Codex sends bare OpenAI names; the REST API gets openai/<name>."""
    _require_clis()
    result, _ = _run(run_codex, rest_proxy.url + "/v1", tmp_path, PROMPT)
    calls = _assert_turn(result, list(gw.requests), "/ai/v1/responses")
    _rest_calls(gw, calls, "openai/")


# ---- recorded once, replayed with no upstream ----------------------------------------


def test_claude_code_session_recorded_then_replayed_offline(tmp_path) -> None:
    """A tool-using turn recorded through the proxy, then replayed with the stand-in stopped and
    another key: the same closing text, every request matched, and no secret in the file."""
    _require_clis()
    recording, report, work = tmp_path / "claude.mitm", tmp_path / "report.json", tmp_path / "agent"
    with StandinGateway(require_token=TOKEN) as upstream:
        recorder = start_proxy(
            upstream.base_url, options={"cf_record": str(recording)}, env=quick_env(CF_AIG_TOKEN=TOKEN),
            workdir=tmp_path / "record",
        )  # fmt: skip
        try:
            first, _ = _run(run_claude, recorder.url, work, PROMPT, env={"ANTHROPIC_API_KEY": "sk-ant-first"})
        finally:
            recorder.stop()
        dead_url = upstream.base_url
    assert first.returncode == 0 and REPLY_RE.search(first.stdout), first.stdout + first.stderr
    shutil.rmtree(work)  # the same folder again: Claude Code puts it in its system prompt
    replayer = start_proxy(
        dead_url, options={"cf_replay": str(recording), "cf_replay_report": str(report)},
        env=quick_env(CF_AIG_TOKEN="another-token"), workdir=tmp_path / "replay",
    )  # fmt: skip
    try:
        second, _ = _run(run_claude, replayer.url, work, PROMPT, env={"ANTHROPIC_API_KEY": "sk-ant-second"})
    finally:
        replayer.stop()
    summary = json.loads(report.read_text())
    assert second.returncode == 0, second.stdout + second.stderr + replayer.output()
    assert second.stdout == first.stdout
    assert summary["unmatched"] == 0 and summary["used"] >= 2, summary
    saved = recording.read_bytes()
    for secret in (TOKEN, "sk-ant-first"):
        assert secret.encode() not in saved
