#!/usr/bin/env python3
"""cf-gateway benchmarks: the addon side by side with bare mitmdump (and nginx, LiteLLM), in one run.

    ./run.sh bench [--quick] [--rounds N] [--baseline DIR] [--tree DIR] [--only small,agent,streams]
                   [--no-nginx] [--no-litellm]

Every target is started once, in front of one fast local upstream (bench/fastupstream.py),
and takes part in three parts: small (small JSON requests: throughput, CPU per request;
the time to a stream's first event; nginx and LiteLLM as peers), agent (200 KB bodies
answered by 300 streamed events) and streams (200 concurrent token streams: CPU per
event, events lost, RSS). Within a part each target runs once per round, in an order
rotated every round, so drift on the machine hits all of them alike; tables show the
median over rounds and the spread (min-max), and ratios are taken within each round.
Everything listens on 127.0.0.1, every run is bounded in requests and time, and every
process started here is stopped on the way out (also on Ctrl-C and SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import agentbody  # next to this script, which puts its own directory on sys.path
from mitmproxy import version as mitmproxy_version

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MITMDUMP = str(Path(sys.executable).with_name("mitmdump"))
ACCOUNT, GATEWAY = "0123456789abcdef0123456789abcdef", "test-gw"
COMPAT = f"/v1/{ACCOUNT}/{GATEWAY}/compat"
SDK_PATH = "/v1/chat/completions"  # what an OpenAI SDK with base_url=<proxy>/v1 sends
UPSTREAM_PATH = COMPAT + "/chat/completions"  # what reaches the gateway: bare mitmdump is sent this
MODEL = "openai/gpt-4o-mini"
SMALL_BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hello"}]}).encode()
STREAM_BODY = SMALL_BODY[:-1] + b', "stream": true}'
FIRST_EVENTS = 10  # the upstream's default stream, used by the first-event probe: 10 events 20 ms apart
# Bare mitmdump buffers whole answers; this one-hook addon streams SSE answers, as cf-gateway does.
STREAM_ADDON = """def responseheaders(flow):
    if flow.response.headers.get("content-type", "").startswith("text/event-stream"):
        flow.response.stream = True
"""
LITELLM_SPEC = "litellm[proxy]==1.106.12"  # an exact pin: some litellm releases on PyPI were compromised
LITELLM_VENV = HERE / ".litellm-venv"
CLK_TCK = os.sysconf("SC_CLK_TCK")
DIRECT, BARE, BARE_STREAM = "direct (the upstream)", "bare mitmdump -q", "bare mitmdump -q, streaming"
NGINX, LITELLM = "nginx", "LiteLLM"
# What a broken connection or answer raises while reading (asyncio.IncompleteReadError is an EOFError).
IO_ERRORS = (OSError, EOFError, ValueError, IndexError, asyncio.LimitOverrunError)


@dataclass
class Plan:
    """How much each part does (QUICK: a smoke run, short enough for a test)."""

    rounds: int = 5
    small_seconds: float = 4.0
    small_clients: int = 16
    first_event_probes: int = 10
    agent_seconds: float = 6.0
    agent_clients: int = 8
    agent_body: int = 200_000
    agent_events: int = 300
    agent_delay_ms: float = 1.0
    streams: int = 200
    stream_events: int = 100  # 50 a second: each stream lasts 2 s
    stream_delay_ms: float = 20.0


QUICK = Plan(
    rounds=1, small_seconds=1.0, first_event_probes=3, agent_seconds=1.0, streams=50, stream_events=25
)


@dataclass
class Target:
    """Something to send requests to: its port, the path it expects, the processes whose CPU it costs."""

    label: str
    port: int
    path: str
    procs: list[subprocess.Popen]
    headers: dict[str, str] = field(default_factory=lambda: {"Authorization": "Bearer sk-bench"})
    log: Path | None = None

    def request(self, body: bytes, **headers: str) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [
            f"{k}: {v}" for k, v in {"Content-Type": "application/json", **self.headers, **headers}.items()
        ]
        return ("\r\n".join([*lines, f"Content-Length: {len(body)}"]) + "\r\n\r\n").encode() + body

    def log_tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log and self.log.exists() else ""
        return " | ".join(text.strip().splitlines()[-3:])[-400:] or "no output"


class Skipped(Exception):
    """A target that cannot run here (not installed, did not start): the report says why."""


# ---------------------------------------------------------------------------------------------
# processes


def die_with_parent() -> None:
    """Children get SIGTERM if the benchmark dies, even by SIGKILL (Linux PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)
    except OSError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without the addon's settings (ACCOUNT_ID, CF_*...): only --set configures it."""
    names = ("ACCOUNT_ID", "GATEWAY_ID", "PROXY_KEYS", "HOST_PORT", "HOST_ADDR")
    return {**{k: v for k, v in os.environ.items() if not (k in names or k.startswith("CF_"))}, **extra}


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process's session (nginx and LiteLLM have workers), SIGKILL after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(10)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


