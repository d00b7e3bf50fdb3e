"""Building blocks for the unit tests: flows as a reverse listener sees them, settings, and
the addon loaded in-process under mitmproxy.test.taddons (no processes, no sockets)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import addonmanager, hooks, http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from cfgw import config
from cfgw.gateway import CfGateway

ACCOUNT = "0123456789abcdef0123456789abcdef"
GATEWAY = "test-gw"
GATEWAY_PREFIX = f"https://gateway.ai.cloudflare.com/v1/{ACCOUNT}/{GATEWAY}"
REST_PREFIX = f"https://api.cloudflare.com/client/v4/accounts/{ACCOUNT}"
REVERSE = "reverse:http://127.0.0.1:0@127.0.0.1:3000"  # as run.sh starts mitmdump
REQUIRED = {"cf_account_id": ACCOUNT, "cf_gateway_id": GATEWAY}
REQUIRED_SET = tuple(f"{k}={v}" for k, v in REQUIRED.items())
ENV_NAMES = {o.env for o in config.OPTIONS} | {"HOST_PORT", "HOST_ADDR"}


def reverse_flow(
    path: str = "/v1/chat/completions",
    body: bytes | dict | None = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1:3000",
) -> http.HTTPFlow:
    """A live flow as it arrives on a reverse listener, before the addon has seen it."""
    content = json.dumps(body).encode() if isinstance(body, dict) else body or b""
    fields = {"host": host, **(headers or {})}
    if content and "content-length" not in fields:
        fields["content-length"] = str(len(content))
    req = tutils.treq(
        method=method.encode(),
        path=path.encode(),
        host="127.0.0.1",
        port=0,
        headers=http.Headers([(k.encode(), v.encode()) for k, v in fields.items()]),
        content=content,
    )
    f = tflow.tflow(req=req)
    f.client_conn.proxy_mode = ProxyMode.parse(REVERSE)
    f.client_conn.sockname = ("127.0.0.1", 3000)
    return f


def json_response(body: dict, status: int = 200, **headers: str) -> http.Response:
    return http.Response.make(
        status, json.dumps(body).encode(), {"content-type": "application/json", **headers}
    )


def sse_response() -> http.Response:
    """An event stream's head as mitmproxy has it in responseheaders: no body read yet."""
    response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
    response.raw_content = None
    return response


def settings(environ: dict[str, str] | None = None, **values: str) -> config.Settings:
    """Settings parsed as the addon parses them: every option at its default but the ones given."""
    return config.parse_settings({**config.defaults({}), **REQUIRED, **values}, environ or {})


@contextlib.contextmanager
def clean_environment(env: dict[str, str] | None = None, dotenv: str = "") -> Iterator[Path]:
    """A temporary working directory (with ``dotenv`` as its .env) and an environment with no
    variable an option could read, but ``env``; everything is restored afterwards, including
    variables the addon itself sets (a literal secret moves to the environment)."""
    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory() as tmp:
        mp.chdir(tmp)
        for name in ENV_NAMES | {n for n in os.environ if n.startswith("CF_")}:
            mp.setenv(name, "")  # recorded, so a value the addon sets is undone too
            mp.delenv(name)
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        if dotenv:
            Path(tmp, ".env").write_text(dotenv)
        yield Path(tmp)


@contextlib.contextmanager
def loaded(
    *set_args: str,
    env: dict[str, str] | None = None,
    dotenv: str = "",
    configure: bool = True,
    **options,
) -> Iterator[tuple[taddons.context, CfGateway]]:
    """CfGateway loaded the way mitmproxy loads a script, in a clean environment.

    mitmproxy's proxy options exist first, with the mode and connection strategy run.sh
    gives; the account, the gateway and ``set_args`` (``--set`` arguments) were given before
    the addon loaded, so they wait in ``options.deferred``; then load, a configure with every
    option, and (``configure``) tctx.configure with the account, gateway and ``options``.
    done() runs on exit: it takes the addon's log filters off again.
    """
    addon = CfGateway()
    with clean_environment(env, dotenv), taddons.context() as tctx:
        Proxyserver().load(addonmanager.Loader(tctx.master))
        tctx.options.update(mode=[REVERSE], connection_strategy="lazy")
        tctx.options.set(*REQUIRED_SET, *set_args, defer=True)
        tctx.master.addons.add(addon)
        tctx.master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(tctx.options.keys())))
        try:
            if configure:
                tctx.configure(addon, **{**REQUIRED, **options})
            yield tctx, addon
        finally:
            addon.done()


def send(addon: CfGateway, f: http.HTTPFlow, upstream: http.Response | None = None) -> http.HTTPFlow:
    """A flow through the hooks in mitmproxy's order; ``upstream`` (default: an empty JSON
    object) answers a flow the addon forwarded."""
    addon.requestheaders(f)
    if f.error:  # killed
        addon.error(f)
        return f
    addon.request(f)
    local = f.response is not None
    if not local:
        f.response = upstream or json_response({})
        addon.responseheaders(f)
        if callable(f.response.stream):
            body = f.response.content or b""
            f.response.stream(body)
            f.response.stream(b"")
    addon.response(f)
    return f
