"""Log hygiene (cfgw.logs): escaped controls, masked secrets in every record, the summary file."""

from __future__ import annotations

import io
import logging
import os
import string
import sys
import time
import uuid
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy.log import LegacyLogEvents, MitmFormatter

from cfgw import logs
from cfgw.logs import SecretFilter, SummaryFile, printable

# Registered secrets: distinctive, and shaped like nothing the patterns mask by themselves.
TOKEN = "cfat.Tq8RwE3yUiOpLkJhGfDsZx"
KEY = "pk.alpha.Qz7vWx"

# -- printable -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /v1/\x1b[31mFORGED\x1b[0m\b\b", r"GET /v1/\x1b[31mFORGED\x1b[0m\x08\x08"),
        ("a\nb\r\tc\x00\x7f", r"a\nb\r\tc\x00\x7f"),
        ("C1 \x85 \x9b", r"C1 \x85 \x9b"),
        ("line\u2028sep\u2029par", r"line\u2028sep\u2029par"),
        ("bidi \u202egnp.exe", r"bidi \u202egnp.exe"),
        ("nbsp\xa0zwj\u200d", r"nbsp\xa0zwj\u200d"),
        ("lone \ud800 surrogate", r"lone \ud800 surrogate"),
        ("tag \U000e0041", r"tag \U000e0041"),
        ("café · 東京 ✓", "café · 東京 ✓"),
        (r"back\slash 'quotes' \"", r"back\slash 'quotes' \""),
        ("", ""),
    ],
)
def test_printable(text, expected):
    assert printable(text) == expected


def test_printable_returns_printable_text_itself():
    text = "GET /v1/chat/completions 200 model=@cf/meta/llama"
    assert printable(text) is text


@given(st.text())
def test_printable_output_is_printable_and_matches_repr(text):
    out = printable(text)
    assert out.isprintable()
    assert out == "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


# -- masking ---------------------------------------------------------------------------------------

SHAPES = [
    # mitmproxy's "Invalid header line" for a header line without a colon
    (
        "Invalid header line: b'Authorization Bearer sk-proj-abcdefghij7890'",
        "Invalid header line: b'Authorization Bearer ********7890'",
    ),
    ("Invalid header line: b'x-api-key abcdefgh12345'", "Invalid header line: b'x-api-key ********'"),
    (
        "Bad HTTP request line: b'GET /v1/models?api_key=AIzaSy-demo.0123456789abcdefghqrstu HTTP/1.1'",
        "Bad HTTP request line: b'GET /v1/models?api_key=********rstu HTTP/1.1'",
    ),
    ("authorization: Bearer abc", "authorization: Bearer ********"),
    ("AUTHORIZATION:Basic YWJjOmRlZg==", "AUTHORIZATION:Basic ********"),
    ("Proxy-Authorization: Basic YWJjOmRlZg==", "Proxy-Authorization: Basic ********"),
    ("cf-aig-authorization: Bearer 0123456789abcdef0123", "cf-aig-authorization: Bearer ********0123"),
    ("x-api-key: abcdef", "x-api-key: ********"),
    ("X-Api-Key=abcdef", "X-Api-Key=********"),
    ("api-key: 0123456789abcdef0123456789abcdef", "api-key: ********cdef"),
    ("x-goog-api-key: AIzaXX", "x-goog-api-key: ********"),
    (
        '{"authorization": "Bearer xyz", "model": "gpt-4o"}',
        '{"authorization": "Bearer ********", "model": "gpt-4o"}',
    ),
    ('{"x-api-key":"abc","n":1}', '{"x-api-key":"********","n":1}'),
    (r"body {\"api_key\": \"abc123\"}", r"body {\"api_key\": \"********\"}"),
    ("{'api-key': 'abc'}", "{'api-key': '********'}"),
    ("b'authorization: Bearer abc'", "b'authorization: Bearer ********'"),
    (
        "Headers[(b'x-api-key', b'abcdefgh12345'), (b'host', b'example.com')]",
        "Headers[(b'x-api-key', b'********'), (b'host', b'example.com')]",
    ),
    ("OPENAI_API_KEY=sk-abc password: hunter2", "OPENAI_API_KEY=******** password: ********"),
    ("client_secret=xyz access_token=abc", "client_secret=******** access_token=********"),
    ("sent Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig to upstream", "sent Bearer ********.sig to upstream"),
    ("header was basic dXNlcjpwYXNzd29yZA==", "header was basic ********ZA=="),
    ("/v1/x?key=foo&sig=bar&model=m&max_tokens=3", "/v1/x?key=********&sig=********&model=m&max_tokens=3"),
    ("/v1/x?model=m&access_token=abc#frag", "/v1/x?model=m&access_token=********#frag"),
    (
        "/x?apikey=a&auth=b&token=c&password=d&secret=e",
        "/x?apikey=********&auth=********&token=********&password=********&secret=********",
    ),
    ("/x?X-Amz-Signature=deadbeef&X-Goog-Api-Key=k", "/x?X-Amz-Signature=********&X-Goog-Api-Key=********"),
    # (shapes a little shorter than real keys, or with a non-ASCII letter: no secret scanner flags them)
    ("key sk-ant-api03-abcdefghij", "key ********ghij"),
    ("sk-abcdefghijklmnopq0123 leaked", "********0123 leaked"),
    ("(AIzaSyA12345678é0abcdefghijklmnopqrstu)", "(********rstu)"),
    ("gsk_abcdefghijklmnopqrstuvwxyz", "********wxyz"),
    ("xai-abcdefghijklmnopqrstuvwxyz hf_abcdefghijklmnopqrstuvwxyz", "********wxyz ********wxyz"),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123", "********0123"),
    # registered secrets, wherever they are
    (f"token {TOKEN} here", "token ********DsZx here"),
    (f"path=/v1/{KEY}/chat", "path=/v1/********/chat"),
    (f"x{TOKEN}{KEY}y", "x********DsZx********y"),
]