class Procs:
    """The processes of a run, each in its own directory (no stray .env) and session; all stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            stop(proc)

    def dir(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name.split()[0] + "-", dir=self.workdir))

    def spawn(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen, Path]:
        log = self.dir(name) / "output.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=log.parent, env=env or clean_env(), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
            )  # fmt: skip
        self.procs.append(proc)
        return proc, log

    def upstream(self) -> Target:
        port = free_port()
        cmd = [sys.executable, str(HERE / "fastupstream.py"), "--port", str(port)]
        proc, log = self.spawn("upstream", [*cmd, "--events", str(FIRST_EVENTS), "--delay-ms", "20"])
        return Target(DIRECT, port, UPSTREAM_PATH, [proc], log=log)

    def mitmdump(self, label: str, args: list[str], reverse_to: str, path: str) -> Target:
        """mitmdump in reverse mode with lazy upstream connections, as ./run.sh runs it; its own confdir."""
        port = free_port()
        cmd = [MITMDUMP, "--mode", f"reverse:{reverse_to}@127.0.0.1:{port}"]
        cmd += ["--set", "connection_strategy=lazy", "--set", f"confdir={self.dir('conf')}"]
        proc, log = self.spawn(label, [*cmd, *args])
        return Target(label, port, path, [proc], log=log)

    def bare(self, up: Target, streaming: bool) -> Target:
        """Bare mitmdump -q forwarding as is; streaming: with a one-hook addon streaming every answer."""
        args = ["-q"]
        if streaming:
            script = self.dir("addon") / "stream_responses.py"
            script.write_text(STREAM_ADDON)
            args += ["-s", str(script)]
        url = f"http://127.0.0.1:{up.port}"
        return self.mitmdump(BARE_STREAM if streaming else BARE, args, url, UPSTREAM_PATH)

    def gateway(self, label: str, tree: Path, up: Target) -> Target:
        """cf-gateway as ./run.sh starts it: reverse target port 0 (an unrewritten flow fails), one line
        per request (flow_detail=0), and only the three options every version of the addon has."""
        args = ["-s", str(tree / "addons" / "cf_gateway.py"), "--set", "flow_detail=0"]
        args += ["--set", f"cf_account_id={ACCOUNT}", "--set", f"cf_gateway_id={GATEWAY}"]
        args += ["--set", f"cf_base_url=http://127.0.0.1:{up.port}"]
        return self.mitmdump(label, args, "http://127.0.0.1:0", SDK_PATH)

    def nginx(self, up: Target) -> Target:
        """nginx doing the addon's rewrite: one worker (like one mitmdump), keep-alive upstream, logs."""
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if binary is None:
            raise Skipped("nginx is not installed (as root: apt-get install nginx-light)")
        port, d = free_port(), self.dir("nginx")
        os.chmod(d, 0o755)  # started as root, the worker runs as nobody
        conf = d / "nginx.conf"
        conf.write_text(f"""worker_processes 1;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    keepalive_requests 100000;
    upstream backend {{ server 127.0.0.1:{up.port}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        proxy_request_buffering off;
        location /v1/ {{ proxy_pass http://backend{COMPAT}/; }}
    }}
}}
""")
        cmd = [binary, "-p", str(d), "-e", "stderr", "-c", str(conf), "-g", "daemon off;"]
        proc, log = self.spawn("nginx", cmd)
        return Target(NGINX, port, SDK_PATH, [proc], log=log)

    def litellm(self, up: Target) -> Target:
        """LiteLLM's proxy, one worker, routing the model to the upstream's compat URL; no database."""
        cli = install_litellm()
        port, key = (
            free_port(),
            "sk-bench-" + secrets.token_hex(8),
        )  # it refuses to start without a master key
        config = self.dir("litellm") / "config.yaml"
        config.write_text(
            f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
            f"      api_base: http://127.0.0.1:{up.port}{COMPAT}\n      api_key: sk-upstream\n"
            "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
            f"general_settings:\n  master_key: {key}\n  disable_spend_logs: true\n"
        )
        env = clean_env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False", LITELLM_LOG="ERROR")
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DATABASE_URL", "LITELLM_MASTER_KEY"):
            env.pop(name, None)
        cmd = [str(cli), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--num_workers", "1"]
        proc, log = self.spawn("litellm", cmd, env)
        return Target(LITELLM, port, SDK_PATH, [proc], {"Authorization": f"Bearer {key}"}, log)


def install_litellm() -> Path:
    """litellm[proxy] in its own venv (its large dependency tree stays out of the project's), wheels only."""
    cli, stamp = LITELLM_VENV / "bin" / "litellm", LITELLM_VENV / ".bench-spec"
    if cli.exists() and stamp.exists() and stamp.read_text().strip() == LITELLM_SPEC:
        return cli
    LITELLM_VENV.mkdir(exist_ok=True)
    log = LITELLM_VENV / "install.log"
    print(f"bench: installing {LITELLM_SPEC} into {LITELLM_VENV} (minutes; log {log})", file=sys.stderr)
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    with open(log, "wb") as out:
        for cmd in (
            [sys.executable, "-m", "venv", str(LITELLM_VENV)],
            [*pip, "--only-binary=:all:", LITELLM_SPEC],
        ):
            try:
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=900).returncode
            except subprocess.TimeoutExpired:
                rc = "a timeout"
            if rc != 0:
                raise Skipped(f"could not install {LITELLM_SPEC} (exit {rc}; see {log})")
    stamp.write_text(LITELLM_SPEC + "\n")
    return cli


