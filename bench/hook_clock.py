"""A second script for a running cf-gateway: the wall time spent inside each of its hooks.

Why: a profiler slows every call, and the in-process timing (``bench/hooks.py``) runs the
hooks with warm caches, back to back. This clocks them where they really run: in a
mitmdump under load, between mitmproxy's own work. Loaded after ``cf_gateway.py``
(``profile_addon.py --profiler clock`` does that), it wraps the addon's hooks, its deferred
summary-line writer and the stream recorder (called per chunk) once everything is running, and
at exit writes the totals, in nanoseconds, to the JSON file named by ``CFGW_HOOK_CLOCK``.
"""

from __future__ import annotations

import json
import os
import sys
import time

from mitmproxy import ctx

TIMED = ("requestheaders", "request", "responseheaders", "response", "error", "write_lines")
CHUNKS = "stream chunks"  # Recorder.relay: once per chunk of a relayed event stream
totals = dict.fromkeys((*TIMED, CHUNKS), 0)
calls = dict.fromkeys((*TIMED, CHUNKS), 0)


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
    recorder = sys.modules["cfgw.recorder"].Recorder  # the class the loaded addon uses
    recorder.relay = _clocked(CHUNKS, recorder.relay)


def done() -> None:
    with open(os.environ["CFGW_HOOK_CLOCK"], "w") as out:
        json.dump({"totals_ns": totals, "calls": calls}, out)