INNOCUOUS = [
    "cf-gateway: flow 1f2e: POST /v1/chat/completions 200 model=gpt-4o 123ms tokens=12 in/34 out",
    "cf-gateway: requests go to https://gateway.ai.cloudflare.com/v1/acct/gw/compat/...; access keys: 2 keys",
    "401: missing or invalid authorization header; x-api-key rejected",
    "Basic auth is not supported; send a bearer token",
    "masked headers: authorization, proxy-authorization, cf-aig-authorization, x-api-key, api-key",
    "('authorization', 'cf-aig-authorization', 'x-api-key')",
    "task-abcdefghijklmnopqrstuvw disk-0123456789abcdefghijk",
    "prompt_tokens=12 completion_tokens=34 total_tokens=46 max_tokens=100",
    "/v1/models?monkeys=1&tokens=5&keyword=x",
    "[127.0.0.1:50000] client connect",
    "café · ✓ multi\nline\twith tab",
    "",
]


@pytest.fixture
def secret_filter():
    f = SecretFilter()
    f.set_secrets([TOKEN, KEY])
    return f


@pytest.mark.parametrize(("text", "expected"), SHAPES)
def test_masked_shapes(secret_filter, text, expected):
    assert secret_filter.masked(text) == expected


@pytest.mark.parametrize("text", INNOCUOUS)
def test_masked_leaves_innocuous_text_alone(secret_filter, text):
    assert secret_filter.masked(text) == text


def test_masked_twice_is_masked_once(secret_filter):
    for _text, expected in SHAPES:
        assert secret_filter.masked(expected) == expected


def test_set_secrets_ignores_empty_short_and_all_star_values():
    f = SecretFilter()
    f.set_secrets(["", "abc", "abcde", "******", "abcdef"])
    assert f.masked("abc abcde ****** abcdef") == "abc abcde ****** ********"
    f.set_secrets([])
    assert f.masked("abcdef") == "abcdef"


def test_secret_overlapping_itself_does_not_survive():
    # The tail kept by the mask ("00ab") followed by the rest of the text could spell the
    # secret again; the last pass catches it.
    secret = "ab" + "0" * 12 + "ab"
    f = SecretFilter()
    f.set_secrets([secret])
    out = f.masked(secret + secret[2:])
    assert secret not in out
    assert out == "********00" + "********"


