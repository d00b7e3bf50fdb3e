#!/usr/bin/env python3
"""Where the addon's time goes: a mitmdump running cf-gateway as ./run.sh does, profiled under
the benchmark's small-request or agent-sized load; prints the addon's functions (and what
they call outside the addon, such as logging) by time per request.

Why: the benchmark says how much the addon costs, not where. Two profilers, because each
is wrong in its own way:

- ``--profiler cprofile`` (default): deterministic, counts every call, so calls per request
  are exact; but it slows every Python call (mitmproxy's too, several times over), so its
  µs are inflated: read shares and call counts.
- ``--profiler py-spy`` (``pip install py-spy``): samples the running process from outside
  and barely slows it; each function's share of the samples is turned into µs per request
  with the process's measured CPU time per request (/proc), so its µs are close to real.
- ``--profiler clock``: no profiler; ``hook_clock.py`` clocks the wall time inside each of
  the addon's hooks, its deferred summary-line writer and its stream recorder (per chunk) in
  the running mitmdump, next to the process's CPU per request: how much of it the addon's own
  code takes under load, and how much is mitmproxy's work.

    .venv/bin/python bench/profile_addon.py --workload small --seconds 10
    .venv/bin/python bench/profile_addon.py --workload agent --size 200000 --profiler py-spy
    .venv/bin/python bench/profile_addon.py --profiler clock -- -q --set cf_log_requests=off

Internally, ``--serve PROFILE -- <mitmdump args>`` is the cProfile child: it runs mitmdump
with cProfile on and writes the profile when mitmdump exits (on SIGTERM).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "addons")]

ADDONS_DIR = str(ROOT / "addons") + "/"
HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")
HOOK_CLOCK = HERE / "hook_clock.py"


def serve(profile_path: str, mitmdump_args: list[str]) -> int:
    """The child: mitmdump with cProfile on from start to exit."""
    import cProfile

    from mitmproxy.tools.main import mitmdump

    sys.argv = ["mitmdump", *mitmdump_args]
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        mitmdump()
    except SystemExit:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(profile_path)
    return 0


def report(profile_path: Path, top: int, cpu_us_per_request: float, min_calls: float = 0.05) -> str:
    """The addon's functions by cumulative time per request (requests counted by the
    requestheaders hook's calls, warm-up included), and each hook's total. Functions called
    less than min_calls times per request (loading, configuring) are left out."""
    stats = pstats.Stats(str(profile_path)).stats  # type: ignore[attr-defined]
    addon = {k: v for k, v in stats.items() if k[0].startswith(ADDONS_DIR)}
    n = next(
        (v[1] for k, v in addon.items() if k[0].endswith("cfgw/gateway.py") and k[2] == "requestheaders"),
        0,
    )
    if not n:
        return "no request reached the addon's requestheaders hook"
    total_tt = sum(v[2] for v in stats.values())

    def name(key: tuple[str, int, str]) -> str:
        return f"{key[0][len(ADDONS_DIR) :]}:{key[1]} {key[2]}"

    lines = [
        f"requests through the addon: {n} (warm-up included)",
        f"process CPU under the profiler (measured run): {cpu_us_per_request:,.0f} µs/request; "
        f"profiled Python time: {total_tt / n * 1e6:,.0f} µs/request",
        "",
        "| hook (cfgw/gateway.py) | calls/req | cumulative µs/req | share of profiled time |",
        "|---|---|---|---|",
    ]
    for hook in HOOKS:
        for k, v in addon.items():
            if k[0].endswith("cfgw/gateway.py") and k[2] == hook:
                lines.append(f"| {hook} | {v[1] / n:.2f} | {v[3] / n * 1e6:,.1f} | {v[3] / total_tt:.1%} |")
    lines += [
        "",
        f"top {top} addon functions by cumulative time",
        "",
        "| function | calls/req | cumulative µs/req | own µs/req |",
        "|---|---|---|---|",
    ]
    per_request = [kv for kv in addon.items() if kv[1][1] >= min_calls * n]
    for k, v in sorted(per_request, key=lambda kv: kv[1][3], reverse=True)[:top]:
        lines.append(f"| {name(k)} | {v[1] / n:.2f} | {v[3] / n * 1e6:,.1f} | {v[2] / n * 1e6:,.1f} |")
    # What addon code calls outside the addon (logging, mitmproxy's headers...), from the callers' side.
    outside: dict[tuple[str, int, str], list[float]] = {}
    for k, v in stats.items():
        if k[0].startswith(ADDONS_DIR):
            continue
        for caller, call in v[4].items():
            if caller[0].startswith(ADDONS_DIR) and isinstance(call, tuple):
                acc = outside.setdefault(k, [0, 0.0])
                acc[0] += call[1]
                acc[1] += call[3]
    lines += [
        "",
        f"top {top} functions outside the addon called by addon code (cumulative, those calls only)",
        "",
        "| function | calls/req | cumulative µs/req |",
        "|---|---|---|",
    ]
    frequent = [kv for kv in outside.items() if kv[1][0] >= min_calls * n]
    for k, (calls, ct) in sorted(frequent, key=lambda kv: kv[1][1], reverse=True)[:top]:
        lines.append(f"| {Path(k[0]).name}:{k[1]} {k[2]} | {calls / n:.2f} | {ct / n * 1e6:,.1f} |")
    return "\n".join(lines)


def sampled_report(raw_path: Path, top: int, cpu_us_per_request: float) -> str:
    """py-spy's raw stacks ('frame;frame;... count', frames 'function (file)', root first): each
    function's inclusive and own share of the active samples, as µs of the measured CPU per request."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    called: Counter[str] = Counter()  # first frame outside the addon below an addon frame
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
        seen = set()
        for above, f in itertools.pairwise(frames):
            if ADDONS_DIR in above and ADDONS_DIR not in f and f not in seen:
                seen.add(f)
                called[f] += count
    if not total:
        return "no samples (is the process Python, and may py-spy attach to it?)"
    us = cpu_us_per_request / total

    def short(frame: str) -> str:
        return frame.replace(ADDONS_DIR, "")

    lines = [
        f"{total} active samples; measured CPU {cpu_us_per_request:,.0f} µs/request spread over them",
        "",
        "| hook (cfgw/gateway.py) | µs/req (inclusive) | share |",
        "|---|---|---|",
    ]
    hooks_total = 0
    for hook in HOOKS:
        for f, c in inclusive.items():
            if f.startswith(f"CfGateway.{hook} (") and f.endswith("cfgw/gateway.py)"):
                hooks_total += c
                lines.append(f"| {hook} | {c * us:,.1f} | {c / total:.1%} |")
    lines.append(f"| all hooks | {hooks_total * us:,.1f} | {hooks_total / total:.1%} |")
    addon = [(f, c) for f, c in inclusive.items() if ADDONS_DIR in f]
    lines += [
        "",
        f"top {top} addon functions",
        "",
        "| function | µs/req (inclusive) | own µs/req |",
        "|---|---|---|",
    ]
    for f, c in sorted(addon, key=lambda fc: fc[1], reverse=True)[:top]:
        lines.append(f"| {short(f)} | {c * us:,.1f} | {own[f] * us:,.1f} |")
    lines += [
        "",
        f"top {top} functions outside the addon called by addon code",
        "",
        "| function | µs/req |",
        "|---|---|",
    ]
    for f, c in called.most_common(top):
        lines.append(f"| {short(f)} | {c * us:,.1f} |")
    return "\n".join(lines)


