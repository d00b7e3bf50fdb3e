"""What reaches a terminal or a log file: escaped controls, masked secrets, rotation-safe files.

Log text carries client-controlled bytes (paths, header lines quoted by mitmproxy's own
error messages), so a control character could forge lines or drive the terminal, and a
malformed header line can put a client's key into an error message. Both are fixed where
every record passes, whatever logger made it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from mitmproxy import log as mitmproxy_log

from cfgw.auth import MASK, mask

log = logging.getLogger("cf_gateway")

REQUEST_LINES = "cf_gateway.requests"
"""The logger of the one summary line per request (a child of "cf_gateway", so it shows wherever
the addon's other lines do)."""

# -- control characters ----------------------------------------------------------------------------


class _Escapes(dict[int, str]):
    """str.translate table escaping every non-printable character as repr() does.

    Filled on demand and bounded: text may hold any of a million code points, and those
    past the bound are worked out again each time rather than kept.
    """

    LIMIT = 4096

    def __init__(self, keep: str = "") -> None:
        super().__init__({ord(c): c for c in keep})

    def __missing__(self, code: int) -> str:
        char = chr(code)
        value = char if char.isprintable() else repr(char)[1:-1]
        if len(self) < self.LIMIT:
            self[code] = value
        return value


_ALL_CONTROLS = _Escapes()
_LOG_CONTROLS = _Escapes(keep="\n\t")  # tracebacks and mitmproxy's multi-line dumps keep their lines


def printable(text: str) -> str:
    """text with every non-printable character (C0, DEL, C1, U+2028, bidi controls...) as a visible
    backslash escape, as repr() writes it; printable non-ASCII stays readable."""
    if text.isprintable():
        return text
    return text.translate(_ALL_CONTROLS)


def _printable_lines(text: str) -> str:
    """printable(), keeping newlines and tabs."""
    if text.isprintable():
        return text
    return text.translate(_LOG_CONTROLS)


# -- secrets ---------------------------------------------------------------------------------------

MIN_SECRET_LENGTH = 6
"""Registered secrets shorter than this are not masked: masking them everywhere would hide
ordinary words and, by where the masks fall, give the secret away anyway."""

# One token of a value: stops at whitespace, quotes, separators, '#' and backslashes (escaped JSON).
_TOK = r"""[^\s'"`,;&#<>(){}\[\]\\]"""
# A value that looks like a credential, for places where the text around it may be prose:
# 8+ characters with a digit or base64 punctuation, or 20+ characters of anything.
_CRED = rf"(?:(?={_TOK}*[0-9+/=]){_TOK}{{8,}}|{_TOK}{{20,}})"
# Names whose value is a secret, with any prefix such as x-, cf-aig-, proxy-, openai_.
_NAME = r"""(?<![\w-])(?:[a-z0-9]+[-_])*
    (?:authorization|api[-_]?key|(?:access|refresh|id|auth|session)[-_]?token|token
      |client[-_]?secret|secret[-_]?key|secret|password|passwd)(?![\w-])"""
_SCHEME = r"(?:bearer|basic|token|digest)"
# Query parameters whose name ends like a secret's (api_key, key, token, auth, sig, X-Amz-Signature...).
_QUERY_NAME = r"""[\w.-]*?(?:key|token|secret|password|passwd|pwd|auth|sig|signature|credentials?)"""
_SHAPES = r"""(?<![\w-])(?:sk-[\w-]{20,}|(?-i:AIza)[\w-]{30,}|gsk_[a-z0-9]{20,}|xai-[a-z0-9]{20,}
    |hf_[a-z0-9]{20,}|gh[pousr]_[a-z0-9]{20,}|github_pat_\w{20,})"""

# Cheap first look, on casefolded text: one of these must be there for any pattern to match.
# Kept to literals (sre searches those fast); "tokens" is not one: every request's log line has it.
_STEMS = (
    r"auth|key|secret|passw|pwd|bearer|basic|token(?!s)|sig|credential"
    r"|sk-|aiza|gsk_|xai-|hf_|gh[pousr]_|github_pat_"
)

# (prefix kept as is, value masked) per alternative; the order decides at equal positions.
_PATTERNS = (
    # authorization: Bearer x / "x-api-key": "x" / api_key=x / b'authorization: x'
    (rf"""{_NAME}\\?['"]?\s*[:=]\s*(?:b?\\?['"])?(?:{_SCHEME}\s+)?""", rf"{_TOK}+"),
    # b'Authorization Bearer x' (mitmproxy's "Invalid header line") / (b'x-api-key', b'x');
    # not a list of names ("authorization, cf-aig-authorization")
    (rf"""{_NAME}\\?['"]?(?:\s+|\s*,\s*)(?:b?\\?['"])?(?:{_SCHEME}\s+)?(?!{_NAME})""", _CRED),
    (r"(?<![\w-])(?:bearer|basic)\s+", _CRED),
    (rf"(?<=[?&]){_QUERY_NAME}=", r"""[^&\s#'"<>\\]+"""),
    ("", _SHAPES),
)


class SecretFilter(logging.Filter):
    """Masks credentials in log records and escapes their control characters (not newlines, tabs).

    The message is formatted once and stored back, so no handler sees the raw text; an
    exception's traceback is folded into the message, since mitmproxy's formatter prints
    exc_info itself and would bypass any masking of exc_text.
    """

    def __init__(self) -> None:
        super().__init__()
        self._state = self._compile(())
        self._factory: _MaskingFactory | None = None
        self._handlers: weakref.WeakSet[logging.Handler] = weakref.WeakSet()

    @staticmethod
    def _compile(secrets: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str], tuple[str, ...]]:
        """(first look, masking regex, secrets): swapped as one, so a record sees one consistent set."""
        stems = [_STEMS, *(re.escape(s.casefold()) for s in secrets)]
        parts = [rf"(?P<p{i}>{prefix})(?P<v{i}>{value})" for i, (prefix, value) in enumerate(_PATTERNS)]
        if secrets:
            parts.append(rf"(?P<secret>(?-i:{'|'.join(re.escape(s) for s in secrets)}))")
        return re.compile("|".join(stems)), re.compile("|".join(parts), re.IGNORECASE | re.VERBOSE), secrets

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """The exact strings to mask wherever they appear (the gateway token, the access keys)."""
        usable: set[str] = set()
        for s in secrets:
            if s and len(s) >= MIN_SECRET_LENGTH and s.strip("*"):  # all stars: the mask itself
                usable.update((s, _printable_lines(s)))
        self._state = self._compile(tuple(sorted(usable, key=len, reverse=True)))  # longest first

    def masked(self, text: str) -> str:
        """text with every credential-looking value and registered secret masked."""
        first_look, regex, secrets = self._state
        if first_look.search(text.casefold()) is None:
            return text
        text = regex.sub(_replace, text)
        for s in secrets:  # a secret overlapping itself or a mask could survive the single pass
            while s in text:  # ends: each pass removes characters other than '*'
                text = text.replace(s, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _MARK, None) is record.msg:
            return True  # masked already (when made, or by another handler's copy of this filter)
        try:
            message = _printable_lines(_capped(_full_message(record)))
            record.msg = self.masked(message)
        except Exception:  # never raise into a logging call; never let raw text through
            record.msg = "(log message withheld: it could not be masked)"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        if record.stack_info:
            try:
                record.stack_info = self.masked(_printable_lines(record.stack_info))
            except Exception:
                record.stack_info = None
        setattr(record, _MARK, record.msg)
        return True


_MARK = "_cfgw_masked"
_TRACEBACKS = logging.Formatter()


MAX_MESSAGE = 64 << 10
"""Characters of one log message kept: mitmproxy logs a malformed request's whole buffer (100 MB
of header lines from a hostile client), which nobody reads and which would take seconds to mask."""
_TOKEN_TAIL = re.compile(r"[\w\-.~+/=]+$")


def _capped(message: str) -> str:
    """The message cut at MAX_MESSAGE, without the token-like run the cut may have split."""
    if len(message) <= MAX_MESSAGE:
        return message
    cut = _TOKEN_TAIL.sub("", message[:MAX_MESSAGE])
    return f"{cut}… [{len(message) - len(cut)} characters not logged]"


def _full_message(record: logging.LogRecord) -> str:
    """The record's message with its traceback, as mitmproxy's and the default formatter print them."""
    try:
        message = record.getMessage()
    except Exception:  # bad arguments: logging would print msg and args raw, so mask them too
        message = f"{record.msg!s} (unformattable log arguments: {record.args!r})"
    if record.exc_info:
        traceback = record.exc_text or _TRACEBACKS.formatException(record.exc_info)
        separator = "" if message.endswith("\n") else "\n"
        message = f"{message}{separator}{traceback}"
    return message


def _replace(m: re.Match[str]) -> str:
    # The value (or secret) group is the last group each alternative closes.
    name = m.lastgroup
    if name == "secret":
        return mask(m.group(0))
    if name and name.startswith("v"):
        return m.group("p" + name[1:]) + mask(m.group(name))
    return m.group(0)  # pragma: no cover - every alternative ends with its value group


class _MaskingFactory:
    """A LogRecord factory masking every record as it is made: covers every logger and every
    handler, including handlers added after install (mitmweb's event store, pytest's)."""

    def __init__(self, previous: Callable[..., logging.LogRecord], secret_filter: SecretFilter) -> None:
        self.previous = previous
        self.secret_filter = secret_filter
        self.active = True

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        if self.active:
            self.secret_filter.filter(record)
        return record


_LEGACY_RELAY: type | None = getattr(mitmproxy_log, "LegacyLogEvents", None)
"""mitmproxy 11 and 12 have it; a release without it has nothing to skip."""


