"""`./run.sh demo` (tests/demo.py): a completion goes through offline, and Ctrl-C (or a supervisor's
SIGTERM) stops everything, the proxy it started included."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import ROOT, clean_env, free_port


def start_demo(tmp_path: Path, port: int, out: Path) -> subprocess.Popen:
    """Start the demo with SIGINT ignored, as a shell script starts its background jobs (and as this
    test was once run): the demo must still stop on SIGINT, as mitmdump does."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited across exec
    try:
        with open(out, "wb") as f:
            return subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "demo.py"), "--set", f"confdir={tmp_path / 'conf'}"],
                env=clean_env(HOST_PORT=str(port)),
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
    finally:
        signal.signal(signal.SIGINT, previous)


def port_closed(port: int) -> bool:
    """Whether nothing listens on the port any more (an orphaned mitmdump would), bounded."""
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_shows_a_completion_and_stops_on_a_signal(tmp_path, sig):
    port = free_port()
    out = tmp_path / "demo.log"
    proc = start_demo(tmp_path, port, out)
    try:
        deadline = time.monotonic() + 30
        while (
            "Try it yourself" not in out.read_text() and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        text = out.read_text()
        assert (
            f"POST http://127.0.0.1:{port}/v1/chat/completions -> 'Hello from the stand-in gateway.'" in text
        )
        assert (
            "the stand-in received POST /v1/0123456789abcdef0123456789abcdef/demo/compat/chat/completions"
            in text
        )
    finally:
        proc.send_signal(sig)
        try:
            returncode = proc.wait(15)  # hang guard: the demo stops its proxy within 10 s or kills it
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert returncode == 0, out.read_text()
    assert port_closed(port), f"the demo's mitmdump still listens on {port} after the demo exited"
    assert "Traceback" not in out.read_text()