SECRET_CHARS = string.ascii_letters + string.digits + string.punctuation


@settings(max_examples=300, deadline=None)
@given(
    secret=st.text(alphabet=SECRET_CHARS, min_size=logs.MIN_SECRET_LENGTH, max_size=40).filter(
        lambda s: s.strip("*")
    ),
    before=st.text(max_size=60),
    after=st.text(max_size=60),
)
def test_registered_secret_never_survives(secret, before, after):
    f = SecretFilter()
    f.set_secrets([secret])
    assert secret not in f.masked(before + secret + after)
    record = logging.LogRecord("any", logging.INFO, __file__, 1, "%s", (before + secret + after,), None)
    f.filter(record)
    assert secret not in record.getMessage()


@settings(max_examples=300, deadline=None)
@given(message=st.text(), args=st.tuples(st.text()) | st.just(()))
def test_filter_never_raises_and_leaves_only_newlines_and_tabs(message, args):
    record = logging.LogRecord("any", logging.INFO, __file__, 1, message, args, None)
    assert SecretFilter().filter(record) is True
    assert record.args is None
    assert record.getMessage().replace("\n", "").replace("\t", "").isprintable()


@pytest.mark.parametrize(
    "hostile",
    [
        "a-" * 100_000,
        "?" + "a" * 200_000,
        "authorization " + "1" * 200_000,
        "Bearer " * 30_000,
        "x-api-key: " * 20_000,
        "&key=" * 40_000,
        "sk-" + "a-" * 100_000,
    ],
)
def test_masked_hostile_input_is_linear(secret_filter, hostile):
    start = time.perf_counter()
    secret_filter.masked(hostile)
    assert time.perf_counter() - start < 1.0


# -- the filter on real loggers --------------------------------------------------------------------


class Capture:
    """A root handler, as mitmproxy's terminal log and event store are."""

    def __init__(self, formatter: logging.Formatter | None = None) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter or logging.Formatter("%(name)s|%(message)s"))

    @property
    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def root():
    """The root logger at DEBUG (as mitmproxy sets it), restored afterwards."""
    logger = logging.getLogger()
    level, handlers = logger.level, list(logger.handlers)
    logger.setLevel(logging.DEBUG)
    yield logger
    logger.setLevel(level)
    for h in list(logger.handlers):
        if h not in handlers:
            logger.removeHandler(h)


@pytest.fixture
def installed(root, secret_filter):
    """A capture handler on root, then the filter installed; uninstalled afterwards."""
    capture = Capture()
    root.addHandler(capture.handler)
    factory = logging.getLogRecordFactory()
    logs.install(secret_filter)
    yield capture
    logs.uninstall(secret_filter)
    assert logging.getLogRecordFactory() is factory


def test_filter_masks_records_from_every_logger(installed):
    logging.getLogger("mitmproxy.proxy.server").warning(
        "Invalid header line: b'Authorization Bearer sk-proj-abcdefghij7890'"
    )
    logging.getLogger("cf_gateway").info(f"flow 1: token {TOKEN}")
    logging.getLogger().info("root: x-api-key: abcdef")
    late = logging.getLogger(f"tests.logs.late.{uuid.uuid4().hex}")  # made after install
    late.debug("late ?api_key=abc&model=m")
    assert installed.text == (
        "mitmproxy.proxy.server|Invalid header line: b'Authorization Bearer ********7890'\n"
        "cf_gateway|flow 1: token ********DsZx\n"
        "root|root: x-api-key: ********\n"
        f"{late.name}|late ?api_key=********&model=m\n"
    )


def test_filter_reaches_handlers_added_after_install(installed, root):
    later = Capture()
    root.addHandler(later.handler)
    child_only = Capture()  # a handler on a non-root logger, which root's handlers never see
    child = logging.getLogger(f"tests.logs.child.{uuid.uuid4().hex}")
    child.addHandler(child_only.handler)
    child.propagate = False
    logging.getLogger("cf_gateway").info("x-api-key: abcdef")
    child.info("Bearer abcdefgh12345")
    assert later.text == "cf_gateway|x-api-key: ********\n"
    assert child_only.text == f"{child.name}|Bearer ********\n"


