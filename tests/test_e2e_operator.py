"""End to end, as the person running the proxy meets it: the startup line, the gateway's 401/2009
hint, the summary log file (JSON, logrotate, SIGHUP, standard output), run.sh's arguments,
mitmweb's flow list (through its API and a real browser), and .env.example filled in by a newcomer.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import fields
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from dotenv import dotenv_values

from cfgw import config, summary
from tests.harness import (
    ACCOUNT_ID,
    ADDON,
    MITMDUMP,
    ROOT,
    UNSERVABLE,
    Proxy,
    clean_env,
    free_port,
    start_proxy,
    wait_for_port,
)
from tests.standin_gateway import StandinGateway

TOKEN = "cfat-Op3rAt0rTkN-Vq8LmZx2"
MODEL = "openai/gpt-4o-mini"
# The stand-in counts words: 3 prompt tokens, and its 5-word reply: 8 in total.
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "one two three"}]}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
EMBED = {"model": "workers-ai/@cf/baai/bge-base-en-v1.5", "input": "one two three"}
RECORD_FIELDS = [f.name for f in fields(summary.FlowRecord)]
HINT = (
    "cf-gateway: the gateway answered 401/2009: the gateway requires authentication (all new gateways "
    "do): set CF_AIG_TOKEN to an AI Gateway token of this account, or check that the token has the "
    "AI Gateway Run permission"
)
NO_TOKEN = (
    "no gateway token (requests carry none unless clients send cf-aig-authorization; authenticated "
    "gateways, which all new ones are, answer 401/2009: set CF_AIG_TOKEN)"
)
DEFAULT_GATEWAY = "(gateway default (Cloudflare's auto-created gateway); "
WEB_COLUMNS = ["icon", "method", "status", "comment", "path", "size", "time"]
UI_PASSWORD = "operator-ui-password"


@pytest.fixture(scope="module")
def default_gateway():
    """A new account's gateway: 'default', authenticated (2009 without the token)."""
    with StandinGateway(account_id=ACCOUNT_ID, gateway_id="default", require_token=TOKEN) as gw:
        yield gw


def startup_line(p: Proxy) -> str:
    assert p.wait_output("cf-gateway: requests go to "), p.output()
    (line,) = [line for line in p.output().splitlines() if "cf-gateway: requests go to " in line]
    return line


# -- the startup line and the 401/2009 hint ---------------------------------------------------------


def test_startup_line_without_gateway_id_or_token(default_gateway, tmp_path):
    """Nothing but ACCOUNT_ID set: the default gateway, and a line saying requests carry no token."""
    p = start_proxy(
        default_gateway.base_url,
        addon=False,  # no --set cf_... at all: what the environment says is all there is
        reverse_target=UNSERVABLE,
        extra_args=["-s", str(ADDON)],
        env={"ACCOUNT_ID": ACCOUNT_ID, "CF_BASE_URL": default_gateway.base_url},
        workdir=tmp_path,
    )
    try:
        line = startup_line(p)
        assert (
            f"requests go to {default_gateway.base_url}/v1/{ACCOUNT_ID}/default/... {DEFAULT_GATEWAY}" in line
        )
        assert f"; {NO_TOKEN}" in line
        for _ in range(2):
            r = httpx.post(p.url + "/v1/chat/completions", json=CHAT)
            assert r.status_code == 401
        assert default_gateway.requests[-1].header("cf-aig-authorization") is None
        assert p.wait_output("gateway_code=2009", timeout=10)
        for _ in range(200):  # the second summary line lands just after its answer
            if p.output().count("gateway_code=2009") == 2:
                break
            time.sleep(0.02)
        assert p.output().count("gateway_code=2009") == 2
        assert p.output().count(HINT) == 1
    finally:
        p.stop()


