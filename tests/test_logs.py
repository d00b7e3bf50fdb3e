"""Request lines, the secret filter on every line, the rate limit, and the log file."""

from __future__ import annotations

import errno
import json
import logging
import re
import sys

import pytest

from cfgw import logs

RFC3339_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
RECORD = {
    "method": "POST", "path": "/v1/messages", "family": "messages", "api": "gateway",
    "upstream": "https://gateway.ai.cloudflare.com/v1/a/g/anthropic/v1/messages", "status": 200,
    "outcome": "ok", "model": "claude-x", "stream": True, "duration_ms": 812, "bytes": 100,
    "input_tokens": 25, "output_tokens": 42, "cached_tokens": 7, "total_tokens": 74,
    "answer_model": "claude-x",
}  # fmt: skip


def log_record(msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("mitmproxy.proxy.server", logging.INFO, __file__, 1, msg, args, None)


def filtered(msg: str, *args, secrets: tuple[str, ...] = ()) -> str:
    f = logs.SecretFilter()
    f.secrets = secrets
    record = log_record(msg, *args)
    assert f.filter(record)
    return record.getMessage()


def test_filter_masks_configured_secrets():
    assert filtered(
        "sent %s to %s", "tok-secret-1", "x key-secret-2", secrets=("tok-secret-1", "key-secret-2")
    ) == ("sent ******** to x ********")


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: Bearer sk-live-123",
        "cf-aig-authorization: Bearer sk-live-123",
        "x-api-key: sk-live-123",
        "GET /v1/models?api-key=sk-live-123 HTTP/1.1",
        "headers {'authorization': 'Bearer sk-live-123'}",
        '{"X-Api-Key": "sk-live-123"}',
    ],
)
def test_filter_masks_credential_looking_values(line):
    out = filtered(line)
    assert "sk-live-123" not in out and "********" in out


def test_filter_escapes_control_characters_but_keeps_mitmproxys_line_breaks():
    assert filtered("a\x1b[31mred\rb\nsecond line") == "a\\x1b[31mred\\x0db\nsecond line"


def test_text_line():
    assert logs.request_line(RECORD, "text") == (
        "POST /v1/messages messages -> https://gateway.ai.cloudflare.com/v1/a/g/anthropic/v1/messages "
        "200 812ms model=claude-x stream tokens=25 input/42 output cached=7"
    )


def test_text_line_of_a_local_answer():
    record = {**RECORD, "upstream": None, "status": None, "model": None, "stream": False, "error": "refused"}
    line = logs.request_line({k: v for k, v in record.items() if not k.endswith("_tokens")}, "text")
    assert line == "POST /v1/messages messages -> local - 812ms error=refused"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_client_text_cannot_break_the_line(fmt):
    line = logs.request_line({**RECORD, "model": "m\nPOST /forged 200\r\x1b[2J"}, fmt)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line


def test_json_line():
    obj = json.loads(logs.request_line(RECORD, "json"))
    assert RFC3339_MS_UTC.fullmatch(obj.pop("time"))
    assert obj == {k: v for k, v in RECORD.items() if k != "answer_model"}


def test_timestamp_is_rfc3339_utc_with_milliseconds():
    assert RFC3339_MS_UTC.fullmatch(logs.timestamp())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def emfile_record() -> logging.LogRecord:
    record = log_record("accept failed")
    record.exc_info = (OSError, OSError(errno.EMFILE, "Too many open files"), None)
    return record


def test_accept_errors_let_one_record_a_minute_through(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(logs.time, "monotonic", clock)
    limit = logs.AcceptErrors()
    assert limit.filter(emfile_record())
    assert not limit.filter(emfile_record())
    assert not limit.filter(emfile_record())
    clock.now += 60
    record = emfile_record()
    assert limit.filter(record)
    assert record.getMessage() == "accept failed (2 like it suppressed)"


def test_accept_errors_limits_only_running_out_of_descriptors(monkeypatch):
    monkeypatch.setattr(logs.time, "monotonic", Clock())
    limit = logs.AcceptErrors()
    emfile = [log_record("accept failed") for _ in range(2)]
    for record in emfile:
        record.exc_info = (OSError, OSError(errno.EMFILE, "Too many open files"), None)
    assert limit.filter(emfile[0]) and not limit.filter(emfile[1])
    assert limit.filter(log_record("Unhandled error in task.")) and limit.filter(log_record("other"))


def test_filters_are_added_once_and_removed():
    handler, f = logging.NullHandler(), logs.SecretFilter()
    logs.add_filter([handler], f)
    logs.add_filter([handler], f)
    assert handler.filters == [f]
    logs.remove_filter([handler], f)
    assert handler.filters == []


def test_log_file_gets_one_masked_line_per_request(tmp_path):
    secret_filter = logs.SecretFilter()
    secret_filter.secrets = ("tok-secret-1",)
    handler = logs.file_handler(str(tmp_path / "requests.log"), secret_filter)
    logger = logging.getLogger("tests.logs.file")
    logger.addHandler(handler)
    try:
        logger.warning("GET /a tok-secret-1")
        logger.warning("GET /b\x1b")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert (tmp_path / "requests.log").read_text() == "GET /a ********\nGET /b\\x1b\n"


def test_log_file_dash_is_stdout():
    handler = logs.file_handler("-", logs.SecretFilter())
    assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout
