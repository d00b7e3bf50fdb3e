"""Building blocks for unit tests that drive the addon with mitmproxy.test.taddons/tflow."""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow, tutils

ACCOUNT = "0123456789abcdef0123456789abcdef"
PREFIX = f"/v1/{ACCOUNT}/test-gw/compat"
GOOD = {"cf_account_id": ACCOUNT, "cf_gateway_id": "test-gw"}


def reverse_flow(
    path="/v1/chat/completions", method="POST", headers=(), content=b"{}", mode="reverse:http://127.0.0.1:1"
) -> http.HTTPFlow:
    """A live flow as it arrives on a reverse listener (before the addon rewrote it)."""
    req = tutils.treq(
        method=method.encode(),
        path=path.encode(),
        host="127.0.0.1",
        port=1,
        headers=http.Headers([(k.encode(), v.encode()) for k, v in (("host", "127.0.0.1:1"), *headers)]),
        content=content,
    )
    f = tflow.tflow(req=req)
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    return f
