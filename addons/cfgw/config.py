"""Every option declared once, and the settings parsed from them.

An option's default comes from its environment variable, then ``.env`` in the working
directory. Secret options never hold the secret itself: the option shows where it came
from (``(from CF_AIG_TOKEN)``, ``@/path/to/file``), so mitmweb's Options page, its API and
saved option files show no secret.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import re
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit


class Option(NamedTuple):
    name: str
    env: str
    default: str
    help: str
    secret: bool = False


OPTIONS = (
    Option("cf_account_id", "ACCOUNT_ID", "", "Cloudflare account id (32 lowercase hex characters)."),
    Option("cf_gateway_id", "GATEWAY_ID", "default", "AI Gateway id; 'default' is created by Cloudflare."),
    Option("cf_api", "CF_API", "gateway", "Upstream API: 'gateway' (gateway.ai.cloudflare.com) or 'rest'."),
    Option("cf_token", "CF_AIG_TOKEN", "", "AI Gateway token for cf_api=gateway (secret).", True),
    Option("cf_api_token", "CLOUDFLARE_API_TOKEN", "", "Cloudflare API token, cf_api=rest (secret).", True),
    Option("cf_proxy_keys", "PROXY_KEYS", "", "Access keys for clients: k1,k2 or @file (secret).", True),
    Option(
        "cf_provider_keys", "CF_PROVIDER_KEYS", "auto",
        "Clients' Authorization/x-api-key: 'forward', 'drop', or 'auto' (drop when a token is injected).",
    ),
    Option("cf_open_proxy", "CF_OPEN_PROXY", "off", "'on': inject the token on any listener without keys."),
    Option("cf_base_url", "CF_BASE_URL", "", "Upstream origin, http(s)://host[:port]; empty: Cloudflare's."),
    Option("cf_log_format", "CF_LOG_FORMAT", "text", "Request lines: 'text' or 'json'."),
    Option("cf_log_file", "CF_LOG_FILE", "", "Also append request lines to this file ('-': stdout)."),
    Option("cf_record_limit", "CF_RECORD_LIMIT", "8m", "How much of each event stream the flow keeps."),
    Option("cf_allowed_hosts", "CF_ALLOWED_HOSTS", "", "Host names browsers may use without access keys."),
    Option("cf_allowed_origins", "CF_ALLOWED_ORIGINS", "", "Origins allowed cross-site without access keys."),
    Option("cf_max_connections", "CF_MAX_CONNECTIONS", "auto", "Open client connections at most."),
    Option("cf_record", "CF_RECORD", "", "Save every forwarded exchange, masked, to this flow file."),
    Option("cf_replay", "CF_REPLAY", "", "Answer every request from this flow file; nothing goes upstream."),
    Option("cf_replay_ignore", "CF_REPLAY_IGNORE", "user,metadata,stream_options,previous_response_id",
           "Body fields left out when replay matches requests."),
    Option("cf_replay_report", "CF_REPLAY_REPORT", "", "Write the replay summary (JSON) here at shutdown."),
)  # fmt: skip
BY_NAME = {o.name: o for o in OPTIONS}
ENV_NAMES = {o.env for o in OPTIONS} | {"HOST_PORT", "HOST_ADDR", "CF_PYTHON", "CF_DRY_RUN"}  # run.sh's

GATEWAY_ORIGIN = "https://gateway.ai.cloudflare.com"
REST_ORIGIN = "https://api.cloudflare.com"
ACCOUNT_RE = re.compile(r"[0-9a-f]{32}")
GATEWAY_RE = re.compile(r"[a-z0-9_]+(?:-[a-z0-9_]+)*")
SIZE_RE = re.compile(r"(\d+)([kmg]?)")
FROM_RE = re.compile(r"\(from ([A-Za-z_][A-Za-z0-9_]*)\)")


class AccessKeys(NamedTuple):
    keys: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class Settings:
    account_id: str
    gateway_id: str
    api: str
    token: str  # the credential the proxy injects: AI Gateway token or Cloudflare API token
    proxy_keys: AccessKeys | None
    provider_keys: str
    open_proxy: bool
    origin: str
    log_format: str
    log_file: str
    record_limit: int
    allowed_hosts: frozenset[str]
    allowed_origins: frozenset[str]
    max_connections: int
    record: str
    replay: str
    replay_ignore: frozenset[str]
    replay_report: str

    @functools.cached_property
    def address(self) -> tuple[str, str, int]:
        """The origin as (scheme, host, port), for mitmproxy's request setters."""
        parts = urlsplit(self.origin)
        return parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def prefix(self) -> str:
        """The upstream path every route lives under."""
        if self.api == "rest":
            return f"/client/v4/accounts/{self.account_id}"
        return f"/v1/{self.account_id}/{self.gateway_id}"

    @property
    def unguarded(self) -> bool:
        """Whether the proxy injects a credential for anyone who reaches it (no access keys)."""
        return bool(self.token) and not self.proxy_keys

    @property
    def drop_client_keys(self) -> bool:
        """Whether clients' Authorization/x-api-key are removed before forwarding."""
        if self.proxy_keys or self.api == "rest" or self.provider_keys == "drop":
            return True
        return self.provider_keys == "auto" and bool(self.token)

    def secrets(self) -> list[str]:
        return [s for s in (self.token, *(self.proxy_keys.keys if self.proxy_keys else ())) if s]

    def describe(self) -> str:
        """The startup line: where requests go and how, never a secret."""
        api, header = (
            ("REST API", "Authorization") if self.api == "rest" else ("AI Gateway", "cf-aig-authorization")
        )
        parts = [
            f"cf-gateway: {api}: requests go to {self.origin}{self.prefix}/... (gateway {self.gateway_id})",
            f"token injected as {header}" if self.token else "no token injected",
            f"access keys: {len(self.proxy_keys.keys)} ({self.proxy_keys.source})"
            if self.proxy_keys
            else "no access keys",
            f"clients' Authorization/x-api-key {'removed' if self.drop_client_keys else 'forwarded'}",
        ]
        parts += [f"replaying {self.replay}, nothing goes upstream"] * bool(self.replay)
        parts += [f"recording to {self.record}"] * bool(self.record)
        return "; ".join(parts)


def option_error(o: Option, problem: str) -> str:
    return f"cf-gateway: {o.name} (env {o.env}) {problem}"


def defaults(environ: Mapping[str, str | None]) -> dict[str, str]:
    """Option defaults from the environment (and .env): secrets only as their source."""
    out = {}
    for o in OPTIONS:
        value = environ.get(o.env)
        if not value:
            out[o.name] = o.default
        else:
            out[o.name] = f"(from {o.env})" if o.secret and not value.startswith("@") else value
    return out


def unknown_options(names: list[str]) -> list[str]:
    """One message for each cf_* option name given that no option declares."""
    out = []
    for name in names:
        if name.startswith("cf_") and name not in BY_NAME:
            close = difflib.get_close_matches(name, BY_NAME, n=1)
            hint = f": did you mean {close[0]}?" if close else ""
            out.append(f"cf-gateway: unknown option {name}{hint}")
    return out


def given_problems(deferred: dict) -> list[str]:
    """Unknown cf_* options, and ours given more than once (mitmproxy would drop the script)."""
    problems = unknown_options(list(deferred))
    for name, o in BY_NAME.items():
        given = getattr(deferred.get(name), "val", None)
        if given is not None and len(given) != 1:
            problems.append(option_error(o, "is given more than once with --set; give it once"))
    return problems


def unused_variables(environ: Mapping[str, str | None]) -> list[str]:
    """CF_* variables no option reads (a typo, or a setting that no longer exists)."""
    return sorted(k for k in environ if k.startswith("CF_") and k not in ENV_NAMES)


def is_literal(value: str) -> bool:
    """A secret option holding the secret itself, not where it comes from."""
    return bool(value) and not value.startswith("@") and not FROM_RE.fullmatch(value)


def read_secret(value: str, environ: Mapping[str, str | None]) -> str:
    """A secret option's value: '' (none), '@file', '(from NAME)', or the literal."""
    if value.startswith("@"):
        return read_file(value[1:])
    m = FROM_RE.fullmatch(value)
    if m:
        found = environ.get(m.group(1))
        if not found:
            raise ValueError(f"says {value}, but {m.group(1)} is not set")
        return read_secret(found, {}) if found.startswith("@") else found
    return value


