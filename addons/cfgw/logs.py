"""Request lines, the log file, and a filter that masks secrets in every line the process prints.

mitmproxy routes stdlib ``logging`` to its terminal and event log; the filter sits on
those handlers (and the log file's), not on the records of the whole process.
"""

from __future__ import annotations

import errno
import json
import logging
import logging.handlers
import re
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime

from mitmproxy import log as mitmproxy_log

REQUESTS = "cf_gateway.requests"
CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # all but tab, line breaks too
# Credentials a client may put where mitmproxy quotes it: a header line, a query parameter.
CREDENTIAL_RE = re.compile(
    r"(?i)((?:authorization|x-api-key|api-key|cf-aig-authorization)['\"]?\s*[:=,]\s*['\"]?(?:bearer\s+)?)"
    r"[^\s'\",]+"
)


def escape(text: str) -> str:
    """Control characters as escapes, so client bytes cannot forge lines or drive a terminal."""
    return CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def timestamp() -> str:
    """Now in RFC 3339, UTC, with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SecretFilter(logging.Filter):
    """Masks the configured secrets and credential-looking values, and escapes control characters."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        for secret in self.secrets:
            text = text.replace(secret, "********")
        text = CREDENTIAL_RE.sub(r"\1********", text)
        lines = text.split("\n")  # a line break mitmproxy itself puts in stays one
        record.msg, record.args = "\n".join(escape(line) for line in lines), ()
        return True


class AcceptErrors(logging.Filter):
    """Running out of descriptors is logged at most once a minute; other records pass.

    Under a flood of connections asyncio retries accept() up to 100 times a tick and logs
    each failure (mitmproxy relays the event loop's errors as "Unhandled error in task.").
    """

    ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

    def __init__(self, interval: float = 60) -> None:
        super().__init__()
        self.interval = interval
        self.last = -interval
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = (record.exc_info or (None, None))[1]
        if getattr(exc, "errno", None) not in self.ERRNOS:
            return True
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return False
        self.last = now
        if self.suppressed:
            record.msg, record.args = f"{record.getMessage()} ({self.suppressed} like it suppressed)", ()
            self.suppressed = 0
        return True


class NotRequestLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != REQUESTS


NOT_REQUEST_LINES = NotRequestLines()


def legacy_relays() -> list[logging.Handler]:
    """mitmproxy's relay of every log record to the deprecated ``add_log`` event, which runs an
    event through every addon for each line: request lines skip it (a script still on
    ``add_log`` can add a logging handler for them)."""
    return [h for h in logging.getLogger().handlers if isinstance(h, mitmproxy_log.LegacyLogEvents)]


def add_filter(handlers: Iterable[logging.Filterer], f: logging.Filter) -> None:
    for h in handlers:
        if f not in h.filters:
            h.addFilter(f)


def remove_filter(handlers: Iterable[logging.Filterer], f: logging.Filter) -> None:
    for h in handlers:
        h.removeFilter(f)


def file_handler(path: str, secret_filter: SecretFilter) -> logging.Handler:
    """Request lines only, one per line: '-' is standard output; a file is reopened when
    logrotate moves it (WatchedFileHandler)."""
    if path == "-":
        handler: logging.Handler = logging.StreamHandler(sys.stdout)
    else:
        try:
            handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
        except OSError as e:
            raise ValueError(
                f"cf-gateway: cf_log_file (env CF_LOG_FILE) cannot open {path}: {e.strerror}"
            ) from None
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(secret_filter)
    return handler


def request_line(record: dict, fmt: str) -> str:
    """One request as a text line or a JSON object (with a timestamp)."""
    if fmt == "json":
        fields = {k: v for k, v in record.items() if k != "answer_model"}
        return json.dumps({"time": timestamp(), **fields}, separators=(",", ":"))
    return text_line(record)


def text_line(record: dict) -> str:
    words = [
        record["method"],
        record["path"],
        record["family"],
        "->",
        record["upstream"] or "local",
        str(record["status"] or "-"),
        f"{record['duration_ms']}ms",
        *([f"model={record['model']}"] if record.get("model") else []),
        *(["stream"] if record.get("stream") else []),
        *token_words(record),
    ]
    return escape(" ".join(words))


def token_words(record: dict) -> list[str]:
    """'tokens=12 input/34 output' and what else the record knows, as words."""
    tokens = [f"{record[k]} {k.split('_')[0]}" for k in ("input_tokens", "output_tokens") if k in record]
    words = ["tokens=" + "/".join(tokens)] if tokens else []
    extra = ("cached_tokens", "reasoning_tokens", "gateway_code", "error")
    return words + [f"{k.removesuffix('_tokens')}={record[k]}" for k in extra if record.get(k) is not None]
