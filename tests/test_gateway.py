"""The addon's hooks end to end, in-process: requestheaders -> request -> responseheaders -> response."""

from __future__ import annotations

import json
import logging
import re

import pytest
from mitmproxy import exceptions, flow, http, io
from mitmproxy.test import tflow

from cfgw import auth
from cfgw.stream import Recorder
from tests import flows
from tests.flows import GATEWAY_PREFIX, REST_PREFIX, json_response, reverse_flow, send

TOKEN = "aig-token-0123456789"
API_TOKEN = "cf-api-token-0123456789"
WITH_TOKEN = {"env": {"CF_AIG_TOKEN": TOKEN}, "cf_token": "(from CF_AIG_TOKEN)"}
REST = {
    "env": {"CLOUDFLARE_API_TOKEN": API_TOKEN},
    "cf_api": "rest",
    "cf_api_token": "(from CLOUDFLARE_API_TOKEN)",
}
CHAT_ANSWER = {"model": "gpt-4o-2024", "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                                                                "total_tokens": 15}}  # fmt: skip


@pytest.fixture(autouse=True)
def request_lines_captured(caplog):
    caplog.set_level(logging.INFO, "cf_gateway.requests")


def request_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cf_gateway.requests"]


def sent(gw, f):
    """The flow as it leaves for the upstream: after requestheaders and request."""
    gw.requestheaders(f)
    gw.request(f)
    return f


def test_forwarded_flow_is_aimed_upstream_with_the_token():
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        f = sent(gw, reverse_flow(body={"model": "openai/gpt-4o"}, headers={"authorization": "Bearer sk-x"}))
        assert f.request.url == GATEWAY_PREFIX + "/compat/chat/completions"
        assert f.request.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"
        assert "authorization" not in f.request.headers
        assert f.request.headers["accept-encoding"] == "identity"
        assert f.request.host_header == "gateway.ai.cloudflare.com"


def test_rest_flow_gets_the_api_token_and_an_author_prefixed_model():
    with flows.loaded(**REST) as (_, gw):
        f = sent(
            gw, reverse_flow("/v1/messages?beta=true", body={"model": "claude-x"}, headers={"x-api-key": "k"})
        )
        assert f.request.url == REST_PREFIX + "/ai/v1/messages?beta=true"
        assert f.request.headers["authorization"] == f"Bearer {API_TOKEN}"
        assert f.request.headers["cf-aig-gateway-id"] == "test-gw" and "x-api-key" not in f.request.headers
        assert json.loads(f.request.content)["model"] == "anthropic/claude-x"


def test_a_failure_inside_forward_answers_500_and_never_aims_upstream(monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(auth, "set_credentials", broken)
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        f = send(gw, reverse_flow(body={"model": "m"}))
        assert f.response.status_code == 500
        assert json.loads(f.response.content)["error"]["code"] == "proxy_internal_error"
        assert (f.request.host, f.request.port) == ("127.0.0.1", 0)
        assert "the request was not forwarded" in caplog.text


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/v1/v1/chat/completions", {}, 404),
        ("/v1/%2e%2e/admin", {}, 400),
        ("/v1/responses", {"upgrade": "websocket"}, 426),
        ("/v1/chat/completions", {"origin": "https://evil.example"}, 403),
        ("/healthz", {}, 200),
    ],
)
def test_a_flow_not_admitted_is_never_rewritten(path, headers, status):
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        f = send(gw, reverse_flow(path, method="GET", headers=headers))
        assert f.response.status_code == status
        assert f.request.url == f"http://127.0.0.1:0{path}"
        assert "cf-aig-authorization" not in f.request.headers


def test_unconfigured_addon_answers_503_and_forwards_nothing():
    with flows.loaded("cf_base_url=ftp://nowhere", configure=False) as (_, gw):
        f = send(gw, reverse_flow())
        assert f.response.status_code == 503 and f.request.host == "127.0.0.1"


def test_a_keyless_big_body_is_killed_and_logged(caplog):
    with flows.loaded(**WITH_TOKEN, cf_proxy_keys="key-alpha-1") as (_, gw):
        f = send(gw, reverse_flow(headers={"content-length": str(64 << 20)}))
        assert f.error.msg == flow.Error.KILLED_MESSAGE and f.request.host == "127.0.0.1"
        assert "local - " in request_lines(caplog)[-1].getMessage()


def test_secrets_are_masked_once_the_answer_begins():
    with flows.loaded(**WITH_TOKEN, cf_provider_keys="forward") as (_, gw):
        f = sent(gw, reverse_flow(headers={"authorization": "Bearer sk-provider-0123456789"}))
        f.response = json_response(CHAT_ANSWER)
        gw.responseheaders(f)
        assert TOKEN not in str(f.request.headers) and "sk-provider-0123456789" not in str(f.request.headers)
        assert f.request.headers["cf-aig-authorization"] == "Bearer ********6789"


