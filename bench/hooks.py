#!/usr/bin/env python3
"""The addon's hooks alone, in-process: µs per small chat request, split by hook.

Why: a load test says what the whole proxy costs, within a few percent of noise on a shared
machine; this says what the addon's own Python costs, to a microsecond, and where. It drives
the hooks with mitmproxy.test.taddons as mitmproxy calls them (requestheaders, request,
responseheaders, response) on fresh flows shaped like the benchmark's small requests, with
mitmdump's setup (no flow view, so no replay stash) unless ``--view``. Flows are built outside
the timed part; each one is dropped after its hooks, as mitmdump drops it.

    .venv/bin/python bench/hooks.py                  # ./run.sh defaults (the summary line on)
    .venv/bin/python bench/hooks.py --line off       # cf_log_requests=off
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "addons")]

import fastupstream  # noqa: E402
from mitmproxy import http  # noqa: E402

import bench  # noqa: E402
from tests.flows import GOOD, loaded, reverse_flow  # noqa: E402

HEADERS = [
    ("content-type", "application/json"),
    ("authorization", "Bearer sk-bench-client"),
    ("user-agent", "b"),
]
HOOKS = ("requestheaders", "request", "responseheaders", "response")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--line", choices=("on", "off"), default="on", help="the summary line (on)")
    ap.add_argument("--view", action="store_true", help="a flow view, as mitmweb has (the replay stash on)")
    ap.add_argument("--requests", type=int, default=20_000)
    args = ap.parse_args()
    os.chdir(tempfile.mkdtemp(prefix="cfgw-hooks-"))  # no .env from the checkout
    options = {**GOOD, "cf_base_url": "http://127.0.0.1:9", "cf_log_requests": args.line}
    spent = dict.fromkeys(HOOKS, 0.0)
    warm = min(1000, args.requests // 10)
    with loaded(view=args.view) as (addon, tctx):
        tctx.configure(addon, **options)
        # The line goes to a null device: what is timed is the addon's work and stdlib logging's.
        logging.getLogger().handlers[:] = [logging.StreamHandler(open(os.devnull, "w"))]
        clock = time.perf_counter
        for i in range(args.requests):
            flow = reverse_flow(headers=HEADERS, content=bench.CHAT_BODY)
            flow.request.timestamp_end = flow.request.timestamp_start + 0.001
            answer = http.Response(
                b"HTTP/1.1",
                200,
                b"OK",
                http.Headers(content_type="application/json"),
                fastupstream.COMPLETION,
                None,
                flow.request.timestamp_start + 0.002,
                flow.request.timestamp_start + 0.003,
            )
            if i == warm:
                spent = dict.fromkeys(HOOKS, 0.0)
            t0 = clock()
            addon.requestheaders(flow)
            t1 = clock()
            addon.request(flow)
            t2 = clock()
            flow.response = answer
            t3 = clock()
            addon.responseheaders(flow)
            t4 = clock()
            addon.response(flow)
            t5 = clock()
            for hook, took in zip(HOOKS, (t1 - t0, t2 - t1, t4 - t3, t5 - t4), strict=True):
                spent[hook] += took
    n = args.requests - warm
    per = {hook: spent[hook] / n * 1e6 for hook in HOOKS}
    setup = f"line {args.line}" + (", view" if args.view else "")
    split = ", ".join(f"{hook} {us:.1f}" for hook, us in per.items())
    print(f"{setup}: {sum(per.values()):.1f} µs per request in the hooks ({split}; {n} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
