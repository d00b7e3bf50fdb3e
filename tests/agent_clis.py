"""Run the real agent CLIs, Claude Code and Codex, non-interactively against a local endpoint.

Why: the proxy exists for these clients; driving the real binaries shows what they actually send
(paths, headers, streams, WebSocket attempts) and that they finish an agent turn through it.

The CLIs are npm packages pinned in tests/agents/package.json and locked in
tests/agents/package-lock.json; ``./run.sh test`` installs them with
``npm ci --prefix tests/agents`` (Claude Code and Codex ship native binaries in per-platform
packages; Codex's launcher is a Node script, so Node.js and npm are needed).

Each run is isolated and offline: a fresh environment (no proxy variables, nothing inherited but
PATH), HOME, CLAUDE_CONFIG_DIR, CODEX_HOME, XDG dirs and TMPDIR under ``workdir``, telemetry,
update checks, plugin syncs and other non-essential traffic off, stdin closed, and the whole
process group killed on timeout. Tool commands run in ``workdir/project``.

Against the stand-in gateway directly (no proxy)::

    run_claude(gw.anthropic_url, tmp_path, "...", headers={"cf-aig-authorization": "Bearer tok"})
    run_codex(gw.openai_url, tmp_path, "...", headers={"cf-aig-authorization": "Bearer tok"})

Through the proxy (``/v1/messages`` and ``/v1/responses``)::

    run_claude(proxy.url, tmp_path, "...")
    run_codex(proxy.url + "/v1", tmp_path, "...")

``x-standin-tool`` (Claude Code: ``Bash``; Codex: ``exec_command``) makes the stand-in call the
CLI's shell tool; it fills ``command``/``cmd`` with ``echo standin`` and answers with text once
the tool result comes back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

AGENTS_DIR = Path(__file__).resolve().parent / "agents"
NODE_MODULES = AGENTS_DIR / "node_modules"
CLAUDE_PACKAGE = "@anthropic-ai/claude-code"
CODEX_PACKAGE = "@openai/codex"

# The shell tool each CLI declares (what x-standin-tool names by default).
CLAUDE_SHELL_TOOL = "Bash"
CODEX_SHELL_TOOL = "exec_command"
# A model from Codex's bundled catalog that gets classic function tools. Codex's default model
# (gpt-6.2-sol in 0.171) runs in "code mode": no `tools` field, its tools come in an
# `additional_tools` input item, which the stand-in does not call.
CODEX_MODEL = "gpt-5.5"
# Placeholder keys in the shape the stand-in (like the providers) accepts.
ANTHROPIC_PLACEHOLDER_KEY = "sk-ant-placeholder"

INSTALL_HINT = (
    "`./run.sh test` installs them (npm ci --prefix tests/agents, from tests/agents/package-lock.json). "
    "That needs Node.js 20 or newer with npm: `apt-get install nodejs npm` (Debian/Ubuntu), "
    "`brew install node` (macOS), or nvm / https://nodejs.org/."
)

_LOOPBACK = "127.0.0.1,localhost,::1"


class AgentCliMissing(RuntimeError):
    """Node, npm or the pinned agent CLIs are not installed."""


# ---- installation -------------------------------------------------------------


def _package_dir(package: str) -> Path:
    return NODE_MODULES.joinpath(*package.split("/"))


def pinned_versions() -> dict[str, str]:
    """The exact versions tests/agents/package.json pins."""
    return dict(json.loads((AGENTS_DIR / "package.json").read_text())["dependencies"])


def installed_version(package: str) -> str | None:
    try:
        return str(json.loads((_package_dir(package) / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


def claude_command() -> list[str]:
    """How to start Claude Code: its native binary, or the package's Node wrapper.

    npm's postinstall copies the platform binary over bin/claude.exe; without it (scripts
    disabled) that file is a shell stub that only prints an error, and cli-wrapper.cjs finds the
    platform package's binary itself.
    """
    exe = NODE_MODULES / ".bin" / "claude"
    try:
        native = exe.stat().st_size > 1_000_000
    except OSError:
        native = False
    if native:
        return [str(exe)]
    return [shutil.which("node") or "node", str(_package_dir(CLAUDE_PACKAGE) / "cli-wrapper.cjs")]


def codex_command() -> list[str]:
    """How to start Codex: the npm launcher (a Node script that execs the platform's Rust binary)."""
    return [str(NODE_MODULES / ".bin" / "codex")]


def missing_clis() -> str | None:
    """Why the agent CLIs cannot run here (with how to fix it), or None when they can."""
    problems = []
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` is not on PATH")
    if not NODE_MODULES.is_dir():
        problems.append(f"{NODE_MODULES} is missing")
    for package, version in pinned_versions().items() if NODE_MODULES.is_dir() else ():
        have = installed_version(package)
        if have is None:
            problems.append(f"{package} is not installed in {NODE_MODULES}")
        elif have != version:
            problems.append(f"{package} {have} is installed but tests/agents pins {version}")
    for name in ("claude", "codex") if NODE_MODULES.is_dir() else ():
        if not (NODE_MODULES / ".bin" / name).exists():
            problems.append(f"{NODE_MODULES / '.bin' / name} is missing")
    for package in (CLAUDE_PACKAGE, CODEX_PACKAGE) if NODE_MODULES.is_dir() else ():
        scope, name = package.split("/")
        if not any((NODE_MODULES / scope).glob(f"{name}-*/package.json")):
            problems.append(f"no platform package ({package}-<os>-<cpu>) with the native binary is installed")
    if not problems:
        return None
    return "the agent CLI tests need Claude Code and Codex: " + "; ".join(problems) + ". " + INSTALL_HINT


def require_clis() -> None:
    problem = missing_clis()
    if problem:
        raise AgentCliMissing(problem)


# ---- running --------------------------------------------------------------------


def _dirs(workdir: Path) -> dict[str, Path]:
    dirs = {
        "home": workdir / "home",
        "tmp": workdir / "tmp",
        "project": workdir / "project",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _base_env(dirs: Mapping[str, Path]) -> dict[str, str]:
    """A clean environment: nothing inherited but PATH (so no *_PROXY, keys or user config)."""
    home = dirs["home"]
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(home),
        "USER": os.environ.get("USER", "tester"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "TMPDIR": str(dirs["tmp"]),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        # Belt and braces: nothing here names a proxy, and loopback never goes through one.
        "NO_PROXY": _LOOPBACK,
        "no_proxy": _LOOPBACK,
    }
    if Path("/bin/bash").exists():
        env["SHELL"] = "/bin/bash"
    return env


def _merge(env: dict[str, str], extra: Mapping[str, str | None] | None) -> dict[str, str]:
    """Apply caller overrides; a None value removes the variable."""
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _run(
    args: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run with stdin closed in a new session; on timeout kill the whole group, then raise."""
    proc = subprocess.Popen(
        list(args),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # The leader is not reaped yet, so its process group id is still ours to signal.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(list(args), timeout, out, err) from None
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err)


def _tool_headers(
    tool: str | None, tool_args: Mapping[str, Any] | None, headers: Mapping[str, str] | None
) -> dict[str, str]:
    out: dict[str, str] = {}
    if tool:
        out["x-standin-tool"] = tool
    if tool_args is not None:
        out["x-standin-tool-args"] = json.dumps(tool_args)
    out.update(headers or {})
    return out


def claude_env(base_url: str, workdir: Path, headers: Mapping[str, str]) -> dict[str, str]:
    """The environment for Claude Code (see run_claude)."""
    dirs = _dirs(workdir)
    env = _base_env(dirs)
    env.update(
        {
            "CLAUDE_CONFIG_DIR": str(dirs["home"] / ".claude"),
            "ANTHROPIC_BASE_URL": base_url,
            "ANTHROPIC_API_KEY": ANTHROPIC_PLACEHOLDER_KEY,
            # Claude Code parses "Name: value" lines (split at the first colon).
            "ANTHROPIC_CUSTOM_HEADERS": "\n".join(f"{k}: {v}" for k, v in headers.items()),
            # Everything but the Messages API: telemetry, error reports, update checks, feature
            # flag and model-catalog fetches, surveys, plugin marketplace syncs.
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_UPDATES": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
        }
    )
    return env


def run_claude(
    base_url: str,
    workdir: Path,
    prompt: str,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 120,
    *,
    tool: str | None = CLAUDE_SHELL_TOOL,
    tool_args: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    max_turns: int = 3,
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``claude -p PROMPT`` against ``ANTHROPIC_BASE_URL=base_url``; the final text is on stdout.

    ``tool`` is sent as ``x-standin-tool`` and pre-approved (``--allowedTools``); every other tool
    that would ask for permission is denied without a prompt (``--permission-mode dontAsk``).
    (``--dangerously-skip-permissions`` / ``bypassPermissions`` refuse to run as root unless
    IS_SANDBOX=1.) ``headers`` become ``ANTHROPIC_CUSTOM_HEADERS`` lines, e.g. the gateway's
    ``cf-aig-authorization`` when talking to the stand-in directly. Raises
    subprocess.TimeoutExpired (with the output so far) after killing the process group.
    """
    require_clis()
    sent = _tool_headers(tool, tool_args, headers)
    run_env = _merge(claude_env(base_url, workdir, sent), env)
    args = [*claude_command(), "-p", prompt, "--max-turns", str(max_turns), "--permission-mode", "dontAsk"]
    if tool:
        args += ["--allowedTools", tool]
    args += list(extra_args)
    return _run(args, workdir / "project", run_env, timeout)


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def codex_config(
    base_url: str,
    headers: Mapping[str, str],
    *,
    builtin_provider: bool = False,
    model: str = CODEX_MODEL,
    sandbox: str = "workspace-write",
) -> str:
    """$CODEX_HOME/config.toml (accepted by ``--strict-config``).

    Codex ignores OPENAI_BASE_URL. The default is a custom provider: ``base_url`` (Codex appends
    ``/responses``), the Responses wire API over plain HTTP (``supports_websockets = false``), no
    ``env_key`` (no key needed, so no Authorization header), ``http_headers`` on every request,
    and no retries so failures show at once. ``builtin_provider=True`` uses the built-in OpenAI
    provider with ``openai_base_url`` instead, as a user pointing Codex at the proxy would: it
    sends no custom headers and first tries a WebSocket upgrade (GET .../responses) — a 426 makes
    it fall back to HTTP at once, a 404/405/401 only after 5 retries, a 400 is fatal.
    """
    lines = [
        f"model = {_toml_str(model)}",
        'approval_policy = "never"',
        f"sandbox_mode = {_toml_str(sandbox)}",
        "check_for_update_on_startup = false",
    ]
    if builtin_provider:
        if headers:
            raise ValueError("Codex's built-in provider sends no custom headers")
        lines.append(f"openai_base_url = {_toml_str(base_url)}")
    else:
        lines.append('model_provider = "cf-gateway"')
    lines += [
        "",
        "[analytics]",
        "enabled = false",
        "",
        "[feedback]",
        "enabled = false",
        "",
        "[history]",
        'persistence = "none"',
        "",
        "# The curated-plugins sync and apps look up api.github.com and chatgpt.com.",
        "[features]",
        "plugins = false",
        "remote_plugin = false",
        "plugin_sharing = false",
        "apps = false",
    ]
    if not builtin_provider:
        inline = ", ".join(f"{_toml_str(k)} = {_toml_str(v)}" for k, v in headers.items())
        lines += [
            "",
            "[model_providers.cf-gateway]",
            'name = "cf-gateway"',
            f"base_url = {_toml_str(base_url)}",
            'wire_api = "responses"',
            "supports_websockets = false",
            "request_max_retries = 0",
            "stream_max_retries = 0",
            f"http_headers = {{ {inline} }}",
        ]
    return "\n".join(lines) + "\n"


def run_codex(
    base_url: str,
    workdir: Path,
    prompt: str,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 120,
    *,
    tool: str | None = CODEX_SHELL_TOOL,
    tool_args: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    builtin_provider: bool = False,
    model: str = CODEX_MODEL,
    sandbox: str = "workspace-write",
    extra_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``codex exec PROMPT`` against ``base_url``; the final message is on stdout, the log on stderr.

    Approval policy ``never`` with the ``workspace-write`` sandbox (bundled bubblewrap on Linux):
    shell calls run without asking, writes confined to the project dir. ``tool``/``tool_args``/
    ``headers`` go in the provider's ``http_headers`` (with ``builtin_provider=True`` none can be
    sent: pass tool=None; the stand-in then calls the first tool, exec_command). Raises
    subprocess.TimeoutExpired (with the output so far) after killing the process group.
    """
    require_clis()
    dirs = _dirs(workdir)
    codex_home = dirs["home"] / ".codex"
    codex_home.mkdir(exist_ok=True)
    sent = _tool_headers(tool, tool_args, headers)
    config = codex_config(base_url, sent, builtin_provider=builtin_provider, model=model, sandbox=sandbox)
    (codex_home / "config.toml").write_text(config)
    run_env = _merge({**_base_env(dirs), "CODEX_HOME": str(codex_home)}, env)
    args = [
        *codex_command(),
        "exec",
        "--skip-git-repo-check",
        "--strict-config",
        "--ephemeral",
        "--color",
        "never",
        *extra_args,
        "--",
        prompt,
    ]
    return _run(args, dirs["project"], run_env, timeout)


# ---- reading what the gateway received ----------------------------------------------


def tool_result_text(body: Any) -> str | None:
    """The text of the tool result that ends a Messages or Responses request body, else None.

    Messages: the last message is a user turn with ``tool_result`` blocks; Responses: the last
    ``input`` item is a ``*_call_output``.
    """
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        last = messages[-1]
        content = last.get("content") if isinstance(last, dict) else None
        if isinstance(content, list):
            results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
            if results:
                return _text_of(results[-1].get("content"))
        return None
    items = body.get("input")
    if isinstance(items, list) and items:
        last = items[-1]
        if isinstance(last, dict) and str(last.get("type", "")).endswith("_call_output"):
            return _text_of(last.get("output"))
    return None


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text_of(v.get("text", "")) for v in value if isinstance(v, dict))
    return "" if value is None else json.dumps(value)