def test_secrets_are_masked_when_the_upstream_fails(caplog):
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        f = sent(gw, reverse_flow())
        f.error = flow.Error("Connection refused")
        gw.error(f)
        assert TOKEN not in str(f.request.headers)
        (line,) = request_lines(caplog)
        assert line.levelno == logging.WARNING and line.getMessage().endswith("error=Connection refused")


def test_flows_still_in_flight_at_shutdown_are_masked():
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        f = sent(gw, reverse_flow())
    assert TOKEN not in str(f.request.headers)


def test_usage_log_line_comment_and_metrics_of_a_json_answer(caplog):
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        f = send(gw, reverse_flow(body={"model": "openai/gpt-4o"}), json_response(CHAT_ANSWER))
        (line,) = request_lines(caplog)
        assert line.getMessage().startswith(
            f"POST /v1/chat/completions chat -> {GATEWAY_PREFIX}/compat/chat/completions 200 "
        )
        assert line.getMessage().endswith("ms model=openai/gpt-4o tokens=10 input/5 output")
        assert re.fullmatch(r"openai/gpt-4o · 15 tok · \d+ ms", f.comment)
        labels = {"family": "chat", "model": "gpt-4o-2024", "status": "200"}
        assert gw.metrics.registry.get_sample_value("cf_gateway_requests_total", labels) == 1


def test_event_stream_goes_through_a_recorder(caplog):
    events = (
        b'data: {"type": "response.created", "response": {"model": "gpt-5", "usage": null}}\n\n'
        b'data: {"type": "response.completed",\n'
        b'data:  "response": {"usage": {"input_tokens": 3, "output_tokens": 4}}}\n\n'
    )
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        f = sent(gw, reverse_flow("/v1/responses", body={"model": "gpt-5", "stream": True}))
        f.response = flows.sse_response()
        gw.responseheaders(f)
        assert isinstance(f.response.stream, Recorder)
        assert f.response.stream(events) == events and f.response.stream(b"") == b""
        gw.response(f)
        assert f.response.raw_content == events
        assert "stream tokens=3 input/4 output" in request_lines(caplog)[-1].getMessage()
        assert gw.metrics.registry.get_sample_value("cf_gateway_streams_in_flight") == 0


def test_log_line_is_one_line_whatever_the_client_sends(caplog):
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        send(gw, reverse_flow(body={"model": "m\nPOST /forged chat -> local 200 1ms\r\x1b[2J"}))
        (line,) = request_lines(caplog)
        assert (
            "\n" not in line.getMessage()
            and "\r" not in line.getMessage()
            and "\x1b" not in line.getMessage()
        )


def test_json_lines_carry_an_rfc3339_utc_time_with_milliseconds(caplog):
    with flows.loaded(**WITH_TOKEN, cf_log_format="json") as (_, gw):
        send(gw, reverse_flow(body={"model": "openai/gpt-4o"}), json_response(CHAT_ANSWER))
        obj = json.loads(request_lines(caplog)[-1].getMessage())
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["time"])
        assert (obj["status"], obj["total_tokens"], obj["outcome"]) == (200, 15, "ok")


def test_log_file_gets_the_request_lines(tmp_path):
    path = tmp_path / "requests.log"
    with flows.loaded(**WITH_TOKEN, cf_log_file=str(path)) as (_, gw):
        send(gw, reverse_flow(body={"model": "openai/gpt-4o"}))
    (line,) = path.read_text().splitlines()
    assert line.startswith("POST /v1/chat/completions chat -> https://gateway.ai.cloudflare.com/")


def test_healthz_is_not_logged(caplog):
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        send(gw, reverse_flow("/healthz", method="GET"))
        assert request_lines(caplog) == []


def test_cloudflare_error_is_reshaped_and_its_hint_logged_once(caplog):
    error = {"success": False, "error": [{"code": 2008, "message": "Invalid provider"}]}
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        for _ in range(2):
            f = send(gw, reverse_flow("/v1/messages", body={"model": "x"}), json_response(error, 400))
        body = json.loads(f.response.content)
        assert body["type"] == "error" and "provider/model" in body["error"]["message"]
        assert body["error"]["code"] == 2008
        assert caplog.text.count("Cloudflare error 2008: the compat endpoint wants") == 1
        assert "gateway_code=2008" in request_lines(caplog)[-1].getMessage()


def test_connections_over_the_limit_are_refused():
    with flows.loaded(cf_max_connections="2") as (_, gw):
        clients = [tflow.tclient_conn() for _ in range(3)]
        for c in clients:
            gw.client_connected(c)
        assert [c.error for c in clients] == [None, None, "too many open connections"]
        gw.client_disconnected(clients[0])
        late = tflow.tclient_conn()
        gw.client_connected(late)
        assert late.error is None


