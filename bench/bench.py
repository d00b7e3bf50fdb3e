#!/usr/bin/env python3
"""cf-gateway benchmarks: one script, one run, everything side by side (see bench/README.md).

    ./run.sh bench [--quick] [--only core,agent,memory,stream,rss,peers,scale,soak] [--rounds N]
                   [--seconds S] ...

Parts: core (small JSON POSTs: latency at c=1, throughput at c=16, keep-alive and
a new connection per request; direct, bare mitmdump -q as the baseline, cf-gateway
variants), agent (agent-sized request bodies with streamed answers: proxy CPU per
request against bare streaming mitmdump), memory (peak RSS of 200 concurrent streams
with 1 MB request bodies), stream (SSE time to first/last event), rss (peak RSS
relaying one big SSE stream), peers (nginx and LiteLLM doing the same job), scale
(one proxy vs two behind nginx), soak (RSS over 20,000 requests). Everything listens
on 127.0.0.1; every run is bounded in requests and time; everything started is
stopped at the end, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "addons")]

import agentbody  # noqa: E402
import fastupstream  # noqa: E402
import litellm_peer  # noqa: E402
import loadgen  # noqa: E402
import nginx as nginx_peer  # noqa: E402

from cfgw import config as cf_config  # noqa: E402
from tests.harness import (  # noqa: E402
    ACCOUNT_ID,
    GATEWAY_ID,
    MITMDUMP,
    UNSERVABLE,
    Proxy,
    free_port,
    start_proxy,
    wait_for_port,
)

PARTS = ("core", "agent", "memory", "stream", "rss", "peers", "scale", "soak")
MODES = ("keepalive", "newconn")
COMPAT = f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}/compat"
CLIENT_PATH = "/v1/chat/completions"  # what an OpenAI SDK with base_url=<proxy>/v1 sends
UPSTREAM_PATH = f"{COMPAT}/chat/completions"  # what reaches the gateway (direct and bare mitmdump send it)
CHAT_BODY = json.dumps(
    {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]},
    separators=(",", ":"),
).encode()
STREAM_BODY = json.dumps(
    {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}], "stream": True},
    separators=(",", ":"),
).encode()
GOAL_DEFAULTS = 0.93  # ./run.sh defaults, throughput ÷ bare mitmdump -q (issue 13)
GOAL_LOG_OFF = 0.97  # cf_log_requests=off and -q, throughput ÷ bare mitmdump -q
GOAL_ADDED_P50_MS = 0.2  # ./run.sh defaults, p50 at c=1 minus bare mitmdump -q's
GOAL_METRICS_COST = 0.05
GOAL_AGENT_CPU = 1.05  # agent-sized requests: proxy CPU per request ÷ bare streaming mitmdump
GOAL_AGENT_GROWTH_US = 5.0  # the addon's added CPU per request may grow this much per 100 KB of body
CLK_TCK = os.sysconf("SC_CLK_TCK")
# What ./run.sh adds for mitmdump besides the reverse target and connection_strategy=lazy (which
# tests.harness.start_proxy gives every proxy): one summary line per request, no mitmproxy dump.
RUNSH_DEFAULTS = ("--set", "flow_detail=0")
QUIET = ("-q",)  # no output at all: mitmproxy's own flow dump off and only errors logged
STREAM_ALL = ("--set", "stream_large_bodies=1")  # bare mitmdump streaming every body: the relay's floor
STREAM_RESPONSES = ("-s", str(HERE / "stream_responses.py"))  # requests buffered, as cf-gateway needs

CORE_BASE = "bare mitmdump -q (no output: the baseline)"
CORE_DUMP = "bare mitmdump, default console (flow_detail=1)"
CORE_FLOOR = "mitmproxy's floor: -q, a script with the same 5 hooks doing nothing"
CORE_FLOOR_LINE = "mitmproxy's floor with one line per request (flow_detail=0)"
FLOOR_ADDON = str(HERE / "floor_addon.py")
CORE_JOBS = "the jobs alone: -q, a script doing cf-gateway's per-request work, no checks"
CORE_JOBS_LINE = "the jobs alone with one line per request (flow_detail=0)"
JOBS_ADDON = str(HERE / "jobs_addon.py")
CORE_DEFAULTS = "cf-gateway, ./run.sh defaults (line on, metrics on)"
CORE_LOG_OFF = "cf-gateway, cf_log_requests=off, -q"
CORE_METRICS_OFF = "cf-gateway, ./run.sh defaults, cf_metrics=off"
CORE_BOTH_OFF = "cf-gateway, cf_log_requests=off, cf_metrics=off, -q"
AGENT_BASE = "bare mitmdump -q, stream_large_bodies=1 (the baseline)"
AGENT_REF = "bare mitmdump -q, streams responses only (requests buffered)"
AGENT_GW = "cf-gateway, ./run.sh defaults"
AGENT_JOBS = "the jobs alone: -q, a script doing cf-gateway's per-request work, no checks"


# ---------------------------------------------------------------------------------------------
# processes


def _die_with_parent() -> None:
    """Child processes get SIGTERM if the benchmark itself dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Service:
    """A process we started, and how to stop it."""

    name: str
    pid: int
    stop: Callable[[], object]


