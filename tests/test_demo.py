"""`./run.sh demo` (tests/demo.py): a completion goes through offline, and Ctrl-C stops everything."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from tests.harness import ROOT, clean_env, free_port


def test_demo_shows_a_completion_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    out = tmp_path / "demo.log"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "demo.py"), "--set", f"confdir={tmp_path / 'conf'}"],
            env=clean_env(HOST_PORT=str(port)),
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
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
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
