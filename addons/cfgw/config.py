"""Options of the addon, each declared once: a ``Settings`` field with its variable, default,
parser and help; the mitmproxy options (``cf_<field>``) are derived from those fields.

Every option is a plain ``str`` parsed here, because mitmproxy silently unloads a
script whose typed option fails to parse. Parsers are pure functions that raise
``ValueError``; ``parse_settings`` names the option and its environment variable.
Secrets (the gateway token, the access keys) never sit in an option in clear when
they come from the environment or a file: the option shows where they come from.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
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
    def origin(self) -> str:
        return f"{self.scheme}://{self.hostport}"

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
    value = value.strip() or "default"
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


def parse_token(value: str) -> str | None:
    """The AI Gateway token (or '@/path' to a file holding it), with or without a 'Bearer '
    prefix; never echoed in errors."""
    v = value.strip()
    if v.startswith("@"):
        v = read_file(v, "token").strip()
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
        text = read_file(v, "key")
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


def parse_choice(*choices: str) -> Callable[[str], str]:
    """A parser accepting one of ``choices`` (case-insensitive)."""

    def parse(value: str) -> str:
        v = value.strip().lower()
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return v

    return parse


def parse_log_file(value: str) -> str | None:
    """'' (no file), '-' (standard output) or a path whose directory exists."""
    v = value.strip()
    if not v:
        return None
    if v == "-":
        return v
    path = Path(v).expanduser()
    if not path.parent.is_dir():
        raise ValueError(f"directory {str(path.parent)!r} does not exist")
    return str(path)


# -- secrets: never shown in mitmweb's options, never echoed -----------------------------------

FROM_ENV = "(from {env})"
"""What a secret option holds when its value comes from the environment or .env, or (as
'(from --set cf_token)') when it was given literally and the addon took it out of the option."""


def secret_source(env: str) -> str:
    return FROM_ENV.format(env=env)


def literal_source(option: str) -> str:
    """The key under which a literally given secret is kept, out of mitmproxy's options."""
    return f"--set {option}"


def read_secret(value: str, env: str, environ: Mapping[str, str | None], option: str = "") -> str:
    """Resolve a secret option's placeholder ('(from VAR)', '(from --set option)'); anything else
    (an '@/path/to/file' the parser reads, or a literal) is returned as it is."""
    v = value.strip()
    for source in (env, literal_source(option)):
        if v == secret_source(source):
            found = environ.get(source)
            if found is None:  # never read as "no secret": no keys would mean no access control
                raise ValueError(f"names {source}, which holds nothing here: give the value again")
            return found.strip()
    return v


def hide_literal_secrets(values: dict[str, str], store: dict[str, str | None]) -> dict[str, str]:
    """Take secrets given literally (``--set cf_token=...``, or typed into mitmweb's Options) out
    of ``values`` into ``store``; returns {option: placeholder} to put in the options instead, so
    mitmweb's Options page and API never show them."""
    hidden = {}
    for o in OPTIONS:
        v = values[o.name].strip()
        if o.spec.secret and v and not v.startswith("@") and not v.startswith("(from "):
            key = literal_source(o.name)
            store[key] = v
            values[o.name] = hidden[o.name] = secret_source(key)
    return hidden


def read_file(value: str, what: str) -> str:
    """The text of the file an '@/path' value names (a BOM, as Windows editors add, dropped)."""
    path = Path(value[1:]).expanduser()
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {what} file {str(path)!r}: {e.__class__.__name__}") from None


# -- the options, each declared once -----------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """How one option is read: its environment variable, default, parser and help."""

    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False