def start_all(starters: list[tuple[str, Callable[[], Target]]]) -> tuple[list[Target], list[str]]:
    """Start every target at once, then keep those that listen and answer a first request.

    A target that is absent, dies or answers an error is left out, and the report says why.
    """
    targets, notes = [], []
    for label, start in starters:
        try:
            targets.append(start())
        except Skipped as e:
            notes.append(f"{label}: skipped: {e}")
    ready = []
    for t in targets:
        deadline = time.monotonic() + (180 if t.label == LITELLM else 60)  # LiteLLM imports a lot
        while not listening(t.port) and t.procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if listening(t.port) and asyncio.run(load(t, 1, 0.0, max_requests=1))["ok"] == 1:
            ready.append(t)
            continue
        notes.append(f"{t.label}: skipped: it did not answer a first request ({t.log_tail()})")
        for proc in t.procs:
            stop(proc)
    for note in notes:
        print(f"bench: {note}", file=sys.stderr)
    return ready, notes


# ---------------------------------------------------------------------------------------------
# /proc


def pids_of(t: Target) -> set[int]:
    """The target's processes and all their descendants (nginx's and LiteLLM's workers)."""
    out, todo = set(), [p.pid for p in t.procs]
    while todo:
        pid = todo.pop()
        out.add(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(t: Target) -> float:
    """User + system CPU time of the target's processes so far (in ticks of 1/CLK_TCK s)."""
    ticks = 0
    for pid in pids_of(t):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / CLK_TCK


def memory_kib(t: Target, key: str) -> int:
    """VmRSS or VmHWM (the peak RSS) of the target's processes, summed, in KiB."""
    total = 0
    for pid in pids_of(t):
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith(key + ":")), 0)
        except OSError:
            pass
    return total