def test_2009_hint_is_one_warning_per_process(default_gateway, tmp_path):
    """With only warnings on the terminal, two 401/2009 answers print the hint once."""
    summaries = tmp_path / "summary.log"
    p = start_proxy(
        default_gateway.base_url,
        gateway_id="default",
        options={"termlog_verbosity": "warn", "cf_log_file": str(summaries), "cf_log_format": "json"},
        workdir=tmp_path,
    )
    try:
        for _ in range(2):
            assert httpx.post(p.url + "/v1/chat/completions", json=CHAT).status_code == 401
        records = wait_lines(summaries, 2)
        assert [(r["status"], r["gateway_code"]) for r in records] == [(401, 2009), (401, 2009)]
    finally:
        p.stop()
    lines = [line for line in p.output().splitlines() if "cf-gateway" in line]
    assert [line.partition("] ")[2] for line in lines] == [HINT]


# -- the summary log file -----------------------------------------------------------------------------


def read_records(*paths: Path) -> list[dict]:
    """Every line of the files, each parsed as one JSON object (a line that is not fails the test)."""
    return [json.loads(line) for p in paths if p.exists() for line in p.read_text().splitlines()]


def wait_lines(path: Path, count: int, *more: Path) -> list[dict]:
    """Lines are written just after the client got its answer: wait (bounded) until all are there."""
    for _ in range(500):
        records = read_records(path, *more)
        if len(records) >= count:
            return records
        time.sleep(0.02)
    raise AssertionError(
        f"expected {count} lines in {path} and {more}, found {len(read_records(path, *more))}"
    )


KINDS = ("chat", "stream", "embeddings", "provider_error", "upstream_closed", "refused")


def one_request(url: str, i: int) -> str:
    kind = KINDS[i % len(KINDS)]
    with httpx.Client(base_url=url, timeout=30) as c:
        if kind == "chat":
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        elif kind == "stream":
            with c.stream("POST", "/v1/chat/completions", json=STREAM) as r:
                assert r.status_code == 200 and b"[DONE]" in r.read()
        elif kind == "embeddings":
            assert c.post("/v1/embeddings", json=EMBED).status_code == 200
        elif kind == "provider_error":
            r = c.post("/v1/chat/completions", json=CHAT, headers={"x-standin-status": "429"})
            assert r.status_code == 429
        elif kind == "upstream_closed":
            r = c.post("/v1/chat/completions", json=CHAT, headers={"x-standin-close": "before-headers"})
            assert r.status_code == 502
        else:
            assert c.post("/v1//chat/completions", json=CHAT).status_code == 400
    return kind