def test_filter_formats_args_once(installed):
    logging.getLogger("cf_gateway").info("key %s for %s (%d)", KEY, "gpt-4o", 3)
    logging.getLogger("cf_gateway").info(
        "%(who)s sent %(what)s", {"who": "client", "what": f"Bearer {TOKEN}"}
    )
    assert (
        installed.text
        == "cf_gateway|key ******** for gpt-4o (3)\ncf_gateway|client sent Bearer ********DsZx\n"
    )


def test_filter_leaves_plain_records_as_they_were(installed):
    logging.getLogger("cf_gateway").info("flow %s: %d ms", "1f2e", 12)
    assert installed.text == "cf_gateway|flow 1f2e: 12 ms\n"


def test_filter_escapes_controls_but_keeps_newlines_and_tabs(installed):
    logging.getLogger("mitmproxy").info("dump:\n\tGET /v1/\x1b[31mX\x1b[0m\r\n\tx-api-key: abcdef\u2028")
    assert installed.text == (
        "mitmproxy|dump:\n\tGET /v1/\\x1b[31mX\\x1b[0m\\r\n\tx-api-key: ********\\u2028\n"
    )


def test_filter_masks_bad_format_arguments_without_raising(installed):
    logging.getLogger("cf_gateway").info("%d items", f"Bearer {TOKEN}")
    assert installed.text == ("cf_gateway|%d items (unformattable log arguments: ('Bearer ********DsZx',))\n")


def raise_bad_header():
    raise ValueError("Invalid header line: b'Authorization Bearer sk-proj-abcdefghij7890'")


@pytest.mark.parametrize("formatter", [logging.Formatter("%(message)s"), MitmFormatter(colorize=False)])
def test_filter_masks_tracebacks(root, secret_filter, formatter):
    # mitmproxy logs hook exceptions with exc_info, and its formatter prints exc_info itself.
    capture = Capture(formatter)
    root.addHandler(capture.handler)
    logs.install(secret_filter)
    try:
        try:
            raise_bad_header()
        except ValueError as e:
            logging.getLogger("mitmproxy.addonmanager").error(f"Addon error: {e}", exc_info=True)
    finally:
        logs.uninstall(secret_filter)
    text = capture.text
    if isinstance(formatter, MitmFormatter):
        assert text.startswith("[") and "] Addon error" in text.splitlines()[0]
        text = text.split("] ", 1)[1]
    lines = text.splitlines()
    assert lines[0] == "Addon error: Invalid header line: b'Authorization Bearer ********7890'"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: Invalid header line: b'Authorization Bearer ********7890'"
    assert "sk-proj" not in text
    assert text.count("Traceback") == 1


def test_filter_masks_stack_info(installed):
    logging.getLogger("cf_gateway").info("x-api-key: abcdef", stack_info=True)
    lines = installed.text.splitlines()
    assert lines[0] == "cf_gateway|x-api-key: ********"
    assert lines[1] == "Stack (most recent call last):"


def test_records_made_without_the_factory_are_masked_by_the_handler_filter(installed):
    record = logging.makeLogRecord({"name": "remote", "msg": "api_key=%s", "args": ("abc",), "levelno": 20})
    installed.handler.handle(record)
    assert installed.text == "remote|api_key=********\n"


def test_install_is_idempotent_and_uninstall_is_clean(root, secret_filter):
    capture = Capture()
    root.addHandler(capture.handler)
    factory = logging.getLogRecordFactory()
    logs.install(secret_filter)
    ours = logging.getLogRecordFactory()
    logs.install(secret_filter)
    assert logging.getLogRecordFactory() is ours
    assert capture.handler.filters == [secret_filter]
    logs.uninstall(secret_filter)
    assert logging.getLogRecordFactory() is factory
    assert capture.handler.filters == []
    logging.getLogger("cf_gateway").info("x-api-key: abcdef")
    assert capture.text == "cf_gateway|x-api-key: abcdef\n"
    logs.uninstall(secret_filter)  # twice: harmless


