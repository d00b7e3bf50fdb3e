"""A second script for a running cf-gateway: the wall time spent inside each of its hooks.

Why: a profiler slows every call, and the in-process timing (``bench/hooks.py``) runs the
hooks with warm caches, back to back. This clocks them where they really run: in a
mitmdump under load, between mitmproxy's own work. Loaded after ``cf_gateway.py``
(``profile_addon.py --profiler clock`` does that), it wraps the addon's hooks and its
deferred summary-line writer once everything is running, and at exit writes the totals,
in nanoseconds, to the JSON file named by ``CFGW_HOOK_CLOCK``.
"""

from __future__ import annotations

import json
import os
import time

from mitmproxy import ctx

TIMED = ("requestheaders", "request", "responseheaders", "response", "error", "write_lines")
totals = dict.fromkeys(TIMED, 0)
calls = dict.fromkeys(TIMED, 0)


def _clocked(name, fn, clock=time.perf_counter_ns):
    def clocked(*args):
        start = clock()
        try:
            return fn(*args)
        finally:
            totals[name] += clock() - start
            calls[name] += 1

    return clocked


def running() -> None:
    gateway = ctx.master.addons.get("cfgateway")
    if gateway is None:
        raise RuntimeError("hook_clock: cf-gateway is not loaded")
    for name in TIMED:
        setattr(gateway, name, _clocked(name, getattr(gateway, name)))  # mitmproxy looks hooks up per call


def done() -> None:
    with open(os.environ["CFGW_HOOK_CLOCK"], "w") as out:
        json.dump({"totals_ns": totals, "calls": calls}, out)
