"""End to end: mitmweb with the addon and the proxy's options, through mitmweb's own HTTP API.

mitmweb runs without web_password here, as a user starts it: it prints a login URL with a random
token, which the addon's log filter must leave alone.
"""

from __future__ import annotations

import re

import httpx
import pytest

from tests.harness import free_port, quick_env, start_proxy, wait_for_port

TOKEN = "mitmweb-gateway-token-2c9e4f"
KEYS = ("mitmweb-access-key-7a1d3b", "mitmweb-access-key-5e8f0c")
LOGIN_RE = re.compile(r"Web server listening at (http://127\.0\.0\.1:(\d+)/\?token=(\S+))")
TIMEOUT = 15.0


@pytest.fixture(scope="module")
def web(gateway, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mitmweb")
    keys_file = workdir / "keys.txt"
    keys_file.write_text("# access keys\n" + "\n".join(KEYS) + "\n")
    web_port = free_port()
    p = start_proxy(
        gateway.base_url,
        workdir=workdir,
        tool="mitmweb",
        options={"cf_proxy_keys": f"@{keys_file}"},
        env=quick_env(CF_AIG_TOKEN=TOKEN),
        extra_args=[
            "--web-host",
            "127.0.0.1",
            "--web-port",
            str(web_port),
            "--set",
            "web_open_browser=false",
        ],
    )
    assert wait_for_port(web_port, p.proc), p.output()
    p.keys_file = keys_file  # type: ignore[attr-defined]
    yield p
    p.stop()


def login_line(p) -> re.Match:
    assert p.wait_output("Web server listening at"), p.output()
    m = LOGIN_RE.search(p.output())
    assert m, p.output()
    return m


def test_printed_login_url_works(web, gw):
    """The printed URL logs in (its token is intact, not masked), then /flows answers 200."""
    m = login_line(web)
    url, port, token = m.groups()
    assert re.fullmatch(r"[0-9a-f]{32}", token), m.group(0)
    assert "****" not in m.group(0)
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(base + "/flows", timeout=TIMEOUT).status_code == 403  # the login is what opens it
    r = httpx.post(
        web.url + "/v1/chat/completions",
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
        headers={"authorization": f"Bearer {KEYS[1]}"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200
    with httpx.Client(timeout=TIMEOUT) as ui:
        assert ui.get(url).status_code == 200
        flows = ui.get(base + "/flows")
        assert flows.status_code == 200
        (flow,) = [f for f in flows.json() if f["request"]["path"].endswith("/compat/chat/completions")]
        assert flow["comment"].startswith("openai/gpt-4o-mini · ")  # the addon's comment column
        assert TOKEN not in flows.text and not any(k in flows.text for k in KEYS)


def test_options_show_secrets_only_as_their_source(web):
    _, port, token = login_line(web).groups()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as ui:
        assert ui.get("/", params={"token": token}).status_code == 200
        r = ui.get("/options")
    assert r.status_code == 200
    options = r.json()
    assert options["cf_token"]["value"] == "(from CF_AIG_TOKEN)"
    assert options["cf_proxy_keys"]["value"] == f"@{web.keys_file}"
    assert options["cf_api_token"]["value"] == ""
    assert TOKEN not in r.text and not any(k in r.text for k in KEYS)