def option(env: str, default: str, parse: Callable[[str], Any], help: str, secret: bool = False) -> Any:
    """A Settings field that is also a mitmproxy option ``cf_<field>``; secrets stay out of repr."""
    return field(metadata={"spec": Spec(env, default, parse, help, secret)}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Every option, parsed. Each field is declared once here: name, variable, default, parser, help.

    Rebuilt by ``configure`` as a whole (a bad value leaves the old Settings in force);
    hooks only read it.
    """

    account_id: str = option(
        "ACCOUNT_ID",
        "",
        parse_account_id,
        "Cloudflare account id: 32 lowercase hex characters. Required.",
    )
    gateway_id: str = option(
        "GATEWAY_ID",
        "default",
        parse_gateway_id,
        "AI Gateway id: 1-64 characters of a-z, 0-9, '_' joined by single '-'. "
        "Default 'default': the authenticated gateway Cloudflare creates on first use.",
    )
    token: str | None = option(
        "CF_AIG_TOKEN",
        "",
        parse_token,
        "Cloudflare AI Gateway token, sent as 'cf-aig-authorization: Bearer <token>'. "
        "Give it as CF_AIG_TOKEN (environment or .env) or '@/path/to/file': mitmweb shows only the source.",
        secret=True,
    )
    proxy_keys: AccessKeys | None = option(
        "PROXY_KEYS",
        "",
        parse_proxy_keys,
        "Access keys clients must send ('Authorization: Bearer <key>' or 'x-api-key: <key>'): a "
        "comma-separated list, or @path to a file with one key per line ('#' comments ignored). "
        "The key's header is removed before forwarding. Empty: no access control.",
        secret=True,
    )
    open_proxy: bool = option(
        "CF_OPEN_PROXY",
        "off",
        parse_switch,
        "'on' lets a proxy that injects the gateway token listen on a non-loopback address without "
        "access keys (anyone who reaches it spends on your account). Default 'off': refuse to start.",
    )
    routes: str = option(
        "CF_ROUTES",
        "auto",
        parse_choice("auto", "compat"),
        "'auto': /v1/messages to the gateway's anthropic endpoint, /v1/responses to its openai "
        "endpoint, everything else to compat. 'compat': every request to compat.",
    )
    provider_keys: str = option(
        "CF_PROVIDER_KEYS",
        "auto",
        parse_choice("auto", "forward", "drop"),
        "Clients' own provider keys (Authorization, x-api-key): 'forward' them to the provider, or "
        "'drop' them (the gateway's stored keys or Unified Billing pay; any Authorization reaching the "
        "gateway bypasses those). 'auto': drop when the proxy injects a gateway token, else forward. "
        "With access keys those headers carry the proxy key and are always dropped.",
    )
    client_gateway_headers: str = option(
        "CF_CLIENT_GATEWAY_HEADERS",
        "auto",
        parse_choice("auto", "allow", "strip"),
        "Whether clients' own cf-aig-* headers reach the gateway: 'allow', 'strip', or 'auto' "
        "(strip with access keys, allow in pass-through). The proxy's token always wins in key mode.",
    )
    gateway_errors: str = option(
        "CF_GATEWAY_ERRORS",
        "reshape",
        parse_choice("reshape", "raw"),
        "'reshape': the gateway's own errors are given the client API's error shape (status, headers, "
        "code and message kept), so SDKs show their message. 'raw': passed on as the gateway sent them.",
    )
    base_url: Upstream = option(
        "CF_BASE_URL",
        DEFAULT_BASE_URL,
        parse_base_url,
        f"Gateway origin as scheme://host[:port], no path, query or credentials. Default {DEFAULT_BASE_URL}.",
    )
    log_requests: bool = option(
        "CF_LOG_REQUESTS",
        "on",
        parse_switch,
        "'on' or 'off': one summary line per request in the event log. Errors are always logged.",
    )
    log_format: str = option(
        "CF_LOG_FORMAT", "text", parse_choice("text", "json"), "'text' or 'json': the summary line's format."
    )
    log_file: str | None = option(
        "CF_LOG_FILE",
        "",
        parse_log_file,
        "Append every summary line (and nothing else) to this file, flushed per line, reopened when "
        "rotated or on SIGHUP; '-' for standard output (mitmproxy's own output then goes to standard "
        "error; add --set termlog_verbosity=warn to keep its first 'Loading script' line off standard "
        "output too). Empty: the event log only.",
    )
    record_limit: int = option(
        "CF_RECORD_LIMIT",
        "8m",
        parse_size,
        "Size such as 8m, 512k or 0: how much of each streamed (SSE) response is kept on the flow "
        "for mitmweb and flow files. The client always gets every byte; 0 keeps nothing.",
    )
    redact: bool = option(
        "CF_REDACT",
        "on",
        parse_switch,
        "'on' or 'off': once a request is sent, mask secret header values (authorization, "
        "proxy-authorization, cf-aig-authorization, x-api-key, api-key) on the flow mitmproxy keeps.",
    )
    metrics: bool = option(
        "CF_METRICS",
        "on",
        parse_switch,
        "'on' or 'off': answer GET /metrics with Prometheus metrics (behind the access keys when set).",
    )

    @property
    def gateway_prefix(self) -> str:
        """The upstream path every route starts with."""
        return f"/v1/{self.account_id}/{self.gateway_id}"

    @cached_property
    def key_digests(self) -> tuple[bytes, ...]:
        return (
            tuple(hashlib.sha256(k.encode()).digest() for k in self.proxy_keys.keys)
            if self.proxy_keys
            else ()
        )

    @property
    def drop_client_keys(self) -> bool:
        """Whether clients' Authorization / x-api-key headers are removed before forwarding."""
        if self.proxy_keys is not None or self.provider_keys == "drop":
            return True
        return self.provider_keys == "auto" and self.token is not None

    @property
    def strip_client_gateway_headers(self) -> bool:
        if self.client_gateway_headers == "auto":
            return self.proxy_keys is not None
        return self.client_gateway_headers == "strip"

    def describe(self) -> str:
        """The active mode for the startup line, never a secret."""
        modes = []
        if self.proxy_keys:
            n = len(self.proxy_keys.keys)
            modes.append(f"access keys: {n} key{'s' if n != 1 else ''} ({self.proxy_keys.source})")
        if self.token:
            modes.append("gateway token injected")
        else:
            modes.append(
                "no gateway token (requests carry none unless clients send cf-aig-authorization; "
                "authenticated gateways, which all new ones are, answer 401/2009: set CF_AIG_TOKEN)"
            )
        if not self.proxy_keys:
            modes.append(
                "no access keys; clients' Authorization/x-api-key removed (stored keys or Unified Billing "
                "pay; cf_provider_keys=forward sends your own provider keys)"
                if self.drop_client_keys
                else "pass-through (clients' own provider keys forwarded)"
            )
        return "; ".join(modes)


@dataclass(frozen=True)
class Option:
    """A Settings field seen as a mitmproxy option."""

    name: str
    field: str
    spec: Spec


OPTIONS: tuple[Option, ...] = tuple(
    Option(f"cf_{f.name}", f.name, f.metadata["spec"]) for f in fields(Settings)
)
BY_OPTION = {o.name: o for o in OPTIONS}


def option_error(o: Option, problem: str) -> str:
    """One line naming both the option and the environment variable."""
    return f"cf-gateway: {o.name} (env {o.spec.env}) {problem}"


def option_defaults(environ: Mapping[str, str], dotenv: Mapping[str, str | None]) -> dict[str, str]:
    """Option defaults: the environment wins over .env, which wins over the built-in default.

    Secrets found there become the placeholder '(from VAR)', so mitmweb never shows them.
    """
    out = {}
    for o in OPTIONS:
        value = environ.get(o.spec.env)
        if value is None:
            value = dotenv.get(o.spec.env)
        if value is None or not value.strip():  # 'CF_ROUTES=' in .env means the default
            out[o.name] = o.spec.default
        elif o.spec.secret and value.strip() and not value.strip().startswith("@"):
            out[o.name] = secret_source(o.spec.env)
        else:
            out[o.name] = value
    return out


def parse_settings(values: Mapping[str, str], secrets: Mapping[str, str | None]) -> Settings:
    """Parse every option; ValueError names the first bad option and its variable.

    ``secrets`` is where '(from VAR)' placeholders are looked up (the environment, then .env).
    """
    parsed = {}
    for o in OPTIONS:
        try:
            raw = values[o.name]
            if o.spec.secret:
                raw = read_secret(raw, o.spec.env, secrets, o.name)
            parsed[o.field] = o.spec.parse(raw)
        except ValueError as e:
            raise ValueError(option_error(o, str(e))) from None
    return Settings(**parsed)
