"""Start and stop a peer server (nginx, LiteLLM) as its own process group, waiting for its port."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path


def stop_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM the process and its workers (they share the session it was started in), then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def launch(
    cmd: list[str],
    *,
    cwd: Path,
    log_path: Path,
    port: int,
    wait_for_port: Callable[..., bool],
    timeout: float,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, bool]:
    """Start cmd in its own session, output to log_path; (process, whether it listened on port in time).

    A Ctrl-C while waiting stops the process before re-raising, so nothing is left running.
    """
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        return proc, wait_for_port(port, proc, timeout=timeout)
    except BaseException:
        stop_group(proc)
        raise
