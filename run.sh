#!/usr/bin/env bash
# cf-gateway launcher: creates .venv from uv.lock on first use, then runs what you ask.
#
#   ./run.sh [mitmproxy args...]          the proxy (mitmdump) on ${HOST_ADDR:-0.0.0.0}:${HOST_PORT:-3000}
#   ./run.sh web [mitmproxy args...]      the same with mitmweb and the LLM view (UI on 127.0.0.1:8081)
#   ./run.sh demo [web] [mitmproxy args]  offline: the bundled stand-in gateway and the proxy in front of it
#   ./run.sh record FILE [args...]        the proxy, saving every forwarded exchange (masked) to FILE
#   ./run.sh replay [--strict] FILE [...] answer every request from FILE; nothing goes upstream
#   ./run.sh test [pytest args...]        lock check, ruff, mypy, complexity, and the whole suite
#   ./run.sh bench [bench args...]        the benchmarks (bench/README.md)
#   ./run.sh upgrade                      refresh uv.lock and tests/agents' npm lock to the newest releases
#
# CF_PYTHON picks the interpreter; CF_DRY_RUN=1 prints the proxy command instead of running it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
UV_VERSION=0.13.9  # the uv that installs from uv.lock; `./run.sh upgrade` uses it too
export UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1

die() { echo "run.sh: $*" >&2; exit 1; }

# The newest Python >= 3.12 on this machine (mitmproxy 12 needs it); CF_PYTHON wins.
pick_python() {
  local c
  for c in ${CF_PYTHON:-} python3.14 python3.13 python3.12 python3 \
           "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
    [ -n "$c" ] || continue
    if "$c" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c" || echo "$c"
      return
    fi
  done
}

# venv [test]: .venv with uv, synced to uv.lock (the runtime set; "test" adds the test group).
venv() {
  if [ ! -x .venv/bin/uv ]; then
    local py
    py="$(pick_python)"
    [ -n "$py" ] || die "no Python >= 3.12 found (install one, or set CF_PYTHON=/path/to/python3)"
    echo "run.sh: creating .venv with $py ($("$py" --version 2>&1))" >&2
    "$py" -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi
  .venv/bin/uv sync --quiet --frozen --inexact --python .venv/bin/python ${1:+--group "$1"}
}

# The npm packages of the agent CLIs the tests run (tests/agents/package-lock.json).
agents() {
  command -v npm >/dev/null || die "the tests run Claude Code and Codex, which need Node.js and npm: install them (e.g. apt-get install nodejs npm) and run ./run.sh test again"
  if [ ! -f tests/agents/node_modules/.package-lock.json ] ||
     [ tests/agents/package-lock.json -nt tests/agents/node_modules/.package-lock.json ]; then
    echo "run.sh: installing the agent CLIs from tests/agents/package-lock.json" >&2
    npm ci --prefix tests/agents --no-audit --no-fund --loglevel=error >&2
  fi
}

# Settings run.sh itself needs: the environment wins over .env.
read_env() {
  .venv/bin/python -c 'import os, sys; from dotenv import dotenv_values
v = os.environ.get(sys.argv[1]) or (dotenv_values(".env").get(sys.argv[1]) if os.path.exists(".env") else None)
print(v or sys.argv[2])' "$1" "$2"
}

# has_set NAME ARGS...: whether the user's own arguments set mitmproxy option NAME
# (mitmproxy refuses an option given twice, so run.sh's defaults step aside).
has_set() {
  local name="$1" a; shift
  for a in "$@"; do [[ "$a" == "$name="* ]] && return 0; done
  return 1
}

# proxy TOOL ARGS...: run mitmdump or mitmweb with the addon in front of the user's own arguments.
proxy() {
  local tool="$1" port addr; shift
  port="$(read_env HOST_PORT 3000)"
  [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] ||
    die "HOST_PORT must be a port number (1-65535), got '$port'"
  addr="$(read_env HOST_ADDR 0.0.0.0)"
  [[ "$addr" =~ ^[0-9A-Za-z.:_-]+$ ]] || die "HOST_ADDR must be an address such as 127.0.0.1, got '$addr'"
  [[ "$addr" == *:* ]] && addr="[$addr]"
  # Port 0 as the reverse: target: nothing can listen there, so a request the addon did not
  # rewrite fails with 502 (fail closed). lazy: an unreachable upstream gives a 502, not an empty reply.
  local args=(-s addons/cf_gateway.py --mode "reverse:http://127.0.0.1:0@${addr}:${port}"
              --set connection_strategy=lazy)
  if [ "$tool" = mitmweb ]; then
    args+=(-s addons/llm_view.py --web-host 127.0.0.1)
    has_set web_columns "$@" || for c in icon method status comment path size time; do
      args+=(--set "web_columns=$c"); done
  else
    has_set flow_detail "$@" || args+=(--set flow_detail=0)  # one line per request: the addon's
  fi
  if [ "${CF_DRY_RUN:-}" = 1 ]; then printf '%s\n' ".venv/bin/$tool" "${args[@]}" "$@"; exit 0; fi
  exec ".venv/bin/$tool" "${args[@]}" "$@"
}

# replay [--strict] FILE ARGS...: mitmdump exits 0 whatever happened, so the addon writes a
# summary at shutdown and --strict reads it.
replay() {
  local strict=0 report rc=0
  [ "${1:-}" = --strict ] && { strict=1; shift; }
  [ -n "${1:-}" ] || die "usage: ./run.sh replay [--strict] FILE [mitmproxy args]"
  local file="$1"; shift
  report="$(mktemp)"
  (proxy mitmdump --set "cf_replay=$file" --set "cf_replay_report=$report" "$@") & pid=$!
  trap 'kill -TERM "$pid" 2>/dev/null' INT TERM
  # A trapped signal interrupts wait (status > 128): wait again until mitmdump has really ended.
  while kill -0 "$pid" 2>/dev/null; do wait "$pid" && rc=0 || rc=$?; done
  if [ "$strict" = 1 ]; then
    [ -s "$report" ] || die "replay ended without a summary (the proxy did not start?)"
    .venv/bin/python -c 'import json, sys; r = json.load(open(sys.argv[1]))
sys.exit("run.sh: replay --strict: %d unmatched request(s)" % r["unmatched"] if r["unmatched"] else 0)' "$report" || rc=1
  fi
  rm -f "$report"
  exit "$rc"
}

cmd="${1:-run}"
case "$cmd" in
  run|web|demo|test|bench|upgrade|record|replay) shift || true ;;
  -*) cmd=run ;;
  *) die "unknown command '$cmd' (use: run, web, demo, record, replay, test, bench, upgrade, or mitmproxy options)" ;;
esac

case "$cmd" in
  run) venv; proxy mitmdump "$@" ;;
  web) venv; proxy mitmweb "$@" ;;
  record)
    [ -n "${1:-}" ] || die "usage: ./run.sh record FILE [mitmproxy args]"
    file="$1"; shift
    venv; proxy mitmdump --set "cf_record=$file" "$@" ;;
  replay) venv; replay "$@" ;;
  demo) venv; exec .venv/bin/python tests/demo.py "$@" ;;
  test)
    venv test
    agents
    echo "== lock" >&2
    .venv/bin/uv lock --check --quiet || die "uv.lock does not match pyproject.toml: run ./run.sh upgrade"
    echo "== ruff" >&2
    .venv/bin/ruff check .
    echo "== mypy" >&2
    .venv/bin/mypy
    echo "== pytest on $(.venv/bin/python --version), mitmproxy $(.venv/bin/python -c 'import mitmproxy.version as v; print(v.VERSION)')" >&2
    exec .venv/bin/python -m pytest "$@"
    ;;
  bench) venv test; exec .venv/bin/python bench/bench.py "$@" ;;
  upgrade)
    venv test
    .venv/bin/uv lock --upgrade --python .venv/bin/python
    venv test
    command -v npm >/dev/null && npm install --prefix tests/agents --save-exact --no-audit --no-fund \
      @anthropic-ai/claude-code@latest @openai/codex@latest
    echo "run.sh: locks refreshed; run ./run.sh test before committing them" >&2
    ;;
esac