class Services:
    """Everything the benchmark started; stopped in reverse order, whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Service] = []
        self.started = 0

    def dir(self, name: str) -> Path:
        """A fresh directory for one process's config and output."""
        self.started += 1
        d = self.workdir / f"{self.started:02d}-{name}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def add(self, name: str, pid: int, stop: Callable[[], object]) -> None:
        self.running.append(Service(name, pid, stop))

    def stop(self, pid: int) -> None:
        for s in list(self.running):
            if s.pid == pid:
                self.running.remove(s)
                _quietly(s.stop)

    def stop_all(self) -> None:
        while self.running:
            _quietly(self.running.pop().stop)

    @staticmethod
    def reap_children() -> None:
        """Last resort on the way out: our own child processes still alive (e.g. a proxy that was
        interrupted while starting, before we knew its pid) get SIGTERM, then SIGKILL."""
        pids = descendants(os.getpid())
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = []
            for pid in pids:
                try:
                    os.kill(pid, sig)
                    alive.append(pid)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while alive and time.monotonic() < deadline:
                for pid in list(alive):
                    try:
                        if os.waitpid(pid, os.WNOHANG)[0] == pid:
                            alive.remove(pid)
                    except ChildProcessError:  # not our direct child: gone when /proc says so
                        if not os.path.exists(f"/proc/{pid}"):
                            alive.remove(pid)
                time.sleep(0.05)
            pids = alive
            if not pids:
                return

    # -- starters --

    def python_server(self, name: str, args: list[str], port: int) -> subprocess.Popen:
        d = self.dir(name)
        with open(d / "output.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=d,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.add(name, proc.pid, lambda: _terminate(proc))
        if not wait_for_port(port, proc, timeout=20):
            raise RuntimeError(
                f"{name} did not start: {(d / 'output.log').read_text(errors='replace')[-500:]}"
            )
        return proc

    def fast_upstream(self, stream_events: int = 20, stream_delay_ms: float = 10) -> Endpoint:
        port = free_port()
        args = [str(HERE / "fastupstream.py"), "--port", str(port)]
        args += ["--stream-events", str(stream_events), "--stream-delay-ms", str(stream_delay_ms)]
        proc = self.python_server("fast-upstream", args, port)
        return Endpoint("direct (fast upstream)", port, UPSTREAM_PATH, [proc.pid])

    def standin(self) -> Endpoint:
        port = free_port()
        proc = self.python_server(
            "standin", [str(ROOT / "tests" / "standin_gateway.py"), "--port", str(port), "--quiet"], port
        )
        return Endpoint("direct (stand-in)", port, UPSTREAM_PATH, [proc.pid])

    def proxy(
        self,
        label: str,
        upstream: Endpoint,
        options: dict[str, str] | None = None,
        args: tuple[str, ...] = RUNSH_DEFAULTS,
    ) -> Endpoint:
        """mitmdump + cf-gateway as ./run.sh starts it: reverse target port 0 (a flow the addon does
        not rewrite gets a 502), cf_base_url=<upstream>, connection_strategy=lazy, and ``args``
        (run.sh's flow_detail=0 unless told otherwise); its output goes to a file."""
        p = start_proxy(
            f"http://127.0.0.1:{upstream.port}",  # becomes --set cf_base_url=...
            options=options,
            workdir=self.dir("cfgw"),
            extra_args=list(args),
            reverse_target=UNSERVABLE,
        )
        self.add(label, p.proc.pid, p.stop)
        return self.checked(Endpoint(label, p.port, CLIENT_PATH, [p.proc.pid], proxy=p))

    def bare_mitmdump(
        self, label: str, upstream: Endpoint, args: tuple[str, ...] = QUIET, env: dict[str, str] | None = None
    ) -> Endpoint:
        """mitmdump in reverse mode (reverse:<upstream>) without the addon: forwards as is, buffers
        whole bodies unless ``args`` say otherwise; -q (no output at all) unless told otherwise."""
        url = f"http://127.0.0.1:{upstream.port}"
        p = start_proxy(
            url, addon=False, workdir=self.dir("bare"), extra_args=list(args), reverse_target=url, env=env
        )
        self.add(label, p.proc.pid, p.stop)
        return self.checked(Endpoint(label, p.port, UPSTREAM_PATH, [p.proc.pid], proxy=p))

    def jobs_reference(
        self, label: str, upstream: Endpoint, args: tuple[str, ...] = QUIET, env: dict[str, str] | None = None
    ) -> Endpoint:
        """mitmdump with bench/jobs_addon.py, aimed as cf-gateway is (reverse target port 0, lazy
        connections): the script re-aims each flow at ``upstream`` and rewrites the client's path."""
        p = start_proxy(
            f"http://127.0.0.1:{upstream.port}",
            addon=False,
            workdir=self.dir("jobs"),
            extra_args=[*args, "-s", JOBS_ADDON],
            reverse_target=UNSERVABLE,
            env={"JOBS_UPSTREAM_PORT": str(upstream.port), "JOBS_PREFIX": COMPAT, **(env or {})},
        )
        self.add(label, p.proc.pid, p.stop)
        return self.checked(Endpoint(label, p.port, CLIENT_PATH, [p.proc.pid], proxy=p))

    @staticmethod
    def checked(ep: Endpoint) -> Endpoint:
        """One real request first: a proxy that died at startup (a script error, a bad option) or
        answers errors is reported, not benchmarked."""
        r = loadgen.load(ep.port, ep.request(), 1, 1, True, request_timeout=30, time_limit=30)
        if r.ok != 1:
            tail = " | ".join(ep.proxy.output().strip().splitlines()[-3:])[-400:] if ep.proxy else ""
            raise RuntimeError(f"{ep.label} answered {dict(r.statuses) or dict(r.errors)}: {tail}")
        return ep

    def nginx(self, label: str, conf_for: Callable[[Path, int], Path], path: str) -> Endpoint:
        binary = nginx_peer.find_nginx()
        if not binary:
            raise RuntimeError("nginx is not installed")
        port = free_port()
        conf = conf_for(self.dir("nginx"), port)
        n = nginx_peer.start(binary, conf, port, wait_for_port)
        self.add(label, n.proc.pid, n.stop)
        return Endpoint(label, port, path, [n.proc.pid])


def _terminate(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _quietly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception as e:
        print(f"bench: while stopping: {e}", file=sys.stderr)


@dataclass
class Endpoint:
    """Something to send requests to: its port, the path it expects, the pids whose CPU it costs."""

    label: str
    port: int
    path: str
    pids: list[int]
    proxy: Proxy | None = None
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (auth)

    def request(self, body: bytes = CHAT_BODY, close: bool = False, headers: dict | None = None) -> bytes:
        return loadgen.build_request(
            self.path, self.port, body, headers={**self.headers, **(headers or {})}, close=close
        )


# ---------------------------------------------------------------------------------------------
# /proc readings


def proc_status(pid: int, key: str) -> int | None:
    """A /proc/<pid>/status field in KiB (VmRSS, VmHWM)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                for child in f.read().split():
                    out += [int(child), *descendants(int(child))]
    except OSError:
        pass
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their children (nginx workers, uvicorn)."""
    total = 0
    for pid in {p for root in pids for p in (root, *descendants(root))}:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ---------------------------------------------------------------------------------------------
# measurement


@dataclass
class Plan:
    rounds: int
    n_c16: int
    n_c1: int
    warmup: int
    soak: int
    stream_events: int
    stream_delay_ms: int
    stream_repeats: int
    big_stream_mb: int
    time_limit: float = 60.0
    seconds: float | None = None  # every measured load run lasts this long instead of a request count
    modes: tuple[str, ...] = MODES
    agent_sizes: tuple[int, ...] = (50_000, 200_000, 1_000_000)
    agent_requests: int = 300
    agent_concurrency: int = 8
    agent_events: int = 300
    agent_event_delay_ms: float = 1.0
    memory_streams: int = 200
    memory_body: int = 1_000_000
    memory_event_delay_ms: float = 10.0


def rotated(targets: list, rnd: int) -> list:
    """The targets in the order of round rnd: each one goes first once, so no fixed order bias."""
    return targets[rnd % len(targets) :] + targets[: rnd % len(targets)]


def point(
    ep: Endpoint,
    keepalive: bool,
    concurrency: int,
    total: int,
    plan: Plan,
    body: bytes = CHAT_BODY,
    request_timeout: float = 30.0,
) -> dict:
    """One measured run: loadgen summary + CPU the serving processes used per request.

    CPU is utime+stime from /proc/<pid>/stat, read before and after, in 1/CLK_TCK ticks
    (10 ms): the per-request figure is good to 10 ms / requests answered.
    """
    req = ep.request(body, close=not keepalive)
    total, limit = (1 << 30, plan.seconds) if plan.seconds else (total, plan.time_limit)
    cpu0 = cpu_seconds(ep.pids)
    r = loadgen.load(
        ep.port, req, total, concurrency, keepalive, time_limit=limit, request_timeout=request_timeout
    )
    cpu = cpu_seconds(ep.pids) - cpu0
    out = r.summary()
    out["cpu_us_per_req"] = round(cpu / r.ok * 1e6, 1) if r.ok else None
    return out


def warm_up(ep: Endpoint, keepalive: bool, concurrency: int, total: int, body: bytes = CHAT_BODY) -> None:
    """Requests that are not measured: connections, caches and lazy imports are ready afterwards."""
    if total:
        loadgen.load(
            ep.port, ep.request(body, close=not keepalive), total, concurrency, keepalive, time_limit=60
        )


def measure_rounds(targets: list[Endpoint], plan: Plan, tag: str = "") -> dict:
    """c=1 latency and c=16 throughput for every target, rounds interleaved; raw runs per key."""
    raw: dict[str, dict[str, dict[str, list[dict]]]] = {}
    for rnd in range(plan.rounds):
        order = rotated(targets, rnd)
        for mode in plan.modes:
            keepalive = mode == "keepalive"
            for ep in order:
                slot = raw.setdefault(ep.label, {}).setdefault(mode, {"c1": [], "c16": []})
                warm_up(ep, keepalive, 16, plan.warmup)
                slot["c1"].append(point(ep, keepalive, 1, plan.n_c1, plan))
                slot["c16"].append(point(ep, keepalive, 16, plan.n_c16, plan))
                c1, c16 = slot["c1"][-1], slot["c16"][-1]
                bad = c1["failed"] + c16["failed"]
                print(
                    f"  {tag}round {rnd + 1}/{plan.rounds} {mode:9} {ep.label:40} "
                    f"c1 p50 {_f(c1['p50_ms'], 2)} ms  c16 {_f(c16['rps'], 0)} req/s"
                    + (f"  ({bad} failed: {c16['errors'] or c16['statuses']})" if bad else ""),
                    flush=True,
                )
    return raw


def med(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(raw: dict) -> dict:
    """Median over rounds of every number the tables show."""
    out: dict = {}
    for label, modes in raw.items():
        for mode, slot in modes.items():
            out.setdefault(label, {})[mode] = {
                "c1_p50_ms": med(slot["c1"], "p50_ms"),
                "c1_p99_ms": med(slot["c1"], "p99_ms"),
                "c1_cpu_us": med(slot["c1"], "cpu_us_per_req"),
                "c16_rps": med(slot["c16"], "rps"),
                "c16_p50_ms": med(slot["c16"], "p50_ms"),
                "c16_p99_ms": med(slot["c16"], "p99_ms"),
                "c16_cpu_us": med(slot["c16"], "cpu_us_per_req"),
                "failed": sum(r["failed"] for k in ("c1", "c16") for r in slot[k]),
                "requests": sum(r["requests"] for k in ("c1", "c16") for r in slot[k]),
            }
    return out


def per_round(runs: list[dict], base: list[dict], key: str) -> list[float]:
    """runs[i][key] / base[i][key] for every round i where both have the number."""
    return [
        r[key] / b[key] for r, b in zip(runs, base, strict=False) if r.get(key) is not None and b.get(key)
    ]


def agent_goal_rows(raw: dict, sizes: tuple[int, ...]) -> list[list[str]]:
    """CPU per request of cf-gateway ÷ bare streaming mitmdump per body size, and how the addon's
    added CPU grows with the body (µs per 100 KB, slope between the smallest and largest body)."""
    rows = []
    gw, base, ref, jobs = raw[AGENT_GW], raw[AGENT_BASE], raw[AGENT_REF], raw[AGENT_JOBS]
    for n in sizes:
        r = per_round(gw[str(n)], base[str(n)], "cpu_us_per_req")
        m = _median(r)
        verdict = "met" if m is not None and m <= GOAL_AGENT_CPU else "missed"
        rows.append(
            [
                f"{AGENT_GW} ÷ baseline, {kb(n)}",
                f"<= {GOAL_AGENT_CPU}",
                _f(m, 3),
                _rounds(r),
                _spread(r),
                verdict,
            ]
        )
    for label, runs, other in (
        (f"reference: {AGENT_JOBS} ÷ baseline", jobs, base),
        (f"addon's own share: {AGENT_GW} ÷ requests-buffered reference", gw, ref),
    ):
        for n in sizes:
            r = per_round(runs[str(n)], other[str(n)], "cpu_us_per_req")
            rows.append([f"{label}, {kb(n)}", "", _f(_median(r), 3), _rounds(r), _spread(r), ""])
    if len(sizes) >= 2:
        lo, hi = str(sizes[0]), str(sizes[-1])
        per_100kb = (sizes[-1] - sizes[0]) / 100_000
        for what, other, goal in (
            ("added CPU vs baseline, per 100 KB of body", base, GOAL_AGENT_GROWTH_US),
            ("addon's own added CPU (vs requests-buffered reference), per 100 KB of body", ref, None),
        ):
            slopes = []
            for i in range(min(len(gw[lo]), len(gw[hi]), len(other[lo]), len(other[hi]))):
                cpus = [gw[hi][i], other[hi][i], gw[lo][i], other[lo][i]]
                if all(c.get("cpu_us_per_req") is not None for c in cpus):
                    a, b, c, d = (x["cpu_us_per_req"] for x in cpus)
                    slopes.append(((a - b) - (c - d)) / per_100kb)
            m = _median(slopes)
            rows.append(
                [
                    what,
                    "" if goal is None else f"<= {goal:g} µs",
                    _f(m, 1) + " µs" if m is not None else "—",
                    _rounds(slopes, digits=1),
                    _spread(slopes, digits=1),
                    "" if goal is None else ("met" if m is not None and m <= goal else "missed"),
                ]
            )
    return rows


MEMORY_HEADERS = [
    "proxy",
    "RSS before MiB",
    "peak RSS MiB",
    "peak growth MiB",
    "per stream KiB",
    "beyond requests-buffered reference MiB",
    "record bound (limit × streams) MiB",
    "verdict",
    "streams open at once (upstream)",
    "seconds",
    "failed",
]


def memory_rows(data: dict, streams: int, answer: int) -> list[list[str]]:
    """Peak RSS growth per case; cf-gateway's growth beyond the requests-buffered reference is held
    against what its bounded record may keep: cf_record_limit × streams."""

    def growth(d: dict) -> int | None:
        return (
            d["hwm_after_kib"] - d["rss_before_kib"] if d["hwm_after_kib"] and d["rss_before_kib"] else None
        )

    ref = growth(data[AGENT_REF]) if AGENT_REF in data else None
    rows = []
    for label, d in data.items():
        g = growth(d)
        limit = d["record_limit"]
        extra = g - ref if g is not None and ref is not None and limit is not None else None
        bound = limit * streams / 1024 if limit is not None else None
        verdict = ""
        if limit and extra is not None and bound is not None:
            verdict = "within" if extra <= bound else "over"
        load = d["load"]
        rows.append(
            [
                label,
                mib(d["rss_before_kib"]),
                mib(d["hwm_after_kib"]),
                mib(g),
                _f(g / streams if g is not None else None, 0),
                mib(extra),
                mib(bound) + (f" (answers: {mib(min(limit, answer) * streams / 1024)})" if limit else ""),
                verdict,
                str(d["max_concurrent_streams"]),
                _f(d["seconds"], 1),
                f"{load['failed']}/{load['requests']}",
            ]
        )
    return rows


def kb(n: int) -> str:
    """A body size as the issue writes it: 50 KB, 200 KB, 1 MB (decimal)."""
    return f"{n / 1e6:g} MB" if n >= 1_000_000 else f"{n / 1000:g} KB"


def mib(kib: float | None) -> str:
    return _f(kib / 1024 if kib is not None else None, 1)


def stream_answer_bytes(events: int) -> int:
    return fastupstream.answer_bytes(events, usage=True)


def last_summary_line(ep: Endpoint) -> str | None:
    """The addon's last per-request line (shows that it parsed the model and the usage)."""
    if ep.proxy is None:
        return None
    lines = [x for x in ep.proxy.output().splitlines() if CLIENT_PATH in x and " -> " in x]
    return lines[-1].strip() if lines else None


def reset_peak_rss(pid: int) -> bool:
    """Start VmHWM afresh from the current RSS (Linux: write 5 to /proc/<pid>/clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def upstream_stats(up: Endpoint, reset: bool = False) -> dict:
    """The fast upstream's counters (requests, most streams open at once); {} if unavailable."""
    try:
        with socket.create_connection(("127.0.0.1", up.port), timeout=5) as s:
            s.sendall(f"GET /__stats{'?reset=1' if reset else ''} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        return json.loads(data.partition(b"\r\n\r\n")[2])
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------
# formatting


def _f(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


MODE_TITLE = {"keepalive": "keep-alive clients", "newconn": "a new connection per request"}


def load_table(summary: dict, labels: list[str], mode: str, direct: str, base: str | None) -> str:
    """The common table: c=1 latency (+ added vs direct), c=16 throughput (+ ratio to base)."""
    d = summary.get(direct, {}).get(mode, {})
    b = summary.get(base, {}).get(mode, {}) if base else {}
    headers = [
        "target",
        "c=1 p50 ms",
        "c=1 p99 ms",
        "added p50 vs direct ms",
        "c=16 req/s",
        "c=16 p50 ms",
        "c=16 p99 ms",
    ]
    if base:
        headers += ["req/s ÷ bare", "CPU µs/req", "CPU ÷ bare"]
    else:
        headers += ["CPU µs/req"]
    headers.append("failed")
    rows = []
    for label in labels:
        s = summary.get(label, {}).get(mode)
        if not s:
            continue
        added = (
            None
            if label == direct or s["c1_p50_ms"] is None or d.get("c1_p50_ms") is None
            else s["c1_p50_ms"] - d["c1_p50_ms"]
        )
        row = [
            label,
            _f(s["c1_p50_ms"], 3),
            _f(s["c1_p99_ms"], 3),
            "" if label == direct else _f(added, 3),
            _f(s["c16_rps"], 0),
            _f(s["c16_p50_ms"], 2),
            _f(s["c16_p99_ms"], 2),
        ]
        if base:
            row += [
                _f(_ratio(s["c16_rps"], b.get("c16_rps")), 3) if label != direct else "",
                _f(s["c16_cpu_us"], 0),
                _f(_ratio(s["c16_cpu_us"], b.get("c16_cpu_us")), 2) if label != direct else "",
            ]
        else:
            row += [_f(s["c16_cpu_us"], 0)]
        row.append(f"{s['failed']}/{s['requests']}")
        rows.append(row)
    return table(headers, rows)


def paired(
    raw: dict, a: str, b: str, mode: str, key: str, load: str = "c16", diff: bool = False
) -> list[float]:
    """a/b (or a-b) of one number, round by round: both ran minutes apart under the same conditions."""
    runs_a, runs_b = raw[a][mode][load], raw[b][mode][load]
    return [
        (ra[key] - rb[key]) if diff else ra[key] / rb[key]
        for ra, rb in zip(runs_a, runs_b, strict=False)
        if ra.get(key) is not None and rb.get(key)
    ]


def _spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if len(values) < 2:
        return ""
    return f"{min(values) * scale:.{digits}f} – {max(values) * scale:.{digits}f}"


def _rounds(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    """Every round's value, in round order."""
    return " · ".join(f"{v * scale:.{digits}f}" for v in values)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


GOAL_HEADERS = ["clients", "what", "goal", "median", "per round", "range", "by CPU/req", "verdict"]


def ratio_row(raw: dict, mode: str, label: str, base: str, goal: float | None, what: str) -> list[str]:
    """Throughput of label ÷ base within each round (and the same from CPU per request)."""
    by_rps = paired(raw, label, base, mode, "rps")
    by_cpu = paired(raw, base, label, mode, "cpu_us_per_req")
    m = _median(by_rps)
    verdict = "" if goal is None else ("met" if m is not None and m >= goal else "missed")
    return [
        mode,
        what,
        "" if goal is None else f">= {goal}",
        _f(m, 3),
        _rounds(by_rps),
        _spread(by_rps),
        _f(_median(by_cpu), 3),
        verdict,
    ]


def added_p50_row(raw: dict, mode: str, label: str, base: str, goal: float | None) -> list[str]:
    """p50 at c=1 of label minus base's, within each round; 'by CPU/req' is the CPU it adds at c=1."""
    diffs = paired(raw, label, base, mode, "p50_ms", load="c1", diff=True)
    cpu = paired(raw, label, base, mode, "cpu_us_per_req", load="c1", diff=True)
    m = _median(diffs)
    c = _median(cpu)
    return [
        mode,
        f"{label}: added p50 at c=1 vs {base.split(' (')[0]}",
        "" if goal is None else f"<= {goal} ms",
        _f(m, 3) + " ms",
        _rounds(diffs),
        _spread(diffs),
        f"{c:+,.0f} µs" if c is not None else "—",
        "" if goal is None else ("met" if m is not None and m <= goal else "missed"),
    ]


def metrics_cost_row(raw: dict, mode: str, on: str, off: str, logging: str) -> list[str]:
    """The throughput lost by turning cf_metrics on, at equal logging, within each round."""
    cost_rps = [1 - r for r in paired(raw, on, off, mode, "rps")]
    cost_cpu = [r - 1 for r in paired(raw, on, off, mode, "cpu_us_per_req")]
    m = _median(cost_rps)
    c = _median(cost_cpu)
    return [
        mode,
        f"metrics+accounting cost, {logging} (cf_metrics on vs off)",
        f"< {GOAL_METRICS_COST:.0%}",
        _f(m * 100 if m is not None else None, 1) + " %",
        _rounds(cost_rps, 100, 1),
        _spread(cost_rps, 100, 1) + (" %" if len(cost_rps) > 1 else ""),
        _f(c * 100 if c is not None else None, 1) + " %",
        "met" if m is not None and m < GOAL_METRICS_COST else "missed",
    ]


def core_goal_rows(raw: dict, modes: tuple[str, ...]) -> list[list[str]]:
    """Issue 13's comparisons against bare mitmdump -q, each taken within a round."""
    rows = []
    have = lambda *labels: all(x in raw for x in labels)  # noqa: E731
    for mode in modes:
        if have(CORE_DEFAULTS, CORE_BASE):
            rows.append(
                ratio_row(raw, mode, CORE_DEFAULTS, CORE_BASE, GOAL_DEFAULTS, f"{CORE_DEFAULTS} ÷ -q")
            )
        if have(CORE_LOG_OFF, CORE_BASE):
            rows.append(ratio_row(raw, mode, CORE_LOG_OFF, CORE_BASE, GOAL_LOG_OFF, f"{CORE_LOG_OFF} ÷ -q"))
        if have(CORE_DEFAULTS, CORE_BASE):
            rows.append(added_p50_row(raw, mode, CORE_DEFAULTS, CORE_BASE, GOAL_ADDED_P50_MS))
        if have(CORE_LOG_OFF, CORE_BASE):
            rows.append(added_p50_row(raw, mode, CORE_LOG_OFF, CORE_BASE, None))
        if have(CORE_JOBS_LINE, CORE_BASE):
            rows.append(added_p50_row(raw, mode, CORE_JOBS_LINE, CORE_BASE, None))
        if have(CORE_DEFAULTS, CORE_METRICS_OFF):
            rows.append(metrics_cost_row(raw, mode, CORE_DEFAULTS, CORE_METRICS_OFF, "line on"))
        if have(CORE_LOG_OFF, CORE_BOTH_OFF):
            rows.append(metrics_cost_row(raw, mode, CORE_LOG_OFF, CORE_BOTH_OFF, "line off"))
        for label, title in (
            (CORE_DUMP, "mitmproxy's own flow dump"),
            (CORE_FLOOR, CORE_FLOOR),
            (CORE_FLOOR_LINE, CORE_FLOOR_LINE),
            (CORE_JOBS, CORE_JOBS),
            (CORE_JOBS_LINE, CORE_JOBS_LINE),
        ):
            if have(label, CORE_BASE):
                rows.append(ratio_row(raw, mode, label, CORE_BASE, None, f"reference: {title} ÷ -q"))
        if have(CORE_DEFAULTS, CORE_FLOOR_LINE):
            rows.append(
                ratio_row(raw, mode, CORE_DEFAULTS, CORE_FLOOR_LINE, None, "the addon's own share, line on")
            )
        if have(CORE_LOG_OFF, CORE_FLOOR):
            rows.append(
                ratio_row(raw, mode, CORE_LOG_OFF, CORE_FLOOR, None, "the addon's own share, line off")
            )
    return rows


# ---------------------------------------------------------------------------------------------
# parts


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan, services: Services) -> None:
        self.args = args
        self.plan = plan
        self.sv = services
        self.results: dict = {"parts": {}}
        self.markdown: list[str] = []
        self.options = {o.name for o in cf_config.OPTIONS}

    def emit(self, text: str) -> None:
        print(text, flush=True)
        self.markdown.append(text)

    def part_header(self, name: str, title: str) -> None:
        self.emit(f"\n## {name}: {title}\n")
        self.emit(f"load average at start: {loadavg()}\n")

    def cfgw_opts(self, **kw: str) -> dict[str, str]:
        """Options the addon knows (a variant whose option does not exist yet is skipped)."""
        return {k: v for k, v in kw.items() if k in self.options}

    # -- 1. core ---------------------------------------------------------------------------

    def core(self) -> None:
        self.part_header("core", "small JSON POSTs (chat/completions) to a fast upstream")
        up = self.sv.fast_upstream()
        bare = self.sv.bare_mitmdump(CORE_BASE, up, QUIET)
        dump = self.sv.bare_mitmdump(CORE_DUMP, up, ())
        floor = self.sv.bare_mitmdump(CORE_FLOOR, up, ("-q", "-s", FLOOR_ADDON))
        floor_line = self.sv.bare_mitmdump(
            CORE_FLOOR_LINE, up, (*RUNSH_DEFAULTS, "-s", FLOOR_ADDON), env={"FLOOR_LOG": "1"}
        )
        jobs = self.sv.jobs_reference(CORE_JOBS, up)
        jobs_line = self.sv.jobs_reference(CORE_JOBS_LINE, up, RUNSH_DEFAULTS, env={"JOBS_LOG": "1"})
        variants = [
            (CORE_DEFAULTS, {}, RUNSH_DEFAULTS),
            (CORE_LOG_OFF, {"cf_log_requests": "off"}, QUIET),
            (CORE_METRICS_OFF, {"cf_metrics": "off"}, RUNSH_DEFAULTS),
            (CORE_BOTH_OFF, {"cf_log_requests": "off", "cf_metrics": "off"}, QUIET),
        ]
        targets = [up, bare, dump, floor, floor_line, jobs, jobs_line]
        for label, opts, args in variants:
            if set(opts) <= self.options:
                targets.append(self.sv.proxy(label, up, opts, args))
        raw = measure_rounds(targets, self.plan)
        summary = summarise(raw)
        labels = [t.label for t in targets]
        self.results["parts"]["core"] = {"summary": summary, "raw": raw}
        for mode in self.plan.modes:
            self.emit(f"\n### core, {MODE_TITLE[mode]} (median of {self.plan.rounds} round(s))\n")
            self.emit(load_table(summary, labels, mode, up.label, bare.label))
        self.emit(
            "\n### core goals (issue 13), against bare mitmdump -q: each figure is taken within a round, "
            "then the median over rounds, with every round's value and the range; throughput at c=16, "
            "'by CPU/req' is the same ratio from the proxy's own CPU time per request, which other load "
            "on the machine disturbs less (for the c=1 rows: the CPU per request it adds)\n"
        )
        self.emit(table(GOAL_HEADERS, core_goal_rows(raw, self.plan.modes)))
        self.stop_all_of_part()

    # -- 1b. agent-sized requests ------------------------------------------------------------

    def agent(self) -> None:
        p = self.plan
        sizes = p.agent_sizes
        self.part_header(
            "agent",
            f"agent-sized requests: {', '.join(kb(n) for n in sizes)} chat JSON bodies with tool "
            f"definitions, answers streamed as {p.agent_events} events {p.agent_event_delay_ms:g} ms apart, "
            f"keep-alive clients, c={p.agent_concurrency}",
        )
        up = self.sv.fast_upstream(stream_events=p.agent_events, stream_delay_ms=p.agent_event_delay_ms)
        gw = self.sv.proxy(AGENT_GW, up)
        targets = [
            self.sv.bare_mitmdump(AGENT_BASE, up, QUIET + STREAM_ALL),
            self.sv.bare_mitmdump(AGENT_REF, up, QUIET + STREAM_RESPONSES),
            self.sv.jobs_reference(AGENT_JOBS, up),
            gw,
        ]
        bodies = {n: agentbody.chat_request(n) for n in sizes}
        raw: dict[str, dict[str, list[dict]]] = {t.label: {str(n): [] for n in sizes} for t in targets}
        c = p.agent_concurrency
        for rnd in range(p.rounds):
            for n in sizes:
                for ep in rotated(targets, rnd):
                    warm_up(ep, True, c, min(p.warmup, 2 * c), bodies[n])
                    r = point(ep, True, c, p.agent_requests, p, body=bodies[n], request_timeout=120)
                    raw[ep.label][str(n)].append(r)
                    print(
                        f"  agent round {rnd + 1}/{p.rounds} {kb(n):>7} {ep.label:62} "
                        f"{_f(r['rps'], 1)} req/s  CPU {_f(r['cpu_us_per_req'], 0)} µs/req"
                        + (
                            f"  ({r['failed']} failed: {r['errors'] or r['statuses']})" if r["failed"] else ""
                        ),
                        flush=True,
                    )
        line = last_summary_line(gw)
        self.results["parts"]["agent"] = {
            "raw": raw,
            "sizes": list(sizes),
            "body_model_offset": {str(n): bodies[n].find(b'"model"') for n in sizes},
            "cf_gateway_last_line": line,
        }
        rows = []
        for n in sizes:
            base = raw[AGENT_BASE][str(n)]
            base_cpu = med(base, "cpu_us_per_req")
            for t in targets:
                runs = raw[t.label][str(n)]
                ratios = per_round(runs, base, "cpu_us_per_req")
                cpu = med(runs, "cpu_us_per_req")
                rows.append(
                    [
                        kb(n),
                        t.label,
                        _f(med(runs, "rps"), 1),
                        _f(med(runs, "p50_ms"), 1),
                        _f(cpu, 0),
                        "" if t.label == AGENT_BASE else _f(cpu - base_cpu if cpu and base_cpu else None, 0),
                        "" if t.label == AGENT_BASE else _f(_median(ratios), 3),
                        "" if t.label == AGENT_BASE else _rounds(ratios),
                        "" if t.label == AGENT_BASE else _spread(ratios),
                        f"{sum(r['failed'] for r in runs)}/{sum(r['requests'] for r in runs)}",
                    ]
                )
        self.emit(f"\n### agent, proxy CPU per request (median of {p.rounds} round(s))\n")
        self.emit(
            table(
                [
                    "body",
                    "target",
                    "req/s",
                    "p50 ms",
                    "CPU µs/req",
                    "added CPU µs/req",
                    "CPU ÷ baseline",
                    "per round",
                    "range",
                    "failed",
                ],
                rows,
            )
        )
        self.emit(
            "\n### agent goals (issue 13): proxy CPU per request ÷ bare streaming mitmdump, within each "
            "round; the addon's added CPU per request, per 100 KB of request body (slope between the "
            f"smallest and the largest body). CPU is read in 1/{CLK_TCK} s ticks, so a run's CPU per "
            "request is good to one tick ÷ its requests (the denominators of 'failed' over the rounds)\n"
        )
        self.emit(
            table(["what", "goal", "median", "per round", "range", "verdict"], agent_goal_rows(raw, sizes))
        )
        if line:
            self.emit(f"\ncf-gateway's summary line for its last request: `{line}`")
        self.stop_all_of_part()

    # -- 1c. memory under many concurrent agent streams ------------------------------------------

    def memory(self) -> None:
        p = self.plan
        n = p.memory_streams
        answer = stream_answer_bytes(p.agent_events)
        self.part_header(
            "memory",
            f"peak RSS of {n} concurrent streams with {kb(p.memory_body)} request bodies "
            f"(answers: {p.agent_events} events {p.memory_event_delay_ms:g} ms apart, "
            f"about {answer / 1024:.0f} KiB each)",
        )
        up = self.sv.fast_upstream(stream_events=p.agent_events, stream_delay_ms=p.memory_event_delay_ms)
        limit_text = cf_config.BY_OPTION["cf_record_limit"].spec.default
        default_limit = cf_config.parse_size(limit_text)
        cases: list[tuple[str, Callable[[], Endpoint], int | None]] = [
            (AGENT_BASE, lambda: self.sv.bare_mitmdump(AGENT_BASE, up, QUIET + STREAM_ALL), None),
            (AGENT_REF, lambda: self.sv.bare_mitmdump(AGENT_REF, up, QUIET + STREAM_RESPONSES), None),
            (
                f"cf-gateway, ./run.sh defaults (cf_record_limit {limit_text})",
                lambda: self.sv.proxy("cfgw-memory", up),
                default_limit,
            ),
            (
                "cf-gateway, ./run.sh defaults, cf_record_limit=0",
                lambda: self.sv.proxy("cfgw-memory-0", up, {"cf_record_limit": "0"}),
                0,
            ),
        ]
        body = agentbody.chat_request(p.memory_body)
        data: dict[str, dict] = {}
        for label, make, limit in cases:
            ep = make()
            pid = ep.pids[0]
            warm_up(ep, True, 4, 8, body)
            time.sleep(0.3)
            exact = reset_peak_rss(pid)
            rss0 = proc_status(pid, "VmRSS")
            upstream_stats(up, reset=True)
            t0 = time.monotonic()
            r = loadgen.load(ep.port, ep.request(body), n, n, True, time_limit=300, request_timeout=300)
            seconds = time.monotonic() - t0
            hwm1 = proc_status(pid, "VmHWM")
            stats = upstream_stats(up)
            data[label] = {
                "rss_before_kib": rss0,
                "hwm_after_kib": hwm1,
                "peak_reset": exact,
                "record_limit": limit,
                "max_concurrent_streams": stats.get("max_streams"),
                "seconds": round(seconds, 1),
                "load": r.summary(),
            }
            print(
                f"  memory {label}: peak growth {mib(hwm1 - rss0 if hwm1 and rss0 else None)} MiB", flush=True
            )
            self.sv.stop(pid)
        self.results["parts"]["memory"] = data
        self.emit(table(MEMORY_HEADERS, memory_rows(data, n, answer)))
        if not all(d["peak_reset"] for d in data.values()):
            self.emit(
                "\n- the peak could not be reset after the warm-up (/proc/<pid>/clear_refs): "
                "peak growth may include the warm-up's"
            )
        self.stop_all_of_part()

    # -- 2. stream ---------------------------------------------------------------------------

    def stream(self) -> None:
        p = self.plan
        self.part_header(
            "stream",
            f"SSE from the stand-in: {p.stream_events} events {p.stream_delay_ms} ms apart "
            f"(median of {p.stream_repeats})",
        )
        gw = self.sv.standin()
        targets = [
            gw,
            self.sv.proxy("through cf-gateway (streams)", gw),
            self.sv.bare_mitmdump("buffering (bare mitmdump -q, like the original proxy)", gw),
            self.sv.bare_mitmdump(
                "bare mitmdump -q, stream_large_bodies=1 (streams, keeps nothing)", gw, QUIET + STREAM_ALL
            ),
        ]
        headers = {"x-standin-events": str(p.stream_events), "x-standin-delay-ms": str(p.stream_delay_ms)}
        rows, data = [], {}
        direct_first = None
        for ep in targets:
            runs = []
            loadgen.stream_once(
                ep.port, ep.request(STREAM_BODY, close=True), timeout=60
            )  # warm-up, not counted
            for _ in range(p.stream_repeats):
                t = loadgen.stream_once(
                    ep.port, ep.request(STREAM_BODY, close=True, headers=headers), timeout=60
                )
                runs.append(t.__dict__)
            ok = [
                r for r in runs if r["error"] is None and r["status"] == 200 and r["last_event_s"] is not None
            ]
            first = statistics.median([r["first_event_s"] * 1000 for r in ok]) if ok else None
            last = statistics.median([r["last_event_s"] * 1000 for r in ok]) if ok else None
            if ep is gw:
                direct_first = first
            data[ep.label] = {"first_event_ms": first, "last_event_ms": last, "runs": runs}
            rows.append(
                [
                    ep.label,
                    _f(first, 1),
                    _f(last, 1),
                    ""
                    if ep is gw
                    else _f(first - direct_first if first is not None and direct_first else None, 1),
                    f"{len(runs) - len(ok)}/{len(runs)}",
                ]
            )
        self.results["parts"]["stream"] = data
        self.emit(
            table(
                ["path", "first event ms", "last event ms", "first event added vs direct ms", "failed"], rows
            )
        )
        self.stop_all_of_part()

    # -- 2b. rss while relaying one big stream ----------------------------------------------------

    def rss(self) -> None:
        p = self.plan
        event_bytes = 65536
        events = p.big_stream_mb * 1024 * 1024 // event_bytes
        self.part_header(
            "rss",
            f"proxy memory while relaying one {p.big_stream_mb} MB SSE stream ({events} events of 64 KiB)",
        )
        gw = self.sv.standin()
        headers = {"x-standin-events": str(events), "x-standin-event-bytes": str(event_bytes)}
        rows, data = [], {}
        cases = [
            ("cf-gateway, default record limit (8m)", lambda: self.sv.proxy("cfgw-rss", gw)),
            (
                "cf-gateway, cf_record_limit=0",
                lambda: self.sv.proxy("cfgw-rss0", gw, {"cf_record_limit": "0"}),
            ),
            ("buffering (bare mitmdump -q)", lambda: self.sv.bare_mitmdump("bare-rss", gw)),
            (
                "bare mitmdump -q, stream_large_bodies=1",
                lambda: self.sv.bare_mitmdump("bare-stream-rss", gw, QUIET + STREAM_ALL),
            ),
        ]
        for label, make in cases:
            ep = make()
            pid = ep.pids[0]
            time.sleep(0.3)
            rss0 = proc_status(pid, "VmRSS")
            hwm0 = proc_status(pid, "VmHWM")
            t = loadgen.stream_once(
                ep.port, ep.request(STREAM_BODY, close=True, headers=headers), timeout=180
            )
            hwm1 = proc_status(pid, "VmHWM")
            rss1 = proc_status(pid, "VmRSS")
            mb = t.body_bytes / 1e6
            secs = t.done_s or 0
            data[label] = {
                "rss_before_kib": rss0,
                "hwm_before_kib": hwm0,
                "hwm_after_kib": hwm1,
                "rss_after_kib": rss1,
                "body_bytes": t.body_bytes,
                "first_event_ms": t.first_event_s * 1000 if t.first_event_s else None,
                "seconds": secs,
                "error": t.error,
                "status": t.status,
            }
            rows.append(
                [
                    label,
                    _f(rss0 / 1024 if rss0 else None, 1),
                    _f(hwm1 / 1024 if hwm1 else None, 1),
                    _f((hwm1 - hwm0) / 1024 if hwm1 and hwm0 else None, 1),
                    _f(rss1 / 1024 if rss1 else None, 1),
                    _f(mb, 1),
                    _f(t.first_event_s * 1000 if t.first_event_s else None, 1),
                    _f(mb / secs if secs > 0 else None, 0),
                    t.error or str(t.status),
                ]
            )
            self.sv.stop(pid)
        self.results["parts"]["rss"] = data
        self.emit(
            table(
                [
                    "proxy",
                    "RSS before MiB",
                    "peak RSS (VmHWM) MiB",
                    "peak growth MiB",
                    "RSS after MiB",
                    "MB relayed",
                    "first event ms",
                    "MB/s (request to last byte)",
                    "status",
                ],
                rows,
            )
        )
        self.stop_all_of_part()

    # -- 3. peers ---------------------------------------------------------------------------

    def peers(self) -> None:
        p = self.plan
        self.part_header("peers", "the same job done by nginx and LiteLLM (fast upstream)")
        up = self.sv.fast_upstream(stream_events=20, stream_delay_ms=10)
        bare = self.sv.bare_mitmdump("bare mitmdump -q (reverse, no addon)", up)
        targets = [up, bare, self.sv.proxy("cf-gateway (./run.sh defaults)", up)]
        notes: list[str] = []
        try:
            ng = self.sv.nginx(
                "nginx (rewriting reverse proxy, 1 worker)",
                lambda d, port: nginx_peer.rewriting_config(d, port, up.port, COMPAT),
                CLIENT_PATH,
            )
            targets.append(ng)
        except Exception as e:
            notes.append(f"nginx: not run: {e}")
        lite = self.start_litellm(up)
        if isinstance(lite, Endpoint):
            targets.append(lite)
        else:
            notes.append(f"LiteLLM: not run: {lite}")
        raw = measure_rounds(targets, p, tag="peers ")
        summary = summarise(raw)
        labels = [t.label for t in targets]
        # streamed completion through every peer: 20 chunks 10 ms apart from the fast upstream
        stream_rows, stream_data = [], {}
        for ep in targets:
            loadgen.stream_once(
                ep.port, ep.request(STREAM_BODY, close=True), timeout=60
            )  # warm-up, not counted
            runs = [
                loadgen.stream_once(ep.port, ep.request(STREAM_BODY, close=True), timeout=60).__dict__
                for _ in range(p.stream_repeats)
            ]
            ok = [
                r for r in runs if r["error"] is None and r["status"] == 200 and r["last_event_s"] is not None
            ]
            first = statistics.median([r["first_event_s"] * 1000 for r in ok]) if ok else None
            last = statistics.median([r["last_event_s"] * 1000 for r in ok]) if ok else None
            stream_data[ep.label] = {"first_event_ms": first, "last_event_ms": last, "runs": runs}
            stream_rows.append([ep.label, _f(first, 1), _f(last, 1), f"{len(runs) - len(ok)}/{len(runs)}"])
        self.results["parts"]["peers"] = {
            "summary": summary,
            "raw": raw,
            "stream": stream_data,
            "notes": notes,
        }
        for mode in p.modes:
            self.emit(f"\n### peers, {MODE_TITLE[mode]} (median of {p.rounds} round(s))\n")
            self.emit(load_table(summary, labels, mode, up.label, bare.label))
        self.emit(
            f"\n### peers, one streamed completion (20 chunks 10 ms apart, median of {p.stream_repeats})\n"
        )
        self.emit(table(["target", "first event ms", "last event ms", "failed"], stream_rows))
        for n in notes:
            self.emit(f"\n- {n}")
        self.stop_all_of_part()

    def start_litellm(self, up: Endpoint) -> Endpoint | str:
        """LiteLLM's proxy in front of the upstream, or the reason it could not run."""
        if self.args.no_litellm:
            return "skipped (--no-litellm)"
        try:
            cli = litellm_peer.ensure_installed(
                self.args.litellm_spec, log_path=self.args.out / "litellm-install.log"
            )
        except litellm_peer.Unavailable as e:
            return f"cannot install {self.args.litellm_spec}: {e}"
        except Exception as e:
            return f"cannot install {self.args.litellm_spec}: {type(e).__name__}: {e}"
        d = self.sv.dir("litellm")
        master_key = litellm_peer.new_master_key()
        conf = litellm_peer.write_config(d / "config.yaml", f"http://127.0.0.1:{up.port}{COMPAT}", master_key)
        port = free_port()
        try:
            peer = litellm_peer.start(cli, conf, port, d, wait_for_port)
        except litellm_peer.Unavailable as e:
            return str(e)
        self.sv.add("litellm", peer.proc.pid, peer.stop)
        version = self.litellm_version()
        ep = Endpoint(
            f"LiteLLM proxy {version} (1 worker, master key)",
            port,
            CLIENT_PATH,
            [peer.proc.pid],
            headers={"authorization": f"Bearer {master_key}"},
        )
        # one real request: a peer that answers errors is reported, not benchmarked
        check = loadgen.load(port, ep.request(), 1, 1, True, request_timeout=60)
        if check.ok != 1:
            tail = " | ".join(peer.output().strip().splitlines()[-3:])[:300]
            return f"started but answered {dict(check.statuses) or dict(check.errors)}: {tail}"
        self.results.setdefault("machine", {})["litellm"] = version
        return ep

    def litellm_version(self) -> str:
        try:
            out = subprocess.run(
                [
                    str(litellm_peer.VENV / "bin" / "python"),
                    "-c",
                    "import importlib.metadata as m;print(m.version('litellm'))",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            return out.stdout.strip() or "?"
        except Exception:
            return "?"

    # -- 5. scale ---------------------------------------------------------------------------

    def scale(self) -> None:
        p = self.plan
        self.part_header("scale", "one cf-gateway process vs two behind nginx (fast upstream)")
        up = self.sv.fast_upstream()
        a = self.sv.proxy("one cf-gateway process", up)
        b = self.sv.proxy("cfgw-b", up)
        targets = [a]
        notes = []
        try:
            via_one = self.sv.nginx(
                "nginx -> one cf-gateway",
                lambda d, port: nginx_peer.balancer_config(d, port, [a.port]),
                CLIENT_PATH,
            )
            via_two = self.sv.nginx(
                "nginx -> two cf-gateway processes",
                lambda d, port: nginx_peer.balancer_config(d, port, [a.port, b.port]),
                CLIENT_PATH,
            )
            via_one.pids += a.pids  # CPU per request counts every process on the path
            via_two.pids += a.pids + b.pids
            targets += [via_one, via_two]
        except Exception as e:
            notes.append(f"nginx: not run: {e}")
        raw = measure_rounds(targets, p, tag="scale ")
        summary = summarise(raw)
        self.results["parts"]["scale"] = {"summary": summary, "raw": raw, "notes": notes}
        base = a.label
        rows = []
        for mode in p.modes:
            b_rps = summary[base][mode]["c16_rps"]
            for t in targets:
                s = summary[t.label][mode]
                rows.append(
                    [
                        mode,
                        t.label,
                        _f(s["c16_rps"], 0),
                        _f(_ratio(s["c16_rps"], b_rps), 2),
                        _f(s["c16_p50_ms"], 2),
                        _f(s["c16_p99_ms"], 2),
                        _f(s["c1_p50_ms"], 3),
                        _f(s["c16_cpu_us"], 0),
                        f"{s['failed']}/{s['requests']}",
                    ]
                )
        self.emit(
            table(
                [
                    "clients",
                    "target",
                    "c=16 req/s",
                    "÷ one process",
                    "c=16 p50 ms",
                    "c=16 p99 ms",
                    "c=1 p50 ms",
                    "CPU µs/req (all procs)",
                    "failed",
                ],
                rows,
            )
        )
        for n in notes:
            self.emit(f"\n- {n}")
        self.stop_all_of_part()

    # -- 4. soak ---------------------------------------------------------------------------

    def soak(self) -> None:
        p = self.plan
        slices = 10
        per = max(p.soak // slices, 1)
        self.part_header(
            "soak",
            f"{per * slices} requests through each proxy at c=16, in {slices} slices alternating "
            "keep-alive / new connection; bare mitmdump alongside, to tell the addon's growth "
            "from mitmproxy's",
        )
        up = self.sv.fast_upstream()
        proxies = [
            self.sv.proxy("cf-gateway (./run.sh defaults)", up),
            self.sv.bare_mitmdump("bare mitmdump -q (reverse, no addon)", up),
        ]
        time.sleep(0.3)
        samples = {
            ep.label: [{"after_requests": 0, "rss_kib": proc_status(ep.pids[0], "VmRSS")}] for ep in proxies
        }
        failed = dict.fromkeys(samples, 0)
        done = dict.fromkeys(samples, 0)
        for i in range(slices):
            keepalive = i % 2 == 0
            for ep in proxies:  # interleaved: both see the same machine load
                r = loadgen.load(
                    ep.port, ep.request(close=not keepalive), per, 16, keepalive, time_limit=p.time_limit
                )
                done[ep.label] += r.requests
                failed[ep.label] += r.failed
                samples[ep.label].append(
                    {
                        "after_requests": done[ep.label],
                        "rss_kib": proc_status(ep.pids[0], "VmRSS"),
                        "mode": "keepalive" if keepalive else "newconn",
                        "rps": round(r.rps, 1),
                    }
                )
            print(
                f"  soak slice {i + 1}/{slices}: "
                + ", ".join(
                    f"{ep.label.split(' (')[0]} RSS {samples[ep.label][-1]['rss_kib'] / 1024:.1f} MiB"
                    for ep in proxies
                ),
                flush=True,
            )
        rows = []
        for ep in proxies:
            ss = samples[ep.label]
            start, first, end = ss[0]["rss_kib"], ss[1]["rss_kib"], ss[-1]["rss_kib"]
            mid = ss[len(ss) // 2]
            second_half = ss[-1]["after_requests"] - mid["after_requests"]
            slope = (end - mid["rss_kib"]) / (second_half / 1000) if second_half else None
            hwm = proc_status(ep.pids[0], "VmHWM")
            rows.append(
                [
                    ep.label,
                    str(done[ep.label]),
                    str(failed[ep.label]),
                    _f(start / 1024, 1),
                    _f(first / 1024, 1),
                    _f(end / 1024, 1),
                    _f((end - start) / 1024, 1),
                    _f((end - first) / 1024, 1),
                    _f(slope, 1),
                    _f(hwm / 1024 if hwm else None, 1),
                ]
            )
        self.results["parts"]["soak"] = {"samples": samples, "failed": failed}
        self.emit(
            table(
                [
                    "proxy",
                    "requests",
                    "failed",
                    "RSS start MiB",
                    "after 1st slice MiB",
                    "RSS end MiB",
                    "growth MiB",
                    "growth after 1st slice MiB",
                    "2nd half KiB / 1k req",
                    "peak MiB",
                ],
                rows,
            )
        )
        for ep in proxies:
            self.emit(
                f"\nRSS samples, {ep.label} (requests: MiB): "
                + ", ".join(
                    f"{x['after_requests']}: {x['rss_kib'] / 1024:.1f}"
                    for x in samples[ep.label]
                    if x["rss_kib"]
                )
            )
        self.stop_all_of_part()

    def stop_all_of_part(self) -> None:
        self.sv.stop_all()
        self.emit(f"\nload average at end: {loadavg()}")


# ---------------------------------------------------------------------------------------------
# machine, output, main


def machine_info() -> dict:
    cpu = "?"
    try:
        fields = dict(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines())
            if v
        )
        cpu = fields.get("model name", "?")
        if "cpu MHz" in fields:
            cpu += f" ({float(fields['cpu MHz']):.0f} MHz)"
    except (OSError, ValueError):
        pass
    mitm = subprocess.run(
        [sys.executable, "-c", "import mitmproxy.version as v; print(v.VERSION)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    ng = nginx_peer.find_nginx()
    ng_version = (
        subprocess.run([ng, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
        if ng
        else None
    )
    mem = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": mitm,
        "mitmdump": str(MITMDUMP),
        "nginx": ng_version,
        "load_average_at_start": loadavg(),
    }


def ensure_apt(package: str, present: Callable[[], object], allowed: bool) -> None:
    """Install a Debian package if missing (root only, bounded in time; failure just skips its rows)."""
    if present() or not allowed or not shutil.which("apt-get") or os.geteuid() != 0:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"bench: {package} missing: apt-get install -y {package}", file=sys.stderr, flush=True)
    install = ["apt-get", "install", "-y", "-qq", package]
    for cmd in (install, ["apt-get", "update", "-qq"], install):
        try:
            subprocess.run(cmd, env=env, capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return
        if present():
            return


def plan_for(args: argparse.Namespace) -> Plan:
    scale = 10 if args.quick else 1
    return Plan(
        rounds=args.rounds or (1 if args.quick else 3),
        n_c16=max((args.requests or 3000) // scale, 16),
        n_c1=max((args.requests_c1 or 500) // scale, 10),
        warmup=20 if args.quick else 100,
        soak=max((args.soak_requests or 20000) // scale, 100),
        stream_events=50,
        stream_delay_ms=20,
        stream_repeats=2 if args.quick else 5,
        big_stream_mb=args.stream_mb or (20 if args.quick else 200),
        time_limit=args.time_limit,
        seconds=args.seconds,
        modes=args.modes,
        agent_requests=max((args.agent_requests or 300) // scale, 16),
        memory_streams=args.memory_streams or (50 if args.quick else 200),
    )


def parse_modes(value: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in value.split(",") if m.strip())
    if not modes or set(modes) - set(MODES):
        raise argparse.ArgumentTypeError(f"choose from {','.join(MODES)}")
    return modes


def write_outputs(
    bench: Bench, args: argparse.Namespace, started: float, complete: bool
) -> tuple[Path, Path]:
    args.out.mkdir(parents=True, exist_ok=True)
    js = args.out / f"bench-{args.stamp}.json"
    md = args.out / f"bench-{args.stamp}.md"
    bench.results["duration_s"] = round(time.monotonic() - started, 1)
    bench.results["complete"] = complete
    js.write_text(json.dumps(bench.results, indent=1, default=str))
    md.write_text("\n".join(bench.markdown) + "\n")
    for src, name in ((js, "latest.json"), (md, "latest.md")):
        shutil.copyfile(src, args.out / name)
    return js, md


def header_markdown(info: dict, args: argparse.Namespace, plan: Plan) -> str:
    lines = [
        "# cf-gateway benchmark run",
        "",
        f"- command: `{' '.join(['./run.sh', 'bench', *args.argv])}`",
        f"- date: {info['date']}",
        f"- CPU: {info['cpu']}; {info['cores']} cores ({info['usable_cores']} usable); "
        f"memory {info['memory']}",
        f"- kernel {info['kernel']}; Python {info['python']}; mitmproxy {info['mitmproxy']}; "
        f"nginx {info['nginx']}",
        f"- load average at start: {info['load_average_at_start']}",
        f"- plan: {plan.rounds} round(s); "
        + (
            f"every load run {plan.seconds:g} s"
            if plan.seconds
            else f"c=16: {plan.n_c16} requests, c=1: {plan.n_c1} requests, agent: {plan.agent_requests}"
        )
        + f"; warm-up {plan.warmup} per run; clients: {', '.join(plan.modes)}; "
        f"memory: {plan.memory_streams} streams; soak {plan.soak}; big stream {plan.big_stream_mb} MB",
        "- load generator, upstream and proxy share the same cores: every process here competes "
        "for 2 CPUs, so absolute numbers are lower bounds and ratios are the point.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description="cf-gateway benchmarks (bench/README.md)")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {','.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1/10 of the requests, 1 round")
    ap.add_argument("--rounds", type=int, help="rounds per configuration (default 3; 1 with --quick)")
    ap.add_argument("--requests", type=int, help="requests per c=16 run (default 3000)")
    ap.add_argument("--requests-c1", type=int, help="requests per c=1 run (default 500)")
    ap.add_argument("--soak-requests", type=int, help="soak requests (default 20000)")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds at most per measured run (60)")
    ap.add_argument(
        "--seconds",
        type=float,
        help="every measured load run lasts this many seconds instead of a request count (quick checks)",
    )
    ap.add_argument(
        "--modes",
        type=parse_modes,
        default=MODES,
        help="clients for core, peers and scale: keepalive,newconn (default both)",
    )
    ap.add_argument("--agent-requests", type=int, help="requests per agent run (default 300)")
    ap.add_argument("--memory-streams", type=int, help="concurrent streams for memory (default 200)")
    ap.add_argument("--stream-mb", type=int, help="size of the big SSE stream for rss (default 200)")
    ap.add_argument("--out", type=Path, default=HERE / "out", help="where JSON and Markdown go (bench/out)")
    ap.add_argument("--litellm-spec", default=litellm_peer.DEFAULT_SPEC, help="pip spec for the LiteLLM peer")
    ap.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out of peers")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install nginx")
    ap.add_argument(
        "--keep-logs", action="store_true", help="keep the run directory with every process's output"
    )
    args = ap.parse_args(argv)
    args.argv = argv
    args.stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    plan = plan_for(args)
    if {"peers", "scale"} & set(parts):
        ensure_apt("nginx", nginx_peer.find_nginx, not args.no_install)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # Also when started in the background (where SIGINT may be inherited as ignored): Ctrl-C stops cleanly.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = Path(tempfile.mkdtemp(prefix="cfgw-bench-"))
    services = Services(workdir)
    bench = Bench(args, plan, services)
    info = machine_info()
    bench.results.update(machine=info, plan=plan.__dict__, argv=argv)
    bench.emit(header_markdown(info, args, plan))
    busy = os.getloadavg()[0]
    if busy > 0.5 * (os.cpu_count() or 1):
        bench.emit(
            f"- **the machine was busy when this run started (1-minute load {busy:.1f} on "
            f"{os.cpu_count()} cores): expect noisy numbers; re-run on a quiet machine for final figures**"
        )
    started = time.monotonic()
    complete = False
    failed_parts = []
    try:
        for name in PARTS:
            if name not in parts:
                continue
            try:
                getattr(bench, name)()
            except KeyboardInterrupt:
                raise
            except Exception as e:
                failed_parts.append(name)
                bench.emit(f"\n**{name} failed**: {type(e).__name__}: {e}")
                traceback.print_exc()
            finally:
                services.stop_all()
            write_outputs(bench, args, started, complete=False)
        complete = not failed_parts
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything", file=sys.stderr)
    finally:
        services.stop_all()
        services.reap_children()
        bench.emit(f"\ntotal time: {time.monotonic() - started:.0f} s; load average at end: {loadavg()}")
        js, md = write_outputs(bench, args, started, complete)
        print(f"\nbench: results in {md} and {js}", flush=True)
        if args.keep_logs or failed_parts:
            print(f"bench: process logs kept in {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
