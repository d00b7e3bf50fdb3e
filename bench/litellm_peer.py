"""LiteLLM's proxy as a peer: its own venv (bench/.litellm-venv, gitignored), a config, a process.

Why a separate venv: litellm[proxy] pulls in a large dependency tree that must
not leak into the project's venv. The version is pinned: litellm 1.82.7, 1.82.8
and 1.107.0 were compromised releases (withdrawn from PyPI); an exact pin means
a future bad release is never picked up silently. 1.106.12 is the newest release
whose [proxy] extra resolves from the package index reachable here (later ones
need litellm-proxy / litellm-proxy-extras builds it does not have). Override
with --litellm-spec.
Only wheels are installed (no sdist build scripts run).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from peerproc import launch, stop_group

HERE = Path(__file__).resolve().parent
VENV = HERE / ".litellm-venv"
DEFAULT_SPEC = "litellm[proxy]==1.106.12"
MODEL = "openai/gpt-4o-mini"
API_KEY = "sk-bench-upstream"
INSTALL_TIMEOUT = 900  # seconds
START_TIMEOUT = 120  # seconds


class Unavailable(RuntimeError):
    """LiteLLM cannot be installed or started here; the message says why (shown in the table)."""


def litellm_cli(venv: Path = VENV) -> Path:
    return venv / "bin" / "litellm"


def ensure_installed(spec: str = DEFAULT_SPEC, log_path: Path | None = None, venv: Path = VENV) -> Path:
    """Create the venv and install spec on first use (or when spec changed); return the CLI path."""
    stamp = venv / ".bench-spec"
    cli = litellm_cli(venv)
    if cli.exists() and stamp.exists() and stamp.read_text().strip() == spec:
        return cli
    log_path = log_path or HERE / "out" / "litellm-install.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + INSTALL_TIMEOUT
    with open(log_path, "ab") as log:
        steps = []
        if not (venv / "bin" / "python").exists():
            steps.append([sys.executable, "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        steps.append([*pip, "install", "--quiet", "--upgrade", "pip"])
        steps.append([*pip, "install", "--quiet", "--only-binary=:all:", spec])
        for cmd in steps:
            left = deadline - time.monotonic()
            print(f"bench: litellm: {' '.join(cmd[-3:])} (log {log_path})", file=sys.stderr, flush=True)
            try:
                rc = subprocess.run(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=max(left, 1)
                ).returncode
            except subprocess.TimeoutExpired:
                raise Unavailable(f"installing {spec} took longer than {INSTALL_TIMEOUT} s") from None
            if rc != 0:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
                raise Unavailable(f"'{' '.join(cmd[-2:])}' failed (exit {rc}): {tail[0][:200]}")
    if not cli.exists():
        raise Unavailable(f"{spec} installed no 'litellm' command")
    stamp.write_text(spec + "\n")
    return cli


def new_master_key() -> str:
    """LiteLLM refuses to start without a master key (clients then send it as their bearer token)."""
    return "sk-bench-" + secrets.token_hex(16)


def write_config(path: Path, upstream_compat_url: str, master_key: str) -> Path:
    """Route model openai/gpt-4o-mini to the upstream's compat URL with a fixed key.

    litellm strips its own provider prefix, so 'openai/openai/gpt-4o-mini' reaches the
    upstream as 'openai/gpt-4o-mini', the name the compat endpoint expects. No database:
    the master key is the only key, so authentication is a comparison, not a lookup.
    """
    path.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream_compat_url}\n"
        f"      api_key: {API_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
        "  json_logs: false\n"
        "  drop_params: true\n"
        "general_settings:\n"
        f"  master_key: {master_key}\n"
        "  disable_spend_logs: true\n"
    )
    return path


@dataclass
class LiteLLMProxy:
    proc: subprocess.Popen
    port: int
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10) -> None:
        """Stop the CLI and its workers (they share the session it was started in)."""
        stop_group(self.proc, timeout)


def start(cli: Path, config: Path, port: int, workdir: Path, wait_for_port) -> LiteLLMProxy:
    """Start `litellm --config` on 127.0.0.1:port (one worker) and wait until it listens."""
    log_path = workdir / "litellm.log"
    env = dict(os.environ)
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no download of the price list at startup
        LITELLM_TELEMETRY="False",
        LITELLM_LOG="ERROR",
        LITELLM_MODE="PRODUCTION",
        DISABLE_ADMIN_UI="True",
        NO_DOCS="True",
        PYTHONUNBUFFERED="1",
    )
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DATABASE_URL", "LITELLM_MASTER_KEY"):
        env.pop(name, None)
    cmd = [
        str(cli),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    proc, listening = launch(
        cmd,
        cwd=workdir,
        log_path=log_path,
        port=port,
        wait_for_port=wait_for_port,
        timeout=START_TIMEOUT,
        env=env,
    )
    peer = LiteLLMProxy(proc, port, log_path)
    if not listening:
        peer.stop()
        tail = " | ".join(peer.output().strip().splitlines()[-3:])[:300]
        raise Unavailable(f"litellm did not listen within {START_TIMEOUT} s: {tail or 'no output'}")
    return peer