def reset_peak(t: Target) -> None:
    """Start VmHWM afresh from the current RSS (Linux: write 5 to /proc/<pid>/clear_refs)."""
    for pid in pids_of(t):
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# load: asyncio raw sockets (far cheaper per request than an HTTP client library)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, float]:
    """One HTTP/1.1 response: its status, its de-chunked body, and when the body's first bytes came."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head.split(b" ", 2)[1])
    if b"\r\ntransfer-encoding: chunked" in head:
        parts: list[bytes] = []
        first = 0.0
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
            first = first or time.perf_counter()
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return status, b"".join(parts), first or time.perf_counter()
    if b"\r\ncontent-length:" in head:
        body = await reader.readexactly(int(head.split(b"\r\ncontent-length:")[1].split(b"\r\n")[0]))
    else:
        body = await reader.read()
    return status, body, time.perf_counter()


def pace(events: int, delay_ms: float) -> dict[str, str]:
    """The headers that tell the upstream how many events to stream, how far apart."""
    return {"x-bench-events": str(events), "x-bench-delay-ms": str(delay_ms)}


def complete(body: bytes, events: int | None) -> bool:
    """Whether a streamed answer has all its ``data:`` lines: ``events`` content events + stop, usage
    and [DONE]. None: a peer that re-encodes the stream (LiteLLM), which only has to end properly."""
    if events is None:
        return body.rstrip().endswith(b"data: [DONE]")
    return body.count(b"data: ") == events + 3 and body.endswith(b"data: [DONE]\n\n")


async def load(
    t: Target, clients: int, seconds: float, request: bytes | None = None, events: int | None = None,
    max_requests: int = 200_000,
) -> dict:  # fmt: skip
    """``clients`` keep-alive clients send ``request`` for ``seconds`` (at most max_requests in all):
    answers per second, the target's CPU per answer, the median latency, failures. With ``events``,
    an answer counts only as a complete stream of that many events."""
    request = request or t.request(SMALL_BODY)
    latencies: list[float] = []
    failed = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal failed
        conn = None
        while len(latencies) + failed < max_requests and (time.perf_counter() < deadline or not latencies):
            try:
                conn = conn or await asyncio.open_connection("127.0.0.1", t.port)
                t0 = time.perf_counter()
                conn[1].write(request)
                status, body, _ = await asyncio.wait_for(read_response(conn[0]), 60)
                if status == 200 and (events is None or complete(body, events)):
                    latencies.append(time.perf_counter() - t0)
                    continue
                failed += 1
            except (*IO_ERRORS, TimeoutError):
                failed += 1
                if conn:
                    conn[1].close()
                conn = None
            if failed >= 20 and not latencies:
                break
        if conn:
            conn[1].close()

    cpu0, t0 = cpu_seconds(t), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed, cpu, ok = time.perf_counter() - t0, cpu_seconds(t) - cpu0, len(latencies)
    return {
        "ok": ok,
        "failed": failed,
        "rps": ok / elapsed,
        "cpu_us": cpu / ok * 1e6 if ok else None,
        "cpu_ms": cpu / ok * 1e3 if ok else None,
        "p50_ms": statistics.median(latencies) * 1e3 if ok else None,
    }


async def first_event(t: Target, probes: int) -> dict:
    """Milliseconds from sending a streaming request to its first event, one request at a time on one
    keep-alive connection (as an SDK sends them); the first request, which connects, is not counted."""
    request, times, failed = t.request(STREAM_BODY), [], 0
    events, writer = None if t.label == LITELLM else FIRST_EVENTS, None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", t.port)
        for i in range(probes + 1):
            t0 = time.perf_counter()
            writer.write(request)
            status, body, first = await asyncio.wait_for(read_response(reader), 30)
            if status != 200 or not complete(body, events):
                failed += 1
            elif i:
                times.append((first - t0) * 1e3)
    except (*IO_ERRORS, TimeoutError):
        failed += 1
    finally:
        if writer:
            writer.close()
    return {"first_ms": statistics.median(times) if times else None, "failed": failed}


async def streams(t: Target, n: int, events: int, delay_ms: float) -> dict:
    """n token streams, started over half a stream's length (so that all n are open together for
    the other half), each read to its end: the target's CPU per event, events lost, how long the
    streams took, and its RSS before and at the peak."""
    request = t.request(STREAM_BODY, **pace(events, delay_ms))
    seconds = events * delay_ms / 1000
    durations: list[float] = []
    state = {"open": 0, "most": 0, "got": 0, "failed": 0}

    async def one(i: int) -> None:
        await asyncio.sleep(i * seconds / 2 / n)
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", t.port)
            state["open"] += 1
            state["most"] = max(state["most"], state["open"])
            t0 = time.perf_counter()
            writer.write(request)
            status, body, _ = await asyncio.wait_for(read_response(reader), seconds + 60)
            durations.append(time.perf_counter() - t0)
            state["got"] += body.count(b"data: ")
            state["failed"] += not (status == 200 and complete(body, events))
        except (*IO_ERRORS, TimeoutError):
            state["failed"] += 1
        finally:
            if writer:
                state["open"] -= 1
                writer.close()

    reset_peak(t)
    rss, cpu = memory_kib(t, "VmRSS"), cpu_seconds(t)
    await asyncio.gather(*(one(i) for i in range(n)))
    cpu, got = cpu_seconds(t) - cpu, state["got"]
    return {
        "cpu_us_event": cpu / got * 1e6 if got else None,
        "lost": n * (events + 3) - got,
        "failed": state["failed"],
        "open": state["most"],
        "p50_s": statistics.median(durations) if durations else None,
        "max_s": max(durations, default=None),
        "rss_mib": rss / 1024,
        "peak_mib": memory_kib(t, "VmHWM") / 1024,
    }


# ---------------------------------------------------------------------------------------------
# the three parts: measure(target, plan) -> one round's figures


def measure_small(t: Target, plan: Plan) -> dict:
    asyncio.run(load(t, plan.small_clients, min(1.0, plan.small_seconds / 4)))  # warm-up
    r = asyncio.run(load(t, plan.small_clients, plan.small_seconds))
    s = asyncio.run(first_event(t, plan.first_event_probes))
    return {**r, "first_ms": s["first_ms"], "failed": r["failed"] + s["failed"]}


def measure_agent(t: Target, plan: Plan) -> dict:
    body = agentbody.chat_request(plan.agent_body)
    request = t.request(body, **pace(plan.agent_events, plan.agent_delay_ms))
    asyncio.run(load(t, plan.agent_clients, 0.5, request, plan.agent_events))  # warm-up
    return asyncio.run(load(t, plan.agent_clients, plan.agent_seconds, request, plan.agent_events))


def measure_streams(t: Target, plan: Plan) -> dict:
    return asyncio.run(streams(t, plan.streams, plan.stream_events, plan.stream_delay_ms))


PARTS = {
    "small": (measure_small, None),  # None: every target
    "agent": (measure_agent, BARE_STREAM),  # the reference and the gateways
    "streams": (measure_streams, BARE_STREAM),
}
TITLES = {
    "small": "Small requests ({p.small_clients} keep-alive clients, {p.small_seconds:g} s per round)\n\n"
    "JSON POSTs answered by a ~300-byte chat.completion. First event: over one keep-alive connection, "
    "{p.first_event_probes} streams of 10 events 20 ms apart per round.",
    "agent": "Agent-sized requests ({p.agent_body:,} byte bodies, {p.agent_events} events "
    "{p.agent_delay_ms:g} ms apart, {p.agent_clients} clients, {p.agent_seconds:g} s per round)",
    "streams": "{p.streams} concurrent token streams ({p.stream_events} events each, "
    "{p.stream_delay_ms:g} ms apart)",
}
COLUMNS = {  # (key, heading, digits, the target it is divided by in a ratio column)
    "small": [
        ("rps", "req/s", 0, BARE),
        ("cpu_us", "CPU µs/req", 0, BARE),
        ("p50_ms", "p50 ms", 2, None),
        ("first_ms", "first event ms", 2, BARE_STREAM),
        ("failed", "failed", 0, None),
    ],
    "agent": [
        ("rps", "req/s", 1, None),
        ("cpu_ms", "CPU ms/req", 2, BARE_STREAM),
        ("p50_ms", "p50 ms", 0, None),
        ("failed", "failed", 0, None),
    ],
    "streams": [
        ("cpu_us_event", "CPU µs/event", 1, BARE_STREAM),
        ("lost", "events lost", 0, None),
        ("open", "open at once", 0, None),
        ("p50_s", "stream s p50", 2, None),
        ("max_s", "slowest s", 2, None),
        ("rss_mib", "RSS before MiB", 0, None),
        ("peak_mib", "peak RSS MiB", 0, BARE_STREAM),
    ],
}
SUMMARY = [  # (part, what, key, digits)
    ("small", "small requests: req/s", "rps", 0),
    ("small", "small requests: CPU µs per request", "cpu_us", 0),
    ("agent", "agent requests: CPU ms per request", "cpu_ms", 2),
    ("streams", "{p.streams} streams: CPU µs per event", "cpu_us_event", 1),
    ("streams", "{p.streams} streams: events lost", "lost", 0),
    ("streams", "{p.streams} streams: peak RSS MiB", "peak_mib", 0),
    ("small", "time to first event, ms", "first_ms", 2),
]


def run_part(targets: list[Target], plan: Plan, part: str, gateways: list[str]) -> dict[str, list[dict]]:
    """Every target once per round, rounds interleaved: {label: [one dict of figures per round]}."""
    measure, reference = PARTS[part]
    members = [t for t in targets if reference is None or t.label in (reference, *gateways)]
    out: dict[str, list[dict]] = {t.label: [] for t in members}
    for n in range(plan.rounds):
        for t in members[n % len(members) :] + members[: n % len(members)]:
            out[t.label].append(measure(t, plan))
            shown = ", ".join(f"{k} {v:,.1f}" for k, v in out[t.label][-1].items() if isinstance(v, float))
            print(f"  {part} round {n + 1}/{plan.rounds}  {t.label:28} {shown}", file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# report


def spread(values: list, digits: int) -> str:
    """The median and, when the rounds differ, their range: '742 (731–760)'."""
    text = [f"{v:,.{digits}f}" for v in sorted(v for v in values if v is not None)]
    if not text:
        return "—"
    median = f"{statistics.median(v for v in values if v is not None):,.{digits}f}"
    return median if text[0] == text[-1] else f"{median} ({text[0]}–{text[-1]})"


def ratios(runs: list[dict], ref: list[dict], key: str) -> list[float]:
    """The target's figure ÷ the reference's, round by round."""
    return [r[key] / b[key] for r, b in zip(runs, ref, strict=True) if r[key] is not None and b[key]]


def markdown(head: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, so the table reads as well in a terminal as rendered."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in [head, *rows]
    ]
    return "\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]])


def table(results: dict[str, list[dict]], part: str) -> str:
    """One row per target; a column with a reference is followed by the ratio to it."""
    head, rows = ["target"], []
    for _, heading, _, ref in COLUMNS[part]:
        head += [heading, f"÷ {ref}"] if ref else [heading]
    for label, runs in results.items():
        row = [label]
        for key, _, digits, ref in COLUMNS[part]:
            row.append(spread([r[key] for r in runs], digits))
            if ref:
                row.append(
                    spread(ratios(runs, results[ref], key), 2) if ref in results and label != ref else ""
                )
        rows.append(row)
    return markdown(head, rows)


def summary(parts: dict[str, dict], gateways: list[str], plan: Plan) -> str:
    """Each comparison: cf-gateway against its bare mitmdump reference (and against the baseline)."""
    head = ["comparison", "reference", *gateways, *(f"{g} ÷ reference" for g in gateways)]
    head += [f"{gateways[0]} ÷ {gateways[1]}"] if len(gateways) == 2 else []
    rows = []
    for part, what, key, digits in SUMMARY:
        res = parts.get(part, {})
        ref = BARE if key in ("rps", "cpu_us") else BARE_STREAM
        if ref not in res or any(g not in res for g in gateways):
            continue
        row = [what.format(p=plan), f"{ref}: {spread([r[key] for r in res[ref]], digits)}"]
        row += [spread([r[key] for r in res[g]], digits) for g in gateways]
        pairs = [(g, ref) for g in gateways] + ([tuple(gateways)] if len(gateways) == 2 else [])
        row += ["" if key == "lost" else spread(ratios(res[a], res[b], key), 2) for a, b in pairs]
        rows.append(row)
    return markdown(head, rows)


def describe(tree: Path) -> str:
    """A checkout as 'path @ commit', marked when its addons/ has uncommitted changes."""
    git = ["git", "-C", str(tree)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "addons"], capture_output=True, text=True).stdout
    return f"{tree} @ {commit or '?'}" + (" + uncommitted changes in addons/" if dirty.strip() else "")


def machine() -> str:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"- {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; {os.cpu_count()} CPUs ({cpu}); "
        f"{platform.system()} {platform.release()}; load average at start {load}\n"
        f"- Python {platform.python_version()}, mitmproxy {mitmproxy_version.VERSION}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short smoke run: 1 round, short runs, no LiteLLM")
    ap.add_argument("--rounds", type=int, help="rounds per part (default 5; 1 with --quick)")
    ap.add_argument(
        "--baseline", type=Path, metavar="DIR", help="another checkout of cf-gateway, measured side by side"
    )
    ap.add_argument(
        "--tree", type=Path, default=ROOT, metavar="DIR", help="the checkout to measure (default: this one)"
    )
    ap.add_argument("--only", default="small,agent,streams", help="which parts, comma-separated")
    ap.add_argument("--no-nginx", action="store_true", help="leave nginx out")
    ap.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out (and never install it)")
    args = ap.parse_args()
    plan = QUICK if args.quick else Plan()
    plan.rounds = args.rounds or plan.rounds
    trees = [("cf-gateway", args.tree.resolve())]
    trees += [("cf-gateway baseline", args.baseline.resolve())] if args.baseline else []
    for _, tree in trees:
        if not (tree / "addons" / "cf_gateway.py").exists():
            ap.error(f"{tree} has no addons/cf_gateway.py")
    if any(part not in PARTS for part in args.only.split(",")):
        ap.error(f"--only takes {','.join(PARTS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally blocks stop everything
    gateways, started = [label for label, _ in trees], time.monotonic()
    print(f"# cf-gateway benchmark{' (--quick)' if args.quick else ''}\n\n{machine()}")
    for label, tree in trees:
        print(f"- {label}: {describe(tree)}")
    print(
        f"- {plan.rounds} round(s), targets interleaved; each cell: the median over rounds (min–max); "
        "ratios are taken within each round; upstream, load generator and proxies share the CPUs"
    )
    parts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cfgw-bench-") as tmp, Procs(Path(tmp)) as p:
        up = p.upstream()
        starters = [
            (DIRECT, lambda: up),
            (BARE, lambda: p.bare(up, False)),
            (BARE_STREAM, lambda: p.bare(up, True)),
        ]
        starters += [
            (label, lambda tree=tree, label=label: p.gateway(label, tree, up)) for label, tree in trees
        ]
        notes = [f"{NGINX}: left out (--no-nginx)"] if args.no_nginx else []
        starters += [] if args.no_nginx else [(NGINX, lambda: p.nginx(up))]
        if args.quick or args.no_litellm:
            notes.append(f"{LITELLM}: left out ({'--quick' if args.quick else '--no-litellm'})")
        else:
            starters.append((LITELLM, lambda: p.litellm(up)))
        targets, more = start_all(starters)
        notes += more
        for part in args.only.split(","):
            parts[part] = run_part(targets, plan, part, gateways)
            print(f"\n## {TITLES[part].format(p=plan)}\n\n{table(parts[part], part)}", flush=True)
    print(f"\n## Summary: cf-gateway against bare mitmdump\n\n{summary(parts, gateways, plan)}\n")
    for note in notes:
        print(f"- {note}")
    print(f"- the run took {time.monotonic() - started:.0f} s")
    missing = [g for g in gateways if not any(g in res for res in parts.values())]
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