def _skip_request_lines(record: logging.LogRecord) -> bool:
    """Keeps the per-request lines out of mitmproxy's relay for the deprecated ``add_log`` event.

    That relay (``mitmproxy.log.LegacyLogEvents``) formats every record once more and
    schedules an ``add_log`` event through every addon on the event loop: measured, it costs
    more per line than printing it (bench/floor_addon.py), and no built-in addon of mitmproxy
    11 or 12 listens. The terminal, mitmweb's event log and any handler on the root logger
    still get every line; a script on the deprecated ``add_log`` hook sees all other lines.
    """
    return record.name != REQUEST_LINES


def install(secret_filter: SecretFilter) -> None:
    """Mask every record from now on, from any logger, whatever handler prints it.

    Records are masked where they are made (a LogRecord factory), and the filter also sits on
    each handler of the root logger (where mitmproxy's terminal log and event store are) for
    records made some other way (logging.makeLogRecord). Calling it again attaches it to root
    handlers added since. Records logged before install are out of reach.
    """
    for handler in logging.getLogger().handlers:
        handler.addFilter(secret_filter)  # no-op when already there
        if _LEGACY_RELAY is not None and isinstance(handler, _LEGACY_RELAY):
            handler.addFilter(_skip_request_lines)
        secret_filter._handlers.add(handler)
    factory = secret_filter._factory
    if factory is None or not factory.active:
        factory = _MaskingFactory(logging.getLogRecordFactory(), secret_filter)
        logging.setLogRecordFactory(factory)
        secret_filter._factory = factory


def uninstall(secret_filter: SecretFilter) -> None:
    """Undo install(): the addon may be reloaded, and a stale filter must not linger."""
    for handler in list(secret_filter._handlers):
        handler.removeFilter(secret_filter)
        handler.removeFilter(_skip_request_lines)
    secret_filter._handlers.clear()
    factory = secret_filter._factory
    if factory is not None:
        factory.active = False  # someone may have wrapped it since: then it stays, as a pass-through
        if logging.getLogRecordFactory() is factory:
            logging.setLogRecordFactory(factory.previous)
        secret_filter._factory = None


# -- the summary file ------------------------------------------------------------------------------

STDOUT = "-"
WARN_INTERVAL = 60.0  # seconds between warnings about a file we cannot write


class SummaryFile:
    """Appends one line per request to a file for log shippers; survives logrotate.

    Each write checks that the path still names the open file (one stat, about 1 µs,
    cheaper than the write itself), so a file renamed or deleted by a rotation is
    replaced on the next line and no line goes to an unlinked file. I/O errors never
    reach the caller: lines are dropped, counted, reported in a rate-limited warning,
    and the file is opened again on the next write.
    """

    def __init__(self, path: str, *, mode: int = 0o600, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.mode = mode
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._dropped = 0
        self._warned_at: float | None = None
        if path != STDOUT:
            with self._lock:
                self._open()

    def write(self, line: str) -> None:
        """Append line (its control characters escaped, so it stays one line) and a newline."""
        data = printable(line.removesuffix("\n")) + "\n"
        if self.path == STDOUT:
            try:
                sys.stdout.write(data)
                sys.stdout.flush()
            except (OSError, ValueError) as e:  # ValueError: stdout closed
                self._failed("cannot write to standard output", e)
            return
        encoded = data.encode("utf-8", "backslashreplace")
        with self._lock:
            if self._fd is None or self._replaced():
                self._close()
                if not self._open():
                    self._dropped += 1
                    return
            try:
                view = memoryview(encoded)
                while view:
                    view = view[os.write(self._fd, view) :]  # type: ignore[arg-type]
            except OSError as e:
                self._dropped += 1
                self._close()
                self._failed(f"cannot write to {self.path!r}", e)
                return
        if self._dropped:
            self._recovered()

    def reopen(self) -> None:
        """Close and open the path again (on SIGHUP, after an external rotation)."""
        if self.path == STDOUT:
            return
        with self._lock:
            self._close()
            self._open()

    def close(self) -> None:
        """Release the file; a later write opens it again."""
        with self._lock:
            self._close()

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.mode)
        except OSError as e:
            self._failed(f"cannot open {self.path!r}", e)
            return False
        st = os.fstat(fd)
        self._fd, self._identity = fd, (st.st_ino, st.st_dev)
        return True

    def _replaced(self) -> bool:
        """True if the path is gone or names another file than the one open (rotated)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_ino, st.st_dev) != self._identity

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd, self._identity = self._fd, None, None
            try:
                os.close(fd)
            except OSError:
                pass

    def _failed(self, what: str, error: Exception) -> None:
        now = self._clock()
        if self._warned_at is None or now - self._warned_at >= WARN_INTERVAL:
            self._warned_at = now
            reason = getattr(error, "strerror", None) or error
            log.warning(f"cf-gateway: summary log: {what}: {reason}; lines are dropped until it works")

    def _recovered(self) -> None:
        dropped, self._dropped, self._warned_at = self._dropped, 0, None
        log.info(f"cf-gateway: summary log: writing to {self.path!r} again; {dropped} lines were dropped")
