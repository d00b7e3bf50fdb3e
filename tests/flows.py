"""Building blocks for unit tests that drive the addon with mitmproxy.test.taddons/tflow."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from mitmproxy import addonmanager, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.addons.view import View
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from cfgw import config
from cfgw.gateway import CfGateway

ACCOUNT = "0123456789abcdef0123456789abcdef"
GATEWAY = f"/v1/{ACCOUNT}/test-gw"
PREFIX = f"{GATEWAY}/compat"
GOOD = {"cf_account_id": ACCOUNT, "cf_gateway_id": "test-gw"}
UNSERVABLE = "reverse:http://127.0.0.1:0"


def reverse_flow(
    path="/v1/chat/completions", method="POST", headers=(), content=b"{}", mode=UNSERVABLE
) -> http.HTTPFlow:
    """A live flow as it arrives on a reverse listener (before the addon rewrote it)."""
    fields = [("host", "127.0.0.1:0"), *headers]
    if content and not any(k.lower() == "content-length" for k, _ in headers):
        fields.append(("content-length", str(len(content))))
    req = tutils.treq(
        method=method.encode(),
        path=path.encode(),
        host="127.0.0.1",
        port=0,
        headers=http.Headers([(k.encode(), v.encode()) for k, v in fields]),
        content=content,
    )
    f = tflow.tflow(req=req)
    f.client_conn.proxy_mode = ProxyMode.parse(mode)
    return f


def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No option from the test runner's environment or a .env file: only what the test sets."""
    monkeypatch.chdir(tmp_path)
    for o in config.OPTIONS:
        monkeypatch.delenv(o.spec.env, raising=False)


@contextlib.contextmanager
def loaded(*set_args: str, view: bool = True) -> Iterator[tuple[CfGateway, taddons.context]]:
    """The addon loaded the way mitmweb loads a script: mitmproxy's proxy options exist, and
    ``set_args`` (``--set`` arguments, e.g. "cf_redact=on") were given before it loaded, so those
    naming its options wait in ``options.deferred``. done() runs on exit: it takes the log-record
    factory that load() installs for the whole process out again. ``view=False``: no flow view,
    as in mitmdump (which keeps no replay stash)."""
    a = CfGateway()
    with taddons.context() as tctx:
        Proxyserver().load(addonmanager.Loader(tctx.master))  # body_size_limit, connection_strategy...
        if view:
            tctx.master.addons.add(View())  # a flow list, as mitmweb has: flows can be replayed
        tctx.options.set(*set_args, defer=True)
        tctx.master.addons.add(a)
        try:
            yield a, tctx
        finally:
            a.done()


def send(addon: CfGateway, f: http.HTTPFlow, upstream: http.Response | None = None) -> None:
    """The hooks in mitmproxy's order: requestheaders, request, then responseheaders and response,
    with ``upstream`` (default: a plain 200) as the answer when the flow was not answered locally."""
    addon.requestheaders(f)
    addon.request(f)
    if f.response is None:
        f.response = upstream or tutils.tresp()
    addon.responseheaders(f)
    addon.response(f)
