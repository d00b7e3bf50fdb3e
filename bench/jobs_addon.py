"""A reference for the benchmarks: cf-gateway's per-request jobs alone, done the least costly way.

Why: the floor (bench/floor_addon.py) says what mitmproxy charges for five hooks doing
nothing; this says what any addon pays to do the work cf-gateway exists for, through the
same hooks, with none of its checks. Per request it re-aims the flow at the upstream and
rewrites the path (``/v1/...`` to ``JOBS_PREFIX/...``), adds a gateway token, masks the
client's Authorization on the flow, reads the usage (``json.loads`` of a buffered answer;
a streamed one is recorded chunk by chunk and its last usage event parsed), counts a
request and a duration bucket by model and status, and writes a flow comment. With
``JOBS_LOG=1`` it also logs one line per flow, as the floor does with ``FLOOR_LOG=1``.

What it leaves out is what makes cf-gateway safe and exact: no request checks, no access
keys, no routing table, no fail-closed admission, no secret filter, no replay stash, no
compressed bodies, no error shapes. So it is a lower bound, not an alternative: a goal
that this script misses cannot be met by an addon that does these jobs.

    mitmdump -q --mode reverse:http://127.0.0.1:1 --set connection_strategy=lazy \\
        -s bench/jobs_addon.py   # env: JOBS_UPSTREAM_PORT, JOBS_PREFIX
"""

import json
import logging
import os
import re
from bisect import bisect_left

from mitmproxy import http
from mitmproxy.log import LegacyLogEvents
from mitmproxy.proxy.mode_specs import ReverseMode

PORT = int(os.environ.get("JOBS_UPSTREAM_PORT", "0"))
PREFIX = os.environ.get("JOBS_PREFIX", "").encode()
TOKEN = b"Bearer jobs-reference-token"
LINES = "jobs.requests"
log = logging.getLogger(LINES)
LOG = os.environ.get("JOBS_LOG") == "1"
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
USAGE_EVENT = re.compile(rb'data: (\{[^\n]*"usage":\{[^\n]*)\n')
requests: dict = {}
durations: dict = {}


def load(loader) -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LegacyLogEvents):
            handler.addFilter(lambda record: record.name != LINES)


def requestheaders(flow: http.HTTPFlow) -> None:
    if isinstance(flow.client_conn.proxy_mode, ReverseMode):
        flow.metadata["jobs"] = []


def request(flow: http.HTTPFlow) -> None:
    if "jobs" not in flow.metadata:
        return
    d = flow.request.data
    d.headers.fields = (*d.headers.fields, (b"cf-aig-authorization", TOKEN))
    d.path = PREFIX + d.path[3:]
    d.scheme, d.host, d.port = b"http", "127.0.0.1", PORT


def responseheaders(flow: http.HTTPFlow) -> None:
    h = flow.request.data.headers
    h.fields = tuple(
        (n, b"Bearer ********") if n.lower() == b"authorization" else (n, v) for n, v in h.fields
    )
    chunks = flow.metadata.get("jobs")
    resp = flow.response
    if chunks is not None and resp and b"event-stream" in resp.headers.get("content-type", "").encode():
        resp.stream = lambda chunk: chunks.append(chunk) or chunk


def response(flow: http.HTTPFlow) -> None:
    chunks, resp = flow.metadata.get("jobs"), flow.response
    if chunks is None or resp is None:
        return
    try:
        if chunks:
            resp.raw_content = b"".join(chunks)
            found = USAGE_EVENT.findall(resp.raw_content)
            obj = json.loads(found[-1]) if found else {}
        else:
            obj = json.loads(resp.data.content or b"{}")
        model, usage = obj.get("model"), obj.get("usage") or {}
        total = usage.get("total_tokens")
    except ValueError:
        model = total = None
    key = (model, resp.data.status_code)
    requests[key] = requests.get(key, 0) + 1
    seconds = (resp.data.timestamp_end or 0) - flow.request.data.timestamp_start
    buckets = durations.get(model)
    if buckets is None:
        buckets = durations[model] = [0] * (len(BOUNDS) + 1)
    buckets[bisect_left(BOUNDS, seconds)] += 1
    flow.comment = f"{model} · {total} tok · {round(seconds * 1000)} ms"
    if LOG:
        log.info(f"{flow.request.method} {flow.request.path} {resp.status_code} model={model} tokens={total}")


def error(flow: http.HTTPFlow) -> None:
    pass