def open_paths(pid: int) -> set[str]:
    return {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def test_json_log_file_busy_session_with_rotation_and_sighup(make_proxy, gw, tmp_path):
    """200 mixed requests from 8 threads; the file is moved twice mid-session as logrotate does (the
    second time followed by SIGHUP): no line lost, and each line one JSON record and nothing else."""
    logs = tmp_path / "logs"
    logs.mkdir()
    current = logs / "summary.log"
    p = make_proxy({"cf_log_format": "json", "cf_log_file": str(current)})
    kinds: list[str] = []
    with ThreadPoolExecutor(8) as pool:
        for start, rotate in ((0, None), (70, "summary.log.1"), (140, "summary.log.2")):
            futures = [pool.submit(one_request, p.url, i) for i in range(start, min(start + 70, 200))]
            if rotate:
                while sum(f.done() for f in futures) < 20:
                    time.sleep(0.002)
                current.rename(logs / rotate)  # with requests in flight
                if rotate.endswith(".2"):
                    p.proc.send_signal(signal.SIGHUP)
            wait(futures)
            kinds += [f.result() for f in futures]
    rotated = [logs / "summary.log.1", logs / "summary.log.2"]
    records = wait_lines(current, 200, *rotated)
    assert all(read_records(path) for path in rotated)  # lines on both sides of each move

    # SIGHUP on an idle proxy: the moved file is let go and the path opened again at once
    current.rename(logs / "summary.log.3")
    p.proc.send_signal(signal.SIGHUP)
    for _ in range(250):
        if current.exists():
            break
        time.sleep(0.02)
    assert current.exists() and current.stat().st_size == 0
    if Path(f"/proc/{p.proc.pid}/fd").is_dir():
        held = open_paths(p.proc.pid)
        assert str(current) in held and str(logs / "summary.log.3") not in held
    one_request(p.url, 0)
    kinds.append("chat")
    assert p.proc.poll() is None  # SIGHUP did not end it
    p.stop()

    records = read_records(current, *rotated, logs / "summary.log.3")
    assert len(records) == 201 == len(kinds)
    assert len(read_records(current)) == 1
    assert all(list(r) == RECORD_FIELDS for r in records)  # the documented fields, in order

    def kind_of(r: dict) -> str:
        if r["outcome"] == "local":
            return "refused"
        if r["path"] == "/v1/embeddings":
            return "embeddings"
        if r["stream"]:
            return "stream"
        return {200: "chat", 429: "provider_error", 502: "upstream_closed"}[r["status"]]

    assert Counter(kind_of(r) for r in records) == Counter(kinds)
    tokens = {(kind_of(r), r["prompt_tokens"], r["completion_tokens"], r["total_tokens"]) for r in records}
    assert tokens == {
        ("chat", 3, 5, 8),
        ("stream", 3, 5, 8),
        ("embeddings", 3, None, 3),
        ("provider_error", None, None, None),
        ("upstream_closed", None, None, None),
        ("refused", None, None, None),
    }
    refused = [r for r in records if r["outcome"] == "local"]
    assert {(r["status"], r["upstream"], r["route"]) for r in refused} == {(400, None, None)}
    assert {r["outcome"] for r in records if r["status"] == 502} == {"upstream_failed"}


def start_split(upstream: str, workdir: Path, *args: str) -> tuple[subprocess.Popen, int]:
    """mitmdump with the addon, its standard output and standard error in separate files."""
    port = free_port()
    cmd = [
        str(MITMDUMP), "--set", f"confdir={workdir / 'conf'}", "-s", str(ADDON),
        "--mode", f"reverse:{UNSERVABLE}@127.0.0.1:{port}", "--set", "connection_strategy=lazy",
        "--set", f"cf_account_id={ACCOUNT_ID}", "--set", "cf_gateway_id=test-gw",
        "--set", f"cf_base_url={upstream}",
        *args,
    ]  # fmt: skip
    with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=clean_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
    assert wait_for_port(port, proc), (workdir / "stderr").read_text()
    return proc, port


@pytest.mark.parametrize("verbosity", ["info", "warn"])
def test_log_file_dash_keeps_standard_output_for_summary_lines(gw, tmp_path, verbosity):
    """cf_log_file=-: mitmproxy's own log and flow dump go to standard error once the addon is
    configured. The one line mitmproxy logs before it loads any script ('Loading script ...') is
    only left out with termlog_verbosity=warn, the setting for a pipe into a log shipper."""
    proc, port = start_split(
        gw.base_url, tmp_path,
        "--set", "cf_log_file=-", "--set", "cf_log_format=json", "--set", "flow_detail=1",
        "--set", f"termlog_verbosity={verbosity}",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(url + "/v1/chat/completions", json=CHAT).status_code == 200
        assert httpx.post(url + "/v1/embeddings", json=EMBED).status_code == 200
        closed = {"x-standin-close": "before-headers"}
        assert httpx.post(url + "/v1/chat/completions", json=CHAT, headers=closed).status_code == 502
        stdout = tmp_path / "stdout"
        for _ in range(250):
            if stdout.read_text().count("\n") >= 3 + (verbosity == "info"):
                break
            time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(10)
    out_lines = (tmp_path / "stdout").read_text().splitlines()
    err = (tmp_path / "stderr").read_text()
    if verbosity == "info":
        assert re.fullmatch(r"\[[\d:.]+\] Loading script .*cf_gateway\.py", out_lines.pop(0))
        assert "cf-gateway: requests go to " in err and "listening at 127.0.0.1:" in err
        assert err.count('{"method":"POST"') == 3  # the event log's copy of each summary
    records = [json.loads(line) for line in out_lines]
    assert [(r["path"], r["status"], r["outcome"]) for r in records] == [
        ("/v1/chat/completions", 200, "ok"),
        ("/v1/embeddings", 200, "ok"),
        ("/v1/chat/completions", 502, "upstream_failed"),
    ]
    assert all(list(r) == RECORD_FIELDS for r in records)
    assert "upstream failed before a response" in err  # a warning: shown at both verbosities
    assert "<< 200 OK" in err  # mitmdump's flow dump (flow_detail=1)


# -- run.sh ------------------------------------------------------------------------------------------


def checkout(tmp_path: Path) -> Path:
    """run.sh next to a stand-in .venv (this interpreter, its dependencies marked as installed) and a
    link to the addons: run.sh creates nothing, installs nothing, and reads only this .env."""
    repo = tmp_path / "repo"
    (repo / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(ROOT / "run.sh", repo)
    shutil.copy(ROOT / "pyproject.toml", repo)
    (repo / "addons").symlink_to(ROOT / "addons")
    python = repo / ".venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    checksum = subprocess.run(
        "cksum < pyproject.toml", shell=True, cwd=repo, capture_output=True, text=True, check=True
    ).stdout.split()[0]
    (repo / ".venv" / f".cf-gateway-{checksum}-base").touch()
    return repo


def run_sh(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """run.sh with CF_DRY_RUN=1: prints the command it would run, one argument per line."""
    return subprocess.run(
        ["bash", str(repo / "run.sh"), *args],
        env=clean_env(CF_DRY_RUN="1", **env),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def command(repo: Path, *args: str, **env: str) -> list[str]:
    done = run_sh(repo, *args, **env)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def proxy_args(listen: str) -> list[str]:
    return ["-s", "addons/cf_gateway.py", "--mode", f"reverse:http://127.0.0.1:0@{listen}", "--set",
            "connection_strategy=lazy"]  # fmt: skip


def test_run_sh_builds_the_mitmproxy_command(tmp_path):
    repo = checkout(tmp_path)
    port = str(free_port())
    local = {"HOST_ADDR": "127.0.0.1", "HOST_PORT": port}
    quiet = ["--set", "flow_detail=0"]
    assert command(repo) == [".venv/bin/mitmdump", *proxy_args("0.0.0.0:3000"), *quiet]
    assert command(repo, **local) == [".venv/bin/mitmdump", *proxy_args(f"127.0.0.1:{port}"), *quiet]
    assert command(repo, HOST_ADDR="::1", HOST_PORT=port) == [
        ".venv/bin/mitmdump",
        *proxy_args(f"[::1]:{port}"),
        *quiet,
    ]
    # the user's own flow_detail wins (mitmproxy refuses an option given twice)
    assert command(repo, "--set", "flow_detail=2", **local) == [
        ".venv/bin/mitmdump",
        *proxy_args(f"127.0.0.1:{port}"),
        "--set",
        "flow_detail=2",
    ]
    columns = [a for c in WEB_COLUMNS for a in ("--set", f"web_columns={c}")]
    web = [".venv/bin/mitmweb", "--web-host", "127.0.0.1", *proxy_args(f"127.0.0.1:{port}")]
    assert command(repo, "web", **local) == [*web, *columns]
    assert command(repo, "web", "--set", "web_columns=path", **local) == [*web, "--set", "web_columns=path"]
    # .env is read when the environment does not say
    (repo / ".env").write_text(f"HOST_ADDR=127.0.0.1\nHOST_PORT={port}\n")
    assert command(repo) == [".venv/bin/mitmdump", *proxy_args(f"127.0.0.1:{port}"), *quiet]
    assert command(repo, HOST_ADDR="0.0.0.0")[4] == f"reverse:http://127.0.0.1:0@0.0.0.0:{port}"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HOST_PORT": "3000; rm -rf ~"}, "HOST_PORT must be a port number (1-65535), got '3000; rm -rf ~'"),
        ({"HOST_PORT": "70000"}, "HOST_PORT must be a port number (1-65535), got '70000'"),
        (
            {"HOST_ADDR": "0.0.0.0 --mode regular"},
            "HOST_ADDR must be an address such as 0.0.0.0 or 127.0.0.1",
        ),
    ],
)
@pytest.mark.parametrize("tool", ["run", "web"])
def test_run_sh_refuses_a_bad_listen_setting_instead_of_starting_without_the_addon(
    tmp_path, env, message, tool
):
    done = run_sh(checkout(tmp_path), tool, **env)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"run.sh: {message}")


# -- .env.example, as a newcomer fills it in ---------------------------------------------------------


def filled_env_example(repo: Path) -> Path:
    """.env.example copied to .env with only ACCOUNT_ID and CF_AIG_TOKEN filled in."""
    text = (ROOT / ".env.example").read_text()
    text, n = re.subn(r"(?m)^ACCOUNT_ID=$", f"ACCOUNT_ID={ACCOUNT_ID}", text)
    text, m = re.subn(r"(?m)^CF_AIG_TOKEN=$", f"CF_AIG_TOKEN={TOKEN}", text)
    assert (n, m) == (1, 1)
    (repo / ".env").write_text(text)
    return repo / ".env"


def test_env_example_documents_every_option_with_its_default():
    text = (ROOT / ".env.example").read_text()
    for o in config.OPTIONS:
        (line,) = [line for line in text.splitlines() if re.match(rf"#? ?{o.spec.env}=", line)]
        if line.startswith("#") and not o.spec.secret:
            assert line == f"# {o.spec.env}={o.spec.default}", "a commented option shows its default"


def test_env_example_with_account_and_token_is_a_working_laptop_setup(default_gateway, tmp_path):
    repo = checkout(tmp_path)
    dotenv = dotenv_values(filled_env_example(repo))
    settings = config.parse_settings(config.option_defaults({}, dotenv), dotenv)
    assert (settings.account_id, settings.gateway_id, settings.token) == (ACCOUNT_ID, "default", TOKEN)
    assert (settings.proxy_keys, settings.open_proxy, settings.redact) == (None, False, True)
    assert (dotenv["HOST_ADDR"], dotenv["HOST_PORT"]) == ("127.0.0.1", "3000")

    # The real thing: run.sh's command in that checkout (port from the environment: 3000 may be taken),
    # which the addon accepts (the token is injected, so it must listen on loopback only).
    port = free_port()
    argv = command(repo, "--set", f"confdir={tmp_path / 'conf'}", HOST_PORT=str(port))
    assert argv[4] == f"reverse:http://127.0.0.1:0@127.0.0.1:{port}"
    argv[0] = str(MITMDUMP)
    log_path = tmp_path / "mitmdump.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=repo,
            env=clean_env(CF_BASE_URL=default_gateway.base_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    p = Proxy(proc=proc, port=port, workdir=repo, log_path=log_path)
    try:
        assert wait_for_port(port, proc), p.output()
        line = startup_line(p)
        assert (
            DEFAULT_GATEWAY in line
            and "; gateway token injected; " in line
            and "no gateway token" not in line
        )
        # Unified Billing: SDKs insist on a key; a placeholder does, and never reaches the gateway
        chat = openai.OpenAI(base_url=p.url + "/v1", api_key="unused", max_retries=0)
        hello = [{"role": "user", "content": "one two three"}]
        assert chat.chat.completions.create(model=MODEL, messages=hello).choices[0].message.content  # type: ignore[arg-type]
        claude = anthropic.Anthropic(base_url=p.url, api_key="unused", max_retries=0)
        message = claude.messages.create(model="claude-sonnet-5", max_tokens=64, messages=hello)  # type: ignore[arg-type]
        assert [block.type for block in message.content] == ["text"]
        assert [r.path.rpartition("/default/")[2] for r in default_gateway.requests[-2:]] == [
            "compat/chat/completions",
            "anthropic/v1/messages",
        ]
        for got in default_gateway.requests[-2:]:
            assert got.header_values("cf-aig-authorization") == [f"Bearer {TOKEN}"]
            assert (got.header("authorization"), got.header("x-api-key")) == (None, None)
        assert p.wait_output("tokens=3 in/5 out")
    finally:
        p.stop()
    assert TOKEN[-5:] not in p.output()


# -- mitmweb's flow list --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(gateway, tmp_path_factory):
    """mitmweb started with run.sh web's own arguments, after one chat completion."""
    tmp = tmp_path_factory.mktemp("web")
    repo = checkout(tmp)
    port, web_port = free_port(), free_port()
    argv = command(
        repo, "web",
        "--set", f"confdir={tmp / 'conf'}", "--web-port", str(web_port), "--set", "web_open_browser=false",
        "--set", f"web_password={UI_PASSWORD}",
        HOST_ADDR="127.0.0.1", HOST_PORT=str(port),
    )  # fmt: skip
    assert argv[0] == ".venv/bin/mitmweb"
    argv[0] = str(MITMDUMP.with_name("mitmweb"))
    env = clean_env(ACCOUNT_ID=ACCOUNT_ID, GATEWAY_ID="test-gw", CF_BASE_URL=gateway.base_url)
    log_path = tmp / "mitmweb.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    p = Proxy(proc=proc, port=port, workdir=tmp, log_path=log_path)
    try:
        assert wait_for_port(port, proc) and wait_for_port(web_port, proc), p.output()
        gateway.clear()
        assert httpx.post(p.url + "/v1/chat/completions", json=CHAT).status_code == 200
        assert p.wait_output("tokens=3 in/5 out")
        ui = httpx.Client(base_url=f"http://127.0.0.1:{web_port}")
        assert ui.get("/", params={"token": UI_PASSWORD}).status_code == 200  # the session cookie
        yield p, ui, f"http://127.0.0.1:{web_port}"
        ui.close()
    finally:
        p.stop()


COMMENT = re.compile(rf"{re.escape(MODEL)} · 8 tok · (\d+ ms|\d+\.\d s)")


def test_mitmweb_flow_list_has_the_comment_column(web):
    _, ui, _ = web
    assert ui.get("/options").json()["web_columns"]["value"] == WEB_COLUMNS
    (flow,) = [f for f in ui.get("/flows").json() if f["type"] == "http"]
    assert COMMENT.fullmatch(flow["comment"]), flow["comment"]


def test_browser_renders_the_comment_in_the_flow_list(web, tmp_path):
    """Headless Chromium: the list mitmweb renders has the column, with model, tokens and time."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    _, ui, base = web
    (flow,) = [f for f in ui.get("/flows").json() if f["type"] == "http"]
    browser = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--window-size=1200,400",
    ]  # fmt: skip
    page = f"{base}/?token={UI_PASSWORD}"
    dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=60).stdout
    headers = re.findall(r'<th class="col-(\w+)', dom)
    assert headers[: len(WEB_COLUMNS)] == WEB_COLUMNS
    cells = re.findall(r'<td class="col-comment">([^<]*)', dom)
    assert cells == [flow["comment"]]
    shot = tmp_path / "flow-list.png"
    subprocess.run([*browser, f"--screenshot={shot}", page], capture_output=True, timeout=60)
    assert shot.read_bytes().startswith(b"\x89PNG")  # for a person to look at: pytest keeps tmp_path
