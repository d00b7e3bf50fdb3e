"""`./run.sh demo`: the whole path, offline — the stand-in gateway plus the proxy in front of it.

A newcomer with no Cloudflare account sees a completion go through the addon,
then can try their own clients against it until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import ADDON, ROOT, UNSERVABLE, clean_env, wait_for_port
from tests.standin_gateway import StandinGateway

WEB_COLUMNS = ("icon", "method", "status", "comment", "path", "size", "time")  # as run.sh web


DEMO_TOKEN = "demo-gateway-token"  # the stand-in wants it, the proxy injects it: any client key works


def host_port() -> int | None:
    value = os.environ.get("HOST_PORT")
    if value is None and (ROOT / ".env").exists():
        from dotenv import dotenv_values

        value = dotenv_values(ROOT / ".env").get("HOST_PORT")
    value = value or "3000"
    return int(value) if value.isdigit() and 1 <= int(value) <= 65535 else None


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def proxy_command(tool: str, port: int, gw: StandinGateway, extra: list[str]) -> list[str]:
    """mitmdump or mitmweb (with the LLM view) in front of the stand-in; the user's own --set wins:
    mitmproxy refuses an option given twice."""
    web = tool == "mitmweb"
    ours = [
        ("connection_strategy", "lazy"),
        ("cf_account_id", gw.account_id),
        ("cf_gateway_id", gw.gateway_id),
        ("cf_base_url", gw.base_url),
        *([("web_columns", c) for c in WEB_COLUMNS] if web else [("flow_detail", "0")]),
    ]
    theirs = {a.partition("=")[0] for a in extra}
    return [
        str(Path(sys.executable).with_name(tool)),
        "-s", str(ADDON),
        *(["-s", str(ADDON.with_name("llm_view.py"))] if web else []),
        # Port 0: nothing can listen there, so a request the addon did not rewrite fails (fail closed).
        "--mode", f"reverse:{UNSERVABLE}@127.0.0.1:{port}",
        *[arg for name, value in ours if name not in theirs for arg in ("--set", f"{name}={value}")],
        *(["--web-host", "127.0.0.1"] if web else []),
        *extra,
    ]  # fmt: skip


def main(argv: list[str]) -> int:
    web = bool(argv) and argv[0] == "web"
    extra = argv[1:] if web else argv
    port = host_port()
    if port is None:
        print("demo: HOST_PORT must be a port number (1-65535)", file=sys.stderr)
        return 1
    if port_taken(port):
        print(f"demo: port {port} is taken by another program; set HOST_PORT to a free port", file=sys.stderr)
        return 1
    # Ctrl-C and a supervisor's SIGTERM both end the demo through its cleanup below (else SIGTERM
    # would leave mitmdump running), even when it was started with SIGINT ignored, as a script's
    # background job is: mitmdump itself always honours both.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    gw = StandinGateway(gateway_id="demo", require_token=DEMO_TOKEN).start()
    tool = "mitmweb" if web else "mitmdump"
    cmd = proxy_command(tool, port, gw, extra)
    print(f"demo: stand-in gateway on {gw.base_url} (account {gw.account_id}, gateway {gw.gateway_id})")
    # A directory of its own: the repo's .env (your real token, access keys) is not the demo's.
    env = clean_env(CF_AIG_TOKEN=DEMO_TOKEN)
    proxy = subprocess.Popen(cmd, env=env, cwd=tempfile.mkdtemp(prefix="cfgw-demo-"))
    try:
        if not wait_for_port(port, proxy):
            print(f"demo: {tool} did not start (is port {port} free? set HOST_PORT)", file=sys.stderr)
            return 1
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}
        req = urllib.request.Request(
            url,
            json.dumps(body).encode(),
            {"content-type": "application/json", "authorization": "Bearer unused"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                answer = json.loads(r.read())
        except OSError as e:  # the proxy refused to start (a bad option), or answered an error
            print(f"demo: the first request failed ({e}); see {tool}'s output above", file=sys.stderr)
            return 1
        print(f"\ndemo: POST {url} -> {answer['choices'][0]['message']['content']!r}")
        print(f"demo: the stand-in received {gw.requests[-1].method} {gw.requests[-1].path}\n")
        print("Try it yourself (Ctrl-C stops the demo):")
        print(
            f"  curl -s http://127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' \\\n"
            '    -d \'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}\''
        )
        print(
            f"  curl -sN http://127.0.0.1:{port}/chat/completions -H 'content-type: application/json' \\\n"
            '    -d \'{"model": "openai/gpt-4o-mini", "stream": true, '
            '"messages": [{"role": "user", "content": "Hi"}]}\''
        )
        print(
            f"  curl -s http://127.0.0.1:{port}/v1/messages -H 'content-type: application/json' \\\n"
            "    -H 'anthropic-version: 2023-06-01' \\\n"
            '    -d \'{"model": "claude-sonnet-4-5", "max_tokens": 64, '
            '"messages": [{"role": "user", "content": "Hi"}]}\''
        )
        print(f"  OpenAI SDK: OpenAI(base_url='http://127.0.0.1:{port}/v1', api_key='unused')")
        print("    (chat.completions.create, or responses.create(model='gpt-5', input='Hi'))")
        print(
            f"  Anthropic SDK, Claude Code: Anthropic(base_url='http://127.0.0.1:{port}', api_key='unused')"
        )
        if web:
            print("  mitmweb UI: open the 'Web server listening at ...?token=...' URL above")
        print(flush=True)
        return proxy.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proxy.poll() is None:
            proxy.send_signal(signal.SIGINT)
            try:
                proxy.wait(10)
            except subprocess.TimeoutExpired:
                proxy.kill()
        gw.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
