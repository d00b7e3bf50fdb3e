#!/usr/bin/env python3
"""cf-gateway benchmarks: one script, one run, everything side by side (see bench/README.md).

    ./run.sh bench [--quick] [--only core,stream,rss,peers,scale,soak] [--rounds N] ...

Parts: core (small JSON POSTs: latency at c=1, throughput at c=16, keep-alive and
a new connection per request; direct, bare mitmdump, cf-gateway variants),
stream (SSE time to first/last event), rss (peak RSS relaying one big SSE
stream), peers (nginx and LiteLLM doing the same job), scale (one proxy vs two
behind nginx), soak (RSS over 20,000 requests). Everything listens on 127.0.0.1;
every run is bounded in requests and time; everything started is stopped at the
end, on errors and on Ctrl-C.
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

import litellm_peer  # noqa: E402
import loadgen  # noqa: E402
import nginx as nginx_peer  # noqa: E402

from cfgw import config as cf_config  # noqa: E402
from tests.harness import ACCOUNT_ID, GATEWAY_ID, MITMDUMP, Proxy, free_port, start_proxy, wait_for_port  # noqa: E402

PARTS = ("core", "stream", "rss", "peers", "scale", "soak")
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
GOAL_LOG_ON = 0.85
GOAL_LOG_OFF = 0.97
GOAL_METRICS_COST = 0.05
CLK_TCK = os.sysconf("SC_CLK_TCK")
STREAM_ALL = ["--set", "stream_large_bodies=1"]  # bare mitmdump streaming every body: the relay's floor


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

    def proxy(self, label: str, upstream: Endpoint, options: dict[str, str] | None = None) -> Endpoint:
        """mitmdump + cf-gateway (mitmproxy defaults otherwise; its output goes to a file)."""
        p = start_proxy(f"http://127.0.0.1:{upstream.port}", options=options, workdir=self.dir("cfgw"))
        self.add(label, p.proc.pid, p.stop)
        return Endpoint(label, p.port, CLIENT_PATH, [p.proc.pid], proxy=p)

    def bare_mitmdump(self, label: str, upstream: Endpoint, extra_args: list[str] | None = None) -> Endpoint:
        """mitmdump in reverse mode without the addon: forwards as is, buffers whole bodies."""
        p = start_proxy(
            f"http://127.0.0.1:{upstream.port}", addon=False, workdir=self.dir("bare"), extra_args=extra_args
        )
        self.add(label, p.proc.pid, p.stop)
        return Endpoint(label, p.port, UPSTREAM_PATH, [p.proc.pid], proxy=p)

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


def point(ep: Endpoint, keepalive: bool, concurrency: int, total: int, plan: Plan) -> dict:
    """One measured run: loadgen summary + CPU the serving processes used per request."""
    req = ep.request(close=not keepalive)
    cpu0 = cpu_seconds(ep.pids)
    r = loadgen.load(ep.port, req, total, concurrency, keepalive, time_limit=plan.time_limit)
    cpu = cpu_seconds(ep.pids) - cpu0
    out = r.summary()
    out["cpu_us_per_req"] = round(cpu / r.ok * 1e6, 1) if r.ok else None
    return out


def measure_rounds(targets: list[Endpoint], plan: Plan, modes=(True, False), tag: str = "") -> dict:
    """c=1 latency and c=16 throughput for every target, rounds interleaved; raw runs per key."""
    raw: dict[str, dict[str, dict[str, list[dict]]]] = {}
    for rnd in range(plan.rounds):
        order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]  # rotate: no fixed order bias
        for keepalive in modes:
            mode = "keepalive" if keepalive else "newconn"
            for ep in order:
                slot = raw.setdefault(ep.label, {}).setdefault(mode, {"c1": [], "c16": []})
                if plan.warmup:
                    point(ep, keepalive, 16, plan.warmup, plan)
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


def paired(raw: dict, a: str, b: str, mode: str, key: str) -> list[float]:
    """a/b of one c=16 number, round by round (both ran minutes apart under the same conditions)."""
    runs_a, runs_b = raw[a][mode]["c16"], raw[b][mode]["c16"]
    return [ra[key] / rb[key] for ra, rb in zip(runs_a, runs_b, strict=False) if ra.get(key) and rb.get(key)]


def _spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    if len(values) < 2:
        return ""
    return f"{min(values) * scale:.{digits}f} – {max(values) * scale:.{digits}f}"


def goal_rows(raw: dict, bare: str, names: list[str]) -> list[list[str]]:
    """Throughput ratios to bare mitmdump (log on / off) and the metrics+accounting cost at equal
    logging: the ratio is taken within each round, the table shows the median and the range."""
    rows = []
    for mode in ("keepalive", "newconn"):
        for label, goal in ((names[0], GOAL_LOG_ON), (names[1], GOAL_LOG_OFF)):
            if label not in raw:
                continue
            by_rps = paired(raw, label, bare, mode, "rps")
            by_cpu = paired(raw, bare, label, mode, "cpu_us_per_req")
            m = statistics.median(by_rps) if by_rps else None
            verdict = "met" if m is not None and m >= goal else "missed"
            cpu = statistics.median(by_cpu) if by_cpu else None
            rows.append(
                [mode, f"{label} ÷ bare", f">= {goal}", _f(m, 3), _spread(by_rps), _f(cpu, 3), verdict]
            )
        for on, off in ((names[0], names[2]), (names[1], names[3])):
            if on not in raw or off not in raw:
                continue
            cost_rps = [1 - r for r in paired(raw, on, off, mode, "rps")]
            cost_cpu = [r - 1 for r in paired(raw, on, off, mode, "cpu_us_per_req")]
            m = statistics.median(cost_rps) if cost_rps else None
            cpu = statistics.median(cost_cpu) if cost_cpu else None
            logging = "log on" if "log on" in on else "log off"
            rows.append(
                [
                    mode,
                    f"metrics+accounting cost, {logging} (metrics on vs off)",
                    f"< {GOAL_METRICS_COST:.0%}",
                    _f(m * 100 if m is not None else None, 1) + " %",
                    _spread(cost_rps, 100, 1) + (" %" if len(cost_rps) > 1 else ""),
                    _f(cpu * 100 if cpu is not None else None, 1) + " %",
                    "met" if m is not None and m < GOAL_METRICS_COST else "missed",
                ]
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
        self.options = {s.option for s in cf_config.SETTINGS}

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
        bare = self.sv.bare_mitmdump("bare mitmdump (reverse, no addon)", up)
        variants = [
            ("cf-gateway log on, metrics on (default)", {"cf_log_requests": "on", "cf_metrics": "on"}),
            ("cf-gateway log off, metrics on", {"cf_log_requests": "off", "cf_metrics": "on"}),
            ("cf-gateway log on, metrics off", {"cf_log_requests": "on", "cf_metrics": "off"}),
            ("cf-gateway log off, metrics off", {"cf_log_requests": "off", "cf_metrics": "off"}),
        ]
        targets = [up, bare]
        for label, opts in variants:
            if set(opts) <= self.options:
                targets.append(self.sv.proxy(label, up, opts))
        raw = measure_rounds(targets, self.plan)
        summary = summarise(raw)
        labels = [t.label for t in targets]
        self.results["parts"]["core"] = {"summary": summary, "raw": raw}
        for mode in ("keepalive", "newconn"):
            self.emit(f"\n### core, {MODE_TITLE[mode]} (median of {self.plan.rounds} round(s))\n")
            self.emit(load_table(summary, labels, mode, up.label, bare.label))
        self.emit(
            "\n### core goals (c=16; each ratio is taken within a round, then the median over rounds; "
            "'by CPU/req' is the same comparison from the proxy's own CPU time per request, "
            "which other load on the machine disturbs less)\n"
        )
        headers = [
            "clients",
            "what",
            "goal",
            "by req/s",
            "range over rounds",
            "by CPU/req",
            "verdict (req/s)",
        ]
        self.emit(table(headers, goal_rows(raw, bare.label, [v[0] for v in variants])))
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
            self.sv.bare_mitmdump("buffering (bare mitmdump, like the original proxy)", gw),
            self.sv.bare_mitmdump(
                "bare mitmdump, stream_large_bodies=1 (streams, keeps nothing)", gw, STREAM_ALL
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
            ("buffering (bare mitmdump)", lambda: self.sv.bare_mitmdump("bare-rss", gw)),
            (
                "bare mitmdump, stream_large_bodies=1",
                lambda: self.sv.bare_mitmdump("bare-stream-rss", gw, STREAM_ALL),
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
        bare = self.sv.bare_mitmdump("bare mitmdump (reverse, no addon)", up)
        targets = [up, bare, self.sv.proxy("cf-gateway (defaults: log on, metrics on)", up)]
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
        for mode in ("keepalive", "newconn"):
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
        for mode in ("keepalive", "newconn"):
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
            self.sv.proxy("cf-gateway (defaults: log on, metrics on)", up),
            self.sv.bare_mitmdump("bare mitmdump (reverse, no addon)", up),
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
    )


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
        f"- plan: {plan.rounds} round(s); c=16: {plan.n_c16} requests, c=1: {plan.n_c1} requests, "
        f"warm-up {plan.warmup} per run; soak {plan.soak}; big stream {plan.big_stream_mb} MB",
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