def clock_report(clock_path: Path, cpu_us_per_request: float) -> str:
    """hook_clock.py's totals as µs per request (requests counted by requestheaders' calls, warm-up
    included), next to the process's CPU per request in the measured run."""
    data = json.loads(clock_path.read_text())
    totals, calls = data["totals_ns"], data["calls"]
    n = calls.get("requestheaders", 0)
    if not n:
        return "no request reached the addon's requestheaders hook"
    lines = [
        f"requests through the addon: {n} (warm-up included)",
        "",
        "| cf-gateway (cfgw/gateway.py) | calls/req | µs/req inside it (wall) |",
        "|---|---|---|",
    ]
    inside = 0.0
    for name, ns in totals.items():
        if calls[name]:
            inside += ns / n / 1e3
            lines.append(f"| {name} | {calls[name] / n:.2f} | {ns / n / 1e3:,.1f} |")
    lines += [
        f"| all of it | | {inside:,.1f} |",
        "",
        f"process CPU in the measured run: {cpu_us_per_request:,.0f} µs/request, of which the addon's "
        f"code ran {inside:,.0f} µs ({inside / cpu_us_per_request:.1%}); the rest is mitmproxy's own work "
        "(compare with bare mitmdump's CPU per request in ./run.sh bench). Each clocked call adds about "
        "0.2 µs of its own.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        return serve(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])

    import agentbody
    import loadgen

    import bench
    from tests.harness import (
        ACCOUNT_ID,
        ADDON,
        GATEWAY_ID,
        MITMDUMP,
        UNSERVABLE,
        clean_env,
        free_port,
        wait_for_port,
    )

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=("small", "agent"), default="small")
    ap.add_argument("--profiler", choices=("cprofile", "py-spy", "clock"), default="cprofile")
    ap.add_argument("--size", type=int, default=200_000, help="agent request body bytes (200000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the measured run (10)")
    ap.add_argument("--concurrency", type=int, help="clients (small: 16, agent: 8)")
    ap.add_argument("--events", type=int, default=300, help="agent answer events (300)")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second (200)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument(
        "--out", type=Path, help="where the profile goes (default bench/out/profile-<workload>-<profiler>.*)"
    )
    ap.add_argument("args", nargs="*", help="extra mitmdump arguments, after --, e.g. -- -q")
    args = ap.parse_args(argv)
    agent = args.workload == "agent"
    c = args.concurrency or (8 if agent else 16)
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if args.profiler == "py-spy" and not py_spy:
        ap.error("py-spy is not installed (.venv/bin/pip install py-spy)")
    workdir = Path(tempfile.mkdtemp(prefix="cfgw-profile-"))
    services = bench.Services(workdir)
    try:
        up = (
            services.fast_upstream(stream_events=args.events, stream_delay_ms=1)
            if agent
            else services.fast_upstream()
        )
        port = free_port()
        suffix = {"cprofile": ".prof", "py-spy": ".txt", "clock": ".json"}[args.profiler]
        prof = (args.out or HERE / "out" / f"profile-{args.workload}-{args.profiler}{suffix}").resolve()
        prof.parent.mkdir(parents=True, exist_ok=True)
        d = services.dir("profiled-cfgw")
        mitmdump_args = [
            "--set",
            f"confdir={d / 'conf'}",
            "--mode",
            f"reverse:{UNSERVABLE}@127.0.0.1:{port}",
            "--set",
            "connection_strategy=lazy",
            "-s",
            str(ADDON),
            "--set",
            f"cf_account_id={ACCOUNT_ID}",
            "--set",
            f"cf_gateway_id={GATEWAY_ID}",
            "--set",
            f"cf_base_url=http://127.0.0.1:{up.port}",
            *bench.RUNSH_DEFAULTS,
            *args.args,
        ]
        env = clean_env()
        if args.profiler == "cprofile":
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(prof), "--", *mitmdump_args]
        elif args.profiler == "clock":
            cmd = [str(MITMDUMP), *mitmdump_args, "-s", str(HOOK_CLOCK)]
            env["CFGW_HOOK_CLOCK"] = str(prof)
        else:
            cmd = [str(MITMDUMP), *mitmdump_args]
        with open(d / "output.log", "wb") as out:
            proc = subprocess.Popen(
                cmd, cwd=d, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        services.add("profiled-cfgw", proc.pid, lambda: bench._terminate(proc, timeout=60))
        if not wait_for_port(port, proc, timeout=30):
            print((d / "output.log").read_text(errors="replace")[-2000:], file=sys.stderr)
            return 1
        ep = bench.Endpoint("profiled cf-gateway", port, bench.CLIENT_PATH, [proc.pid])
        body = agentbody.chat_request(args.size) if agent else bench.CHAT_BODY
        request = ep.request(body)
        loadgen.load(port, request, 4 * c, c, True, time_limit=60, request_timeout=120)  # warm-up
        spy = None
        if args.profiler == "py-spy":
            assert py_spy is not None
            spy_cmd = [py_spy, "record", "--pid", str(proc.pid), "--format", "raw", "--output", str(prof)]
            spy_cmd += ["--rate", str(args.rate), "--duration", str(math.ceil(args.seconds) + 1)]
            spy_cmd += ["--nolineno", "--full-filenames", "--nonblocking"]
            spy = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            services.add("py-spy", spy.pid, lambda: bench._terminate(spy))
            time.sleep(0.5)  # attached before the load starts; idle samples are not recorded
        cpu0 = bench.cpu_seconds(ep.pids)
        r = loadgen.load(port, request, 1 << 30, c, True, time_limit=args.seconds, request_timeout=120)
        cpu = bench.cpu_seconds(ep.pids) - cpu0
        cpu_us = cpu / max(r.ok, 1) * 1e6
        print(
            f"{args.workload} load: {r.ok} answered, {r.failed} failed, {r.rps:.1f} req/s at c={c}, "
            f"proxy CPU {cpu_us:,.0f} µs/request (with {args.profiler} attached); body {len(body)} bytes\n",
            flush=True,
        )
        if spy is not None:
            _, err = spy.communicate(timeout=120)
            if spy.returncode != 0:
                print(f"py-spy failed: {err.strip()[-500:]}", file=sys.stderr)
                return 1
            print(sampled_report(prof, args.top, cpu_us))
        else:
            services.stop(proc.pid)  # mitmdump exits on SIGTERM; the cProfile child or hook_clock.py writes
            print(clock_report(prof, cpu_us) if args.profiler == "clock" else report(prof, args.top, cpu_us))
        print(f"\nprofile: {prof}")
    finally:
        services.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