def test_request_lines_skip_only_mitmproxys_deprecated_add_log_relay(root, secret_filter):
    """The relay costs more per line than printing it; every other handler still gets the lines."""
    events: list[str] = []
    master = SimpleNamespace(
        event_loop=SimpleNamespace(call_soon_threadsafe=lambda fn, hook: events.append(hook.entry.msg)),
        addons=SimpleNamespace(trigger=None),
    )
    relay = LegacyLogEvents(master)  # type: ignore[arg-type]
    capture = Capture()
    root.addHandler(relay)
    root.addHandler(capture.handler)
    logs.install(secret_filter)
    logging.getLogger(logs.REQUEST_LINES).info("POST /v1/chat/completions chat 200")
    logging.getLogger("cf_gateway").info("cf-gateway: requests go to ...")
    assert [e.partition("] ")[2] for e in events] == ["cf-gateway: requests go to ..."]  # "[time] ..."
    assert capture.text == (
        "cf_gateway.requests|POST /v1/chat/completions chat 200\ncf_gateway|cf-gateway: requests go to ...\n"
    )
    logs.uninstall(secret_filter)
    assert relay.filters == []
    logging.getLogger(logs.REQUEST_LINES).info("after")
    assert events[-1].endswith("] after")


def test_uninstall_under_a_later_factory_leaves_a_pass_through(root, secret_filter):
    capture = Capture()
    root.addHandler(capture.handler)
    original = logging.getLogRecordFactory()
    logs.install(secret_filter)
    ours = logging.getLogRecordFactory()

    def someone_elses(*args, **kwargs):
        return ours(*args, **kwargs)

    logging.setLogRecordFactory(someone_elses)
    try:
        logs.uninstall(secret_filter)
        assert logging.getLogRecordFactory() is someone_elses
        logging.getLogger("cf_gateway").info("x-api-key: abcdef")
        assert capture.text == "cf_gateway|x-api-key: abcdef\n"
        logs.install(secret_filter)  # reload: a fresh wrapper, masking again
        logging.getLogger("cf_gateway").info("x-api-key: abcdef")
        assert capture.text.endswith("cf_gateway|x-api-key: ********\n")
        logs.uninstall(secret_filter)
    finally:
        logging.setLogRecordFactory(original)


def test_set_secrets_after_install_applies_to_later_records(installed, secret_filter):
    secret_filter.set_secrets(["brand-new-secret"])
    logging.getLogger("cf_gateway").info(f"{TOKEN} brand-new-secret")
    assert installed.text == f"cf_gateway|{TOKEN} ********cret\n"


# -- the summary file ------------------------------------------------------------------------------