def read_file(path: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if not text.strip():
        raise ValueError(f"{path} is empty")
    return text


def parse_token(value: str) -> str:
    token = value.strip().removeprefix("Bearer ").strip()
    if token and not valid_key(token + "x" * 8):
        raise ValueError("must be one token without spaces or control characters")
    return token


def parse_keys(value: str, source: str) -> AccessKeys | None:
    if not value:
        return None
    lines = re.split(r"[,\n]", value)  # a list, or a file of one key a line
    keys = tuple(k.strip() for k in lines if k.strip() and not k.strip().startswith("#"))
    if not keys:
        raise ValueError("holds no key")
    if not all(map(valid_key, keys)):
        raise ValueError("keys must be at least 8 printable characters without spaces")
    return AccessKeys(keys, source)


def valid_key(key: str) -> bool:
    return len(key) >= 8 and key.isprintable() and not any(c.isspace() for c in key)


def parse_origin(value: str, api: str) -> str:
    if not value:
        return REST_ORIGIN if api == "rest" else GATEWAY_ORIGIN
    origin = value.rstrip("/")
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or f"{parts.scheme}://{parts.netloc}" != origin or "@" in origin:
        raise ValueError(f"must be http(s)://host[:port], with no path, query or credentials, got {value!r}")
    parts.port  # noqa: B018 - raises ValueError for a bad port
    return origin


def parse_size(value: str) -> int:
    m = SIZE_RE.fullmatch(value.strip().lower())
    if not m:
        raise ValueError(f"must be a size such as 512k, 8m or 1g, got {value!r}")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)]


def parse_choice(value: str, *choices: str) -> str:
    if value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def parse_list(value: str) -> frozenset[str]:
    return frozenset(v.strip().lower() for v in value.split(",") if v.strip())


def parse_max_connections(value: str) -> int:
    """'auto': most of the file-descriptor limit, leaving room for upstream connections and files."""
    if value == "auto":
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return max(16, (soft - 64) // 2)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"must be 'auto' or a positive number, got {value!r}")
    return int(value)


def parse_settings(values: Mapping[str, str], environ: Mapping[str, str | None]) -> Settings:
    """Settings from option values; ValueError names the option and its variable."""

    def field(name: str, parse):
        try:
            return parse(values[name])
        except ValueError as e:
            raise ValueError(option_error(BY_NAME[name], str(e))) from None

    api = field("cf_api", lambda v: parse_choice(v, "gateway", "rest"))
    token_option = "cf_api_token" if api == "rest" else "cf_token"
    keys = values["cf_proxy_keys"]
    keys_source = f"file {keys[1:]}" if keys.startswith("@") else "list"
    settings = Settings(
        account_id=field("cf_account_id", _account_id),
        gateway_id=field("cf_gateway_id", _gateway_id),
        api=api,
        token=field(token_option, lambda v: parse_token(read_secret(v, environ))),
        proxy_keys=field("cf_proxy_keys", lambda v: parse_keys(read_secret(v, environ), keys_source)),
        provider_keys=field("cf_provider_keys", lambda v: parse_choice(v, "auto", "forward", "drop")),
        open_proxy=field("cf_open_proxy", lambda v: parse_choice(v, "on", "off")) == "on",
        origin=field("cf_base_url", lambda v: parse_origin(v, api)),
        log_format=field("cf_log_format", lambda v: parse_choice(v, "text", "json")),
        log_file=values["cf_log_file"],
        record_limit=field("cf_record_limit", parse_size),
        allowed_hosts=field("cf_allowed_hosts", parse_list),
        allowed_origins=field("cf_allowed_origins", parse_list),
        max_connections=field("cf_max_connections", parse_max_connections),
        record=values["cf_record"],
        replay=field("cf_replay", _readable),
        replay_ignore=field("cf_replay_ignore", parse_list),
        replay_report=values["cf_replay_report"],
    )
    check_together(settings)
    return settings


def check_together(s: Settings) -> None:
    """Settings that are each fine but cannot go together."""
    if s.api == "rest" and not s.token:
        raise ValueError(option_error(BY_NAME["cf_api_token"], "must be set with cf_api=rest"))
    if s.record and s.replay:
        problem = "and cf_record cannot both be set: a replay has nothing new to record"
        raise ValueError(option_error(BY_NAME["cf_replay"], problem))


def _account_id(value: str) -> str:
    if not value:
        raise ValueError("is required: your Cloudflare account id (set ACCOUNT_ID in .env)")
    if not ACCOUNT_RE.fullmatch(value):
        raise ValueError(f"must be 32 lowercase hexadecimal characters, got {value!r}")
    return value


def _gateway_id(value: str) -> str:
    if not (len(value) <= 64 and GATEWAY_RE.fullmatch(value)):
        raise ValueError(f"must be 1-64 of a-z 0-9 _ with single '-' between, got {value!r}")
    return value


def _readable(value: str) -> str:
    if value and not Path(value).is_file():
        raise ValueError(f"names no readable file: {value!r}")
    return value


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback
