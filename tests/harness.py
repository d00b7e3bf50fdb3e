"""Start real mitmdump processes with the addon, for end-to-end tests and benchmarks.

Each proxy gets its own confdir (mitmproxy writes its CA there on first start),
its own working directory (so no stray .env is read), and a clean environment
(no ACCOUNT_ID etc. inherited from the developer's shell).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addons" / "cf_gateway.py"
MITMDUMP = Path(sys.executable).with_name("mitmdump")
ACCOUNT_ID = "0123456789abcdef0123456789abcdef"
# The reverse: target every proxy gets, as run.sh does: nothing can listen on port 0, so a request
# the addon did not rewrite fails with 502 instead of reaching any upstream (fail closed).
UNSERVABLE = "http://127.0.0.1:0"
GATEWAY_ID = "test-gw"
CF_ENV = (
    "ACCOUNT_ID",
    "GATEWAY_ID",
    "HOST_PORT",
    "HOST_ADDR",
    "PROXY_KEYS",
    "CLOUDFLARE_API_TOKEN",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def clean_env(**env: str) -> dict[str, str]:
    """The test runner's environment without any of the proxy's settings."""
    out = {k: v for k, v in os.environ.items() if k not in CF_ENV and not k.startswith("CF_")}
    out.update(env)
    return out


@dataclass
class Proxy:
    """A running mitmdump with the addon; ``output()`` is everything it printed so far."""

    proc: subprocess.Popen
    port: int
    workdir: Path
    log_path: Path
    extra_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_output(self, needle: str, timeout: float = 10) -> bool:
        """Wait until the proxy has printed needle (log lines are written after the client got its answer)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.output():
                return True
            time.sleep(0.02)
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def run_mitmdump(
    args: list[str], env: dict[str, str] | None = None, workdir: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    """Run mitmdump to completion (for startup failures): returns exit status and output."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="cfgw-"))
    return subprocess.run(
        [str(MITMDUMP), "--set", f"confdir={workdir / 'conf'}", "-s", str(ADDON), *args],
        cwd=workdir,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_proxy(
    upstream: str,
    options: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    workdir: Path | None = None,
    account_id: str = ACCOUNT_ID,
    gateway_id: str = GATEWAY_ID,
    addon: bool = True,
    reverse_target: str | None = None,
    tool: str = "mitmdump",
) -> Proxy:
    """Start mitmdump in reverse mode in front of ``upstream`` and wait until it listens."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="cfgw-"))
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    opts = {"cf_account_id": account_id, "cf_gateway_id": gateway_id, "cf_base_url": upstream}
    opts.update(options or {})
    cmd = [
        str(MITMDUMP.with_name(tool)),
        "--set",
        f"confdir={workdir / 'conf'}",
        "--mode",
        f"reverse:{reverse_target or (UNSERVABLE if addon else upstream)}@127.0.0.1:{port}",
        "--set",
        "connection_strategy=lazy",
        *(["--set", "flow_detail=0"] if tool == "mitmdump" else []),
    ]
    if addon:
        cmd += ["-s", str(ADDON)]
        for k, v in opts.items():
            cmd += ["--set", f"{k}={v}"]
    cmd += extra_args or []
    log_path = workdir / "mitmdump.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=clean_env(**(env or {})),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    proxy = Proxy(proc=proc, port=port, workdir=workdir, log_path=log_path)
    if not wait_for_port(port, proc):
        proxy.stop()
        raise RuntimeError(f"mitmdump did not start:\n{proxy.output()}")
    return proxy


def read_until_end(s: socket.socket) -> bytes:
    """Everything until the peer closes; a reset counts as a close, a socket timeout fails the test."""
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the connection was left hanging: {b''.join(chunks)[:200]!r}") from None
    return b"".join(chunks)


def raw_exchange(port: int, data: bytes, half_close: bool = False, timeout: float = 10) -> bytes:
    """Send bytes as they are and read until the proxy closes; a reset counts as a close.

    half_close tells the proxy the client has nothing more to send (an HTTP/0.9-style client
    would just wait); it is only for requests the proxy cannot complete, because mitmproxy
    drops a flow whose client half-closes before the answer.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return read_until_end(s)


def split_answer(answer: bytes) -> tuple[int, bytes, bytes]:
    """(status, head, body) of a raw HTTP/1 answer; status 0 when the proxy just closed."""
    if not answer:
        return 0, b"", b""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


WEB_PASSWORD = "test-ui-password"


def start_mitmweb(upstream: str, workdir: Path, *extra_args: str, **kwargs) -> tuple[Proxy, str]:
    """start_proxy with mitmweb: its UI on a free port, password WEB_PASSWORD; (proxy, UI base URL)."""
    web_port = free_port()
    p = start_proxy(
        upstream,
        workdir=workdir,
        tool="mitmweb",
        extra_args=["--web-host", "127.0.0.1", "--web-port", str(web_port), "--set", "web_open_browser=false",
                    "--set", f"web_password={WEB_PASSWORD}", *extra_args],
        **kwargs,
    )  # fmt: skip
    assert wait_for_port(web_port, p.proc), p.output()
    return p, f"http://127.0.0.1:{web_port}"


def web_client(base_url: str, timeout: float = 60):
    """An HTTP client logged in to mitmweb's UI (the password login sets the session cookie)."""
    import httpx  # the demo imports this module with the runtime packages only

    ui = httpx.Client(base_url=base_url, timeout=timeout)
    assert ui.get("/", params={"token": WEB_PASSWORD}).status_code == 200
    return ui


class RawUpstream:
    """A one-trick TCP upstream on 127.0.0.1: every connection is handed to ``behaviour``.

    For answers the stand-in cannot give (raw bytes, 1xx, bombs, garbage); ``heads`` is where
    behaviours keep the request heads they received, byte for byte.
    """

    def __init__(self, behaviour: Callable[[RawUpstream, socket.socket], None]) -> None:
        self.behaviour = behaviour
        self.heads: list[bytes] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            conn.settimeout(30)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            self.behaviour(self, conn)

    def close(self) -> None:
        self._sock.close()


# The sandbox sets PYTHONDONTWRITEBYTECODE, so every mitmdump start compiles mitmproxy again (about 4 s of
# CPU); end-to-end tests that start many processes keep the bytecode in a temp dir instead (not in .venv).
BYTECODE_CACHE = Path(tempfile.gettempdir()) / "cfgw-pycache"


def quick_env(**env: str) -> dict[str, str]:
    """``env`` for start_proxy/run_mitmdump, plus a bytecode cache outside the repository."""
    return {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(BYTECODE_CACHE), **env}


def wait_for(condition: Callable[[], object], timeout: float = 10, interval: float = 0.02) -> bool:
    """Poll condition until it is true (True) or timeout seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