def read(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_summary_lines_are_appended(tmp_path):
    path = tmp_path / "summary.log"
    path.write_text("earlier\n", encoding="utf-8")
    out = SummaryFile(str(path))
    out.write("one")
    out.write("two café ·\n")
    out.write("three\nforged\x1b[2K")
    out.close()
    assert path.read_bytes() == "earlier\none\ntwo café ·\nthree\\nforged\\x1b[2K\n".encode()


def test_summary_file_is_created_private(tmp_path):
    path = tmp_path / "summary.log"
    SummaryFile(str(path)).close()
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_summary_rotation_by_rename(tmp_path):
    path = tmp_path / "summary.log"
    out = SummaryFile(str(path))
    out.write("1")
    out.write("2")
    os.rename(path, tmp_path / "summary.log.1")
    out.write("3")
    out.write("4")
    out.close()
    assert read(tmp_path / "summary.log.1") == "1\n2\n"
    assert read(path) == "3\n4\n"


def test_summary_rotation_by_delete(tmp_path):
    path = tmp_path / "summary.log"
    out = SummaryFile(str(path))
    out.write("1")
    os.unlink(path)
    out.write("2")
    out.close()
    assert read(path) == "2\n"


def test_summary_file_replaced_by_another(tmp_path):
    path = tmp_path / "summary.log"
    out = SummaryFile(str(path))
    out.write("1")
    fresh = tmp_path / "fresh"
    fresh.write_text("", encoding="utf-8")
    os.replace(fresh, path)
    out.write("2")
    out.close()
    assert read(path) == "2\n"


def test_summary_reopen_creates_the_new_file_at_once(tmp_path):
    path = tmp_path / "summary.log"
    out = SummaryFile(str(path))
    out.write("1")
    os.rename(path, tmp_path / "summary.log.1")
    out.reopen()  # what SIGHUP does after logrotate's rename
    assert read(path) == ""
    out.write("2")
    out.close()
    assert read(tmp_path / "summary.log.1") == "1\n"
    assert read(path) == "2\n"


def test_summary_write_after_close_opens_again(tmp_path):
    path = tmp_path / "summary.log"
    out = SummaryFile(str(path))
    out.close()
    out.write("1")
    out.close()
    assert read(path) == "1\n"


def test_summary_to_stdout(capsys):
    out = SummaryFile("-")
    out.write("one")
    out.write("two\x07")
    out.reopen()
    out.close()
    assert capsys.readouterr().out == "one\ntwo\\x07\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warnings_in(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cf_gateway"]


def test_summary_in_missing_directory_warns_once_and_recovers(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cf_gateway")
    directory = tmp_path / "not-yet"
    path = directory / "summary.log"
    clock = Clock()
    out = SummaryFile(str(path), clock=clock)
    out.write("lost 1")
    out.write("lost 2")
    assert warnings_in(caplog) == [
        f"cf-gateway: summary log: cannot open {str(path)!r}: No such file or directory; "
        "lines are dropped until it works"
    ]
    clock.now += logs.WARN_INTERVAL
    out.write("lost 3")
    assert len(warnings_in(caplog)) == 2
    directory.mkdir()
    out.write("kept")
    out.close()
    assert read(path) == "kept\n"
    assert warnings_in(caplog)[-1] == (
        f"cf-gateway: summary log: writing to {str(path)!r} again; 3 lines were dropped"
    )


def test_summary_path_that_is_a_directory_does_not_raise(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="cf_gateway")
    out = SummaryFile(str(tmp_path))
    out.write("x")
    out.reopen()
    out.close()
    assert len(warnings_in(caplog)) == 1
    assert "Is a directory" in warnings_in(caplog)[0]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_summary_write_error_does_not_raise(caplog):
    caplog.set_level(logging.WARNING, logger="cf_gateway")
    out = SummaryFile("/dev/full")
    out.write("x")
    out.write("y")
    out.close()
    assert warnings_in(caplog) == [
        "cf-gateway: summary log: cannot write to '/dev/full': No space left on device; "
        "lines are dropped until it works"
    ]


def test_summary_closed_stdout_does_not_raise(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="cf_gateway")
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdout", closed)
    SummaryFile("-").write("x")
    assert len(warnings_in(caplog)) == 1


def test_a_huge_message_is_cut_before_masking_and_never_ends_in_half_a_secret():
    """mitmproxy logs a malformed request's whole buffer: 100 MB of header lines from one client."""
    f = SecretFilter()
    f.set_secrets(["sk-secret-token-123456789"])
    line = "authorization: Bearer sk-secret-token-123456789\r\n"
    record = logging.LogRecord(
        "mitmproxy", logging.INFO, "", 0, "Invalid request: " + line * 400_000, None, None
    )
    f.filter(record)
    assert len(record.msg) < logs.MAX_MESSAGE + 100
    assert record.msg.endswith("characters not logged]")
    assert "sk-secret" not in record.msg and "123456789" not in record.msg
    cut = "x" * (logs.MAX_MESSAGE - 5) + " sk-secret-token-123456789"  # a secret split by the cut
    record = logging.LogRecord("mitmproxy", logging.INFO, "", 0, cut, None, None)
    f.filter(record)
    assert "sk-se" not in record.msg and record.msg.endswith(" … [25 characters not logged]")