def test_mitmweb_replay_goes_to_the_same_upstream_with_the_token():
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        f = send(gw, reverse_flow("/v1/messages?beta=true", body={"model": "claude-x"}))
        first = f.request.url
        f.is_replay, f.response = "request", None
        sent(gw, f)
        assert f.request.url == first == GATEWAY_PREFIX + "/anthropic/v1/messages?beta=true"
        assert f.request.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"


def test_options_mitmproxy_needs_are_set():
    with flows.loaded() as (tctx, _):
        assert tctx.options.body_size_limit == "32m"
        assert tctx.options.keep_host_header  # the browser guard reads the client's Host


def test_log_file_that_cannot_be_opened_is_refused_and_the_old_one_kept(tmp_path):
    path = tmp_path / "requests.log"
    with flows.loaded(cf_log_file=str(path)) as (tctx, gw):
        with pytest.raises(exceptions.OptionsError, match=r"cf_log_file \(env CF_LOG_FILE\) cannot open"):
            tctx.configure(gw, cf_log_file=str(tmp_path / "no" / "such" / "dir.log"))
        send(gw, reverse_flow(body={"model": "m"}))
    assert len(path.read_text().splitlines()) == 1


def test_changing_the_log_file_keeps_the_recording(tmp_path):
    path = tmp_path / "rec.flows"
    with flows.loaded(cf_record=str(path)) as (tctx, gw):
        send(gw, reverse_flow(body={"model": "m"}))
        tctx.configure(gw, cf_log_file=str(tmp_path / "requests.log"))
        send(gw, reverse_flow(body={"model": "m"}))
    with path.open("rb") as fp:
        assert len(list(io.FlowReader(fp).stream())) == 2


def test_an_allowed_origin_may_read_the_answer_and_others_get_no_cors_header():
    allowed = {**WITH_TOKEN, "cf_allowed_origins": "http://localhost:5173"}
    with flows.loaded(**allowed) as (_, gw):
        for origin, expected in (
            ("http://localhost:5173", "http://localhost:5173"),
            ("http://evil.example", None),
        ):
            f = sent(gw, reverse_flow(body={"model": "openai/gpt-4o"}, headers={"origin": origin}))
            f.response = f.response or json_response(CHAT_ANSWER)
            gw.responseheaders(f)
            gw.response(f)
            assert f.response.headers.get("access-control-allow-origin") == expected


def test_a_locally_answered_flow_keeps_no_client_key_in_clear():
    with flows.loaded() as (_, gw):
        f = reverse_flow(
            "/v1/v1/chat/completions", headers={"authorization": "Bearer sk-client-key-0123456789"}
        )
        gw.requestheaders(f)
        gw.response(f)
        assert f.response.status_code == 404
        assert "sk-client-key" not in f.request.headers["authorization"]


def test_a_report_that_cannot_be_written_is_an_error_not_a_crash(tmp_path, caplog):
    recording = tmp_path / "empty.mitm"
    recording.write_bytes(b"")
    report = tmp_path / "no-such-dir" / "report.json"
    with flows.loaded(cf_replay=str(recording), cf_replay_report=str(report)) as (_, gw):
        gw.done()
    assert "cannot write the replay report" in caplog.text


def test_a_flow_loaded_from_a_file_is_not_counted_again(caplog):
    """mitmproxy runs the hooks for flows it loads (-r); they were finished when they were saved."""
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        f = sent(gw, reverse_flow(body={"model": "openai/gpt-4o"}))
        f.response = json_response(CHAT_ANSWER)
        gw.responseheaders(f)
        gw.response(f)
        loaded = f.copy()
        gw.responseheaders(loaded)
        gw.response(loaded)
    assert len(request_lines(caplog)) == 1


def test_an_upgrade_the_upstream_accepts_anyway_is_cut_off():
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        f = sent(gw, reverse_flow(body={"model": "openai/gpt-4o"}))
        f.response = http.Response.make(101, b"", {"upgrade": "websocket", "connection": "upgrade"})
        gw.responseheaders(f)
        assert f.error and f.error.msg == flow.Error.KILLED_MESSAGE


@pytest.mark.parametrize(
    ("path", "status"), [("/", 200), ("/healthz", 200), ("/metrics", 200), ("/v1/v1/models", 404)]
)
def test_head_gets_headers_only(path, status):
    with flows.loaded(**WITH_TOKEN) as (_, gw):
        f = reverse_flow(path, method="HEAD")
        gw.requestheaders(f)
        gw.response(f)
        response = f.response
    assert response.status_code == status and response.raw_content == b""
