"""A reference for the benchmarks: what mitmproxy charges any script addon with cf-gateway's hooks.

Why: part of the addon's cost is mitmproxy's, and no addon can remove it: every hook a
script defines is looked up and called, with mitmproxy's bookkeeping, for every flow.
This script defines the same five hooks as cf-gateway and does nothing in them; loaded
into a bare ``mitmdump -q`` it measures that floor.

With ``FLOOR_LOG=1`` in its environment it also logs one line per flow through the
standard ``logging`` module and skips mitmproxy's deprecated ``add_log`` relay for that
line, exactly as cf-gateway does with its summary line (cfgw/logs.py): run without
``-q``, it measures the least that printing one line per request through mitmproxy's
terminal log can cost.
"""

import logging
import os

from mitmproxy import http
from mitmproxy.log import LegacyLogEvents

LINES = "floor.requests"
log = logging.getLogger(LINES)
LOG = os.environ.get("FLOOR_LOG") == "1"


def load(loader) -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, LegacyLogEvents):
            handler.addFilter(lambda record: record.name != LINES)


def requestheaders(flow: http.HTTPFlow) -> None:
    pass


def request(flow: http.HTTPFlow) -> None:
    pass


def responseheaders(flow: http.HTTPFlow) -> None:
    pass


def response(flow: http.HTTPFlow) -> None:
    if LOG:
        status = flow.response.status_code if flow.response else "-"
        log.info(f"{flow.request.method} {flow.request.path} {status}")


def error(flow: http.HTTPFlow) -> None:
    pass
