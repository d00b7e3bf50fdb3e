"""Options of the addon: their names, environment variables, defaults, and parsers.

Every option is declared as a plain ``str`` and parsed here, because mitmproxy
silently unloads a script whose typed option fails to parse, which would leave
the reverse listener forwarding traffic unmodified. Parsers are pure functions
that raise ``ValueError``; the addon turns that into an ``OptionsError`` that
names the option and its environment variable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://gateway.ai.cloudflare.com"

ACCOUNT_ID_RE = re.compile(r"[0-9a-f]{32}")
GATEWAY_ID_RE = re.compile(r"[a-z0-9_]+(?:-[a-z0-9_]+)*")
SIZE_RE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


@dataclass(frozen=True)
class Upstream:
    """Where rewritten requests go: scheme, host and port of the gateway."""

    scheme: str
    host: str
    port: int

    @property
    def hostport(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True)
class AccessKeys:
    """Keys clients must present; ``source`` says where they came from, never what they are."""

    keys: tuple[str, ...] = field(repr=False)
    source: str


def parse_account_id(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("is required (your Cloudflare account id)")
    if not ACCOUNT_ID_RE.fullmatch(value):
        raise ValueError(f"must be 32 lowercase hexadecimal characters, got {value!r}")
    return value


def parse_gateway_id(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("is required (the name of your AI Gateway)")
    if len(value) > 64 or not GATEWAY_ID_RE.fullmatch(value):
        raise ValueError(
            f"must be 1-64 characters of a-z, 0-9, '_' and single '-' between them, got {value!r}"
        )
    return value


def parse_base_url(value: str) -> Upstream:
    value = value.strip() or DEFAULT_BASE_URL
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"is not a valid URL ({e}): {value!r}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must start with http:// or https://, got {value!r}")
    if not parts.hostname:
        raise ValueError(f"has no host: {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"must be scheme://host[:port] without path, query or fragment, got {value!r}")
    return Upstream(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or (443 if parts.scheme == "https" else 80),
    )


def parse_switch(value: str) -> bool:
    v = value.strip().lower()
    if v in ("on", "true", "yes", "1"):
        return True
    if v in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"must be 'on' or 'off', got {value!r}")


def parse_size(value: str) -> int:
    """Parse '8m', '512k', '1g', '1048576' or '0' into bytes (binary units)."""
    m = SIZE_RE.fullmatch(value.strip())
    if not m:
        raise ValueError(f"must be a size such as 8m, 512k or 0, got {value!r}")
    return int(m.group(1)) * SIZE_UNITS[m.group(2).lower()]


def parse_log_format(value: str) -> str:
    v = value.strip().lower()
    if v not in ("text", "json"):
        raise ValueError(f"must be 'text' or 'json', got {value!r}")
    return v


def parse_token(value: str) -> str | None:
    """The AI Gateway token, with or without a 'Bearer ' prefix; never echoed in errors."""
    v = value.strip()
    if v.lower().startswith("bearer "):
        v = v[7:].strip()
    if not v:
        return None
    if any(c.isspace() or not c.isprintable() for c in v) or not v.isascii():
        raise ValueError("must be a single printable ASCII word (value not shown)")
    return v


def parse_proxy_keys(value: str) -> AccessKeys | None:
    """A comma-separated list of keys, or '@path' to a file with one key per line."""
    v = value.strip()
    if not v:
        return None
    if v.startswith("@"):
        path = Path(v[1:]).expanduser()
        try:
            text = path.read_text(encoding="utf-8-sig")  # editors on Windows add a BOM
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read key file {str(path)!r}: {e.__class__.__name__}") from None
        keys = [
            line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")
        ]
        if not keys:
            raise ValueError(f"key file {str(path)!r} holds no keys")
        source = f"file {path}"
    else:
        keys = [k.strip() for k in v.split(",") if k.strip()]
        if not keys:
            raise ValueError("holds no keys")
        source = "list"
    for k in keys:
        if any(c.isspace() or not c.isprintable() for c in k) or not k.isascii():
            raise ValueError("keys must be printable ASCII without spaces (value not shown)")
    return AccessKeys(keys=tuple(dict.fromkeys(keys)), source=source)


@dataclass(frozen=True)
class Setting:
    """One addon option: its mitmproxy name, environment variable, default and parser."""

    option: str
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "cf_account_id",
        "ACCOUNT_ID",
        "",
        parse_account_id,
        "Cloudflare account id: 32 lowercase hex characters. Required. "
        "Defaults to $ACCOUNT_ID (environment, then .env).",
    ),
    Setting(
        "cf_gateway_id",
        "GATEWAY_ID",
        "",
        parse_gateway_id,
        "AI Gateway id: 1-64 characters of a-z, 0-9, '_' joined by single '-'. "
        "Required. Defaults to $GATEWAY_ID.",
    ),
    Setting(
        "cf_base_url",
        "CF_BASE_URL",
        DEFAULT_BASE_URL,
        parse_base_url,
        "Gateway origin as scheme://host[:port], no path, query or credentials. "
        f"Requests go to <base>/v1/<account>/<gateway>/compat/<path>. Default {DEFAULT_BASE_URL}.",
    ),
    Setting(
        "cf_log_requests",
        "CF_LOG_REQUESTS",
        "on",
        parse_switch,
        "'on' or 'off': one INFO line per request in the event log. Errors are always logged.",
    ),
    Setting(
        "cf_log_format",
        "CF_LOG_FORMAT",
        "text",
        parse_log_format,
        "'text' or 'json': format of the per-request line (json is one object per line).",
    ),
    Setting(
        "cf_record_limit",
        "CF_RECORD_LIMIT",
        "8m",
        parse_size,
        "Size such as 8m, 512k or 0: how much of each streamed (SSE) response is kept "
        "on the flow for mitmweb and flow files. The client always gets every byte; 0 keeps nothing.",
    ),
    Setting(
        "cf_token",
        "CF_AIG_TOKEN",
        "",
        parse_token,
        "Cloudflare AI Gateway token. When set, requests without a cf-aig-authorization "
        "header get 'cf-aig-authorization: Bearer <token>'. Empty: nothing injected.",
        secret=True,
    ),
    Setting(
        "cf_proxy_keys",
        "PROXY_KEYS",
        "",
        parse_proxy_keys,
        "Access keys clients must send as 'Authorization: Bearer <key>': a comma-separated "
        "list, or @path to a file with one key per line ('#' comments and blank lines ignored). "
        "The valid key's Authorization header is removed before forwarding. Empty: no access control.",
        secret=True,
    ),
    Setting(
        "cf_redact",
        "CF_REDACT",
        "on",
        parse_switch,
        "'on' or 'off': after a request is sent upstream, mask secret header values "
        "(Authorization, cf-aig-authorization, x-api-key, api-key) on the flow kept by mitmproxy.",
    ),
    Setting(
        "cf_metrics",
        "CF_METRICS",
        "on",
        parse_switch,
        "'on' or 'off': answer GET /metrics on the reverse listener with Prometheus metrics "
        "(behind the access keys when those are set).",
    ),
)

BY_OPTION = {s.option: s for s in SETTINGS}


def setting_error(setting: Setting, problem: str) -> str:
    """One line naming both the option and the environment variable."""
    return f"cf-gateway: {setting.option} (env {setting.env}) {problem}"


def env_defaults(environ: Mapping[str, str], dotenv: Mapping[str, str | None]) -> dict[str, str]:
    """Option defaults: the environment wins over .env, which wins over the built-in default."""
    out = {}
    for s in SETTINGS:
        value = environ.get(s.env)
        if value is None:
            value = dotenv.get(s.env)
        out[s.option] = s.default if value is None else value
    return out
