#!/usr/bin/env bash
# cf-gateway launcher: creates .venv on first use, then runs the proxy, the demo, the tests or the benchmarks.
#
#   ./run.sh [mitmproxy args...]        proxy (mitmdump) on ${HOST_ADDR:-0.0.0.0}:${HOST_PORT:-3000}
#   ./run.sh web [mitmproxy args...]    the same with mitmweb (UI on http://127.0.0.1:8081)
#   ./run.sh demo [mitmproxy args...]   offline: the bundled stand-in gateway + the proxy in front of it
#   ./run.sh test [pytest args...]      ruff, mypy and the whole test suite (also on Python 3.11 + mitmproxy 11 if present)
#   ./run.sh bench [bench args...]      benchmarks (bench/README.md)
#
# Environment: CF_PYTHON picks the interpreter; CF_TEST_PY311=off skips the Python 3.11 test pass;
# CF_DRY_RUN=1 makes run/web print the proxy command, one argument per line, instead of running it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

die() { echo "run.sh: $*" >&2; exit 1; }

# Print "<major.minor> <path>" for every working Python 3 interpreter we can find, one per line.
list_pythons() {
  local c
  for c in ${CF_PYTHON:-} python3.14 python3.13 python3.12 python3.11 python3 \
           "$HOME"/.pyenv/versions/3.*/bin/python3 /usr/local/bin/python3.* /usr/bin/python3.*; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || continue
    "$c" -c 'import sys, venv, ensurepip; print("%d.%d" % sys.version_info[:2], sys.executable)' 2>/dev/null || true
  done
}

# Newest interpreter with version >= $1 (e.g. 3.12); CF_PYTHON wins if it qualifies.
pick_python() {
  local min="$1"
  list_pythons | awk -v min="$min" '
    { split($1, v, "."); split(min, m, ".");
      if (v[1] > m[1] || (v[1] == m[1] && v[2] >= m[2])) print v[1] * 1000 + v[2], $2 }' |
    { if [ -n "${CF_PYTHON:-}" ]; then head -n 1; else sort -k1,1nr -s | head -n 1; fi } | cut -d' ' -f2-
}

# ensure_venv DIR PYTHON [EXTRA]: create DIR with PYTHON; install the runtime dependencies (and the
# extra's) unless a stamp says this pyproject.toml's were installed already.
ensure_venv() {
  local dir="$1" py="$2" sum group
  sum="$(cksum < pyproject.toml | cut -d' ' -f1)"
  if [ ! -x "$dir/bin/python" ]; then
    echo "run.sh: creating $dir with $py ($("$py" --version 2>&1))" >&2
    "$py" -m venv "$dir"
  fi
  find "$dir" -maxdepth 1 -name '.cf-gateway-*' ! -name ".cf-gateway-$sum-*" -delete
  # Install what pyproject.toml lists (pip evaluates the version markers); the project itself is
  # not a package: mitmproxy loads addons/cf_gateway.py as a script. The runtime set goes first and
  # an extra in a second step: mitmproxy 11 pins h11<=0.14 while current httpx/openai want a newer
  # one, which a single resolver run refuses but which works (pip only warns).
  for group in base ${3:-}; do
    [ -f "$dir/.cf-gateway-$sum-$group" ] && continue
    echo "run.sh: installing $group dependencies into $dir (first run only)" >&2
    "$dir/bin/python" - "$group" > "$dir/requirements-$group.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
group = sys.argv[1]
print("\n".join(project["dependencies"] if group == "base" else project["optional-dependencies"][group]))
PY
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r "$dir/requirements-$group.txt" 2> >(grep -v "^WARNING: Location" >&2) >&2
    touch "$dir/.cf-gateway-$sum-$group"
  done
}

main_venv() {
  local extras="${1:-}" py
  if [ ! -x .venv/bin/python ]; then
    py="$(pick_python 3.12)"
    [ -n "$py" ] || py="$(pick_python 3.11)"
    [ -n "$py" ] || die "no Python >= 3.11 found (set CF_PYTHON=/path/to/python3)"
  else
    py=.venv/bin/python
  fi
  ensure_venv .venv "$py" "$extras"
}

# Settings that run.sh itself needs: the environment wins over .env.
read_env() {
  .venv/bin/python - "$1" "$2" <<'PY'
import os, sys
from dotenv import dotenv_values
name, default = sys.argv[1], sys.argv[2]
value = os.environ.get(name)
if value is None:
    value = dotenv_values(".env").get(name) if os.path.exists(".env") else None
print(value if value else default)
PY
}

# has_set NAME ARGS...: whether the user's own arguments set mitmproxy option NAME (mitmproxy refuses
# an option given twice, so run.sh's defaults must step aside).
has_set() {
  local name="$1" a; shift
  for a in "$@"; do [[ "$a" == "$name="* || "$a" == "$name" ]] && return 0; done
  return 1
}

# proxy_args TOOL ARGS...: the mitmproxy arguments run.sh adds in front of the user's own.
proxy_args() {
  local tool="$1" port addr; shift
  port="$(read_env HOST_PORT 3000)"
  [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] ||
    die "HOST_PORT must be a port number (1-65535), got '$port'"
  addr="$(read_env HOST_ADDR 0.0.0.0)"
  [[ "$addr" =~ ^[0-9A-Za-z.:_-]+$ ]] || die "HOST_ADDR must be an address such as 0.0.0.0 or 127.0.0.1, got '$addr'"
  [[ "$addr" == *:* ]] && addr="[$addr]"
  # The reverse: target is port 0, where nothing can listen: the addon aims every request it admits
  # at the gateway itself, so if the addon is not loaded (a bad option, a syntax error on reload),
  # requests fail with 502 instead of being forwarded unrewritten (fail closed).
  # lazy: connect upstream only for a real request, so an unreachable gateway gives a 502, not an empty reply.
  printf '%s\n' -s addons/cf_gateway.py --mode "reverse:http://127.0.0.1:0@${addr}:${port}" \
    --set connection_strategy=lazy
  # One line per request (the addon's summary); --set flow_detail=2 shows mitmproxy's own dump.
  has_set flow_detail "$@" || [ "$tool" != mitmdump ] || printf '%s\n' --set flow_detail=0
  # mitmweb's flow list shows the addon's comment (model, tokens, time) unless the user picks columns.
  # (web_columns is a list: one --set per column; the comment comes before the long gateway URL.)
  if [ "$tool" = mitmweb ] && ! has_set web_columns "$@"; then
    local c
    for c in icon method status comment path size time; do printf '%s\n' --set "web_columns=$c"; done
  fi
}

# launch CMD...: run the proxy, or print its command with CF_DRY_RUN=1 (what the tests check).
launch() {
  if [ "${CF_DRY_RUN:-}" = 1 ]; then printf '%s\n' "$@"; exit 0; fi
  exec "$@"
}

cmd="${1:-run}"
case "$cmd" in
  run|web|demo|test|bench) shift || true ;;
  -*) cmd=run ;;
  *) die "unknown command '$cmd' (use: run, web, demo, test, bench, or mitmproxy options)" ;;
esac

case "$cmd" in
  run)
    main_venv
    proxy_cmd="$(proxy_args mitmdump "$@")"  # not <(...): a bad HOST_PORT/HOST_ADDR must stop run.sh
    mapfile -t args <<< "$proxy_cmd"
    launch .venv/bin/mitmdump "${args[@]}" "$@"
    ;;
  web)
    main_venv
    proxy_cmd="$(proxy_args mitmweb "$@")"  # not <(...): a bad HOST_PORT/HOST_ADDR must stop run.sh
    mapfile -t args <<< "$proxy_cmd"
    launch .venv/bin/mitmweb --web-host 127.0.0.1 "${args[@]}" "$@"
    ;;
  demo)
    main_venv
    exec .venv/bin/python tests/demo.py "$@"
    ;;
  test)
    main_venv test
    echo "== ruff" >&2
    .venv/bin/ruff check .
    echo "== mypy (mitmproxy $(.venv/bin/python -c 'import mitmproxy.version as v; print(v.VERSION)'))" >&2
    .venv/bin/python -m mypy
    echo "== tests on $(.venv/bin/python --version) + mitmproxy $(.venv/bin/python -c 'import mitmproxy.version as v; print(v.VERSION)')" >&2
    rc=0
    .venv/bin/python -m pytest "$@" || rc=$?
    # CI covers Python 3.11 + mitmproxy 11 too, where a 3.11 is on the machine.
    py311="$(list_pythons | awk '$1 == "3.11" {print $2; exit}')"
    if [ "${CF_TEST_PY311:-auto}" != off ] && [ -n "$py311" ] &&
       [ "$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != 3.11 ]; then
      ensure_venv .venv311 "$py311" test
      echo "== mypy (mitmproxy $(.venv311/bin/python -c 'import mitmproxy.version as v; print(v.VERSION)'))" >&2
      .venv311/bin/python -m mypy || rc=$?
      echo "== tests on $(.venv311/bin/python --version) + mitmproxy $(.venv311/bin/python -c 'import mitmproxy.version as v; print(v.VERSION)')" >&2
      .venv311/bin/python -m pytest "$@" || rc=$?
    fi
    exit "$rc"
    ;;
  bench)
    main_venv test
    exec .venv/bin/python bench/bench.py "$@"
    ;;
esac
