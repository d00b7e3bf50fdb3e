"""run.sh as a newcomer uses it: the proxy command it builds, and the demo from a fresh clone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from tests.harness import ROOT, clean_env, free_port


def dry_run(*args: str, **env: str) -> list[str]:
    out = subprocess.run(
        [str(ROOT / "run.sh"), *args], env=clean_env(CF_DRY_RUN="1", **env), cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return out.stdout.splitlines()


def test_the_proxy_fails_closed_and_prints_one_line_per_request():
    cmd = dry_run(HOST_PORT="3123", HOST_ADDR="127.0.0.1")
    assert cmd[0] == ".venv/bin/mitmdump"
    assert "reverse:http://127.0.0.1:0@127.0.0.1:3123" in cmd
    assert "connection_strategy=lazy" in cmd
    assert "flow_detail=0" in cmd


def test_web_loads_the_llm_view_and_the_users_own_options_win():
    cmd = dry_run("web", "--set", "web_columns=path", HOST_PORT="3123")
    assert cmd[0] == ".venv/bin/mitmweb"
    assert "addons/llm_view.py" in cmd
    assert cmd.count("web_columns=path") == 1 and "web_columns=icon" not in cmd


def test_a_bad_port_stops_run_sh():
    out = subprocess.run(
        [str(ROOT / "run.sh")], env=clean_env(HOST_PORT="99999"), cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode != 0 and "HOST_PORT" in out.stderr


def test_the_demo_works_from_a_fresh_clone(tmp_path):
    """A newcomer's first command: a fresh clone, a fresh .venv, the runtime packages only."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=60)
    for path in ("addons", "tests", "run.sh", "pyproject.toml", "uv.lock"):  # the tree under test
        src, dst = ROOT / path, clone / path
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("node_modules"))
        else:
            shutil.copy2(src, dst)
    port = free_port()
    log = tmp_path / "demo.log"
    with open(log, "w") as out:
        demo = subprocess.Popen(
            ["./run.sh", "demo"], cwd=clone, env=clean_env(HOST_PORT=str(port)), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "Ctrl-C stops the demo" not in log.read_text() and time.monotonic() < deadline:
            assert demo.poll() is None, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        assert "the stand-in received POST /v1/" in text, text
        assert "POST /v1/chat/completions chat ->" in text  # the proxy's own request line
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(30)
    assert not (clone / ".venv" / "bin" / "pytest").exists()  # the runtime set was enough


def test_the_demo_refuses_a_taken_port(tmp_path):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = subprocess.run(
            [str(ROOT / "run.sh"), "demo"], cwd=ROOT, env=clean_env(HOST_PORT=str(port)),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert out.returncode == 1
    assert f"port {port} is taken" in out.stderr


def test_the_demo_in_mitmweb_loads_the_llm_view():
    from tests import demo
    from tests.standin_gateway import StandinGateway

    gw = StandinGateway().start()
    try:
        assert str(ROOT / "addons" / "llm_view.py") in demo.proxy_command("mitmweb", 3000, gw, [])
        assert str(ROOT / "addons" / "llm_view.py") not in demo.proxy_command("mitmdump", 3000, gw, [])
    finally:
        gw.stop()
