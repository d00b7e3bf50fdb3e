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
    .venv/bin/python bench/hooks.py --agent 200000   # the agent part's requests, its answer streamed

With ``--agent BYTES`` each request is the agent part's chat body of that size and its answer
the bench upstream's 300-event stream, handed chunk by chunk (one event a chunk) to the stream
callable the addon sets, between ``responseheaders`` and ``response``, as mitmproxy does.
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

import agentbody  # noqa: E402
import fastupstream  # noqa: E402
from mitmproxy import http  # noqa: E402

import bench  # noqa: E402
from tests.flows import GOOD, loaded, reverse_flow  # noqa: E402

HEADERS = [
    ("content-type", "application/json"),
    ("authorization", "Bearer sk-bench-client"),
    ("user-agent", "b"),
]
HOOKS = ("requestheaders", "request", "responseheaders", "stream chunks", "response")
EVENTS = [
    *(fastupstream.chunk_event(fastupstream.WORDS[i % len(fastupstream.WORDS)]) for i in range(300)),
    fastupstream.STOP_EVENT,
    fastupstream.USAGE_EVENT,
    fastupstream.DONE_EVENT,
    b"",  # mitmproxy's end of the stream
]


def answer_to(flow: http.HTTPFlow, streamed: bool) -> http.Response:
    """The bench upstream's answer: a small completion, or the head of its event stream."""
    start = flow.request.timestamp_start
    kind, body = ("text/event-stream", b"") if streamed else ("application/json", fastupstream.COMPLETION)
    end = None if streamed else start + 0.003  # a stream ends after its chunks
    return http.Response(
        b"HTTP/1.1", 200, b"OK", http.Headers(content_type=kind), body, None, start + 0.002, end
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--line", choices=("on", "off"), default="on", help="the summary line (on)")
    ap.add_argument("--view", action="store_true", help="a flow view, as mitmweb has (the replay stash on)")
    ap.add_argument(
        "--agent", type=int, default=0, metavar="BYTES", help="agent-sized bodies, streamed answers"
    )
    ap.add_argument("--requests", type=int, default=None, help="20,000 (2,000 with --agent)")
    args = ap.parse_args()
    requests = args.requests or (2_000 if args.agent else 20_000)
    body = agentbody.chat_request(args.agent) if args.agent else bench.CHAT_BODY
    os.chdir(tempfile.mkdtemp(prefix="cfgw-hooks-"))  # no .env from the checkout
    options = {**GOOD, "cf_base_url": "http://127.0.0.1:9", "cf_log_requests": args.line}
    spent = dict.fromkeys(HOOKS, 0.0)
    warm = min(1000, requests // 10)
    with loaded(view=args.view) as (addon, tctx):
        tctx.configure(addon, **options)
        # The line goes to a null device: what is timed is the addon's work and stdlib logging's.
        logging.getLogger().handlers[:] = [logging.StreamHandler(open(os.devnull, "w"))]
        clock = time.perf_counter
        for i in range(requests):
            flow = reverse_flow(headers=HEADERS, content=body)
            flow.request.timestamp_end = flow.request.timestamp_start + 0.001
            answer = answer_to(flow, streamed=bool(args.agent))
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
            if args.agent:
                relay = answer.stream
                assert callable(relay), "the addon did not take the event stream"
                for chunk in EVENTS:
                    relay(chunk)
                answer.timestamp_end = flow.request.timestamp_start + 0.003
            t5 = clock()
            addon.response(flow)
            t6 = clock()
            for hook, took in zip(HOOKS, (t1 - t0, t2 - t1, t4 - t3, t5 - t4, t6 - t5), strict=True):
                spent[hook] += took
    n = requests - warm
    per = {hook: spent[hook] / n * 1e6 for hook in HOOKS if args.agent or hook != "stream chunks"}
    setup = (
        f"line {args.line}"
        + (", view" if args.view else "")
        + (f", agent {args.agent}" if args.agent else "")
    )
    split = ", ".join(f"{hook} {us:.1f}" for hook, us in per.items())
    print(f"{setup}: {sum(per.values()):.1f} µs per request in the hooks ({split}; {n} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
