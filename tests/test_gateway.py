"""The addon's hooks, driven with mitmproxy.test.taddons/tflow (cfgw.gateway)."""

from __future__ import annotations

import gzip
import json
import logging

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils

from cfgw import gateway as gateway_mod
from cfgw.gateway import CfGateway
from cfgw.streaming import Recorder
from tests.flows import ACCOUNT, GOOD, PREFIX, reverse_flow


def answered(f) -> dict:
    assert f.response is not None
    assert f.response.headers["content-type"] == "application/json"
    return json.loads(f.response.content)


def test_options_are_strings_with_env_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"ACCOUNT_ID={ACCOUNT}\nGATEWAY_ID=from-dotenv\nCF_LOG_FORMAT=json\n")
    monkeypatch.setenv("GATEWAY_ID", "from-env")
    a = CfGateway()
    with taddons.context(a) as tctx:
        for name in ("cf_account_id", "cf_gateway_id", "cf_base_url", "cf_token", "cf_proxy_keys"):
            assert tctx.options._options[name].typespec is str
        assert tctx.options.cf_account_id == ACCOUNT  # from .env
        assert tctx.options.cf_gateway_id == "from-env"  # the environment wins over .env
        tctx.configure(a, cf_log_requests="on")  # any cf_ option triggers a full parse
        assert a.settings.log_format == "json"
        assert a.settings.gateway_id == "from-env"
        tctx.configure(a, cf_gateway_id="from-set")  # --set wins over both
        assert a.settings.gateway_id == "from-set"


def test_missing_config_logs_one_line_and_answers_503(caplog):
    a = CfGateway()
    with taddons.context(a) as tctx, caplog.at_level(logging.ERROR):
        tctx.configure(a, cf_account_id="", cf_gateway_id="gw")
        assert a.settings is None
        assert "cf_account_id (env ACCOUNT_ID) is required" in caplog.text
        f = reverse_flow()
        a.request(f)
        assert f.response.status_code == 503
        assert f.request.host == "127.0.0.1" and f.request.path == "/v1/chat/completions"


def test_bad_change_to_working_config_is_refused(addon):
    with pytest.raises(exceptions.OptionsError, match=r"cf_base_url \(env CF_BASE_URL\)"):
        addon.tctx.configure(addon, cf_base_url="https://example.com/path")
    assert addon.settings.upstream.host == "gateway.ai.cloudflare.com"


def test_rewrite_http1(addon):
    f = reverse_flow("/v1/chat/completions?x=1&y=%2F", headers=[("authorization", "Bearer sk-client")])
    addon.request(f)
    assert f.response is None
    r = f.request
    assert (r.scheme, r.host, r.port) == ("https", "gateway.ai.cloudflare.com", 443)
    assert r.path == f"{PREFIX}/chat/completions?x=1&y=%2F"
    assert r.headers["host"] == "gateway.ai.cloudflare.com"
    assert r.authority == ""
    assert r.headers["authorization"] == "Bearer sk-client"  # passed through untouched
    assert f.metadata["cf_gateway"]["upstream"].endswith(f"{PREFIX}/chat/completions")


def test_rewrite_absolute_form_goes_out_in_origin_form(addon):
    f = reverse_flow("/chat/completions")
    f.request.authority = "127.0.0.1:1"
    addon.request(f)
    assert f.request.authority == ""
    assert f.request.url == f"https://gateway.ai.cloudflare.com{PREFIX}/chat/completions"


def test_rewrite_http2_sets_authority(addon):
    f = reverse_flow("/v1/models", method="GET")
    f.request.http_version = "HTTP/2.0"
    addon.request(f)
    assert f.request.authority == "gateway.ai.cloudflare.com"


def test_custom_base_url_port(addon):
    addon.tctx.configure(addon, cf_base_url="http://127.0.0.1:8787")
    f = reverse_flow("/v1/embeddings")
    addon.request(f)
    assert f.request.url == f"http://127.0.0.1:8787{PREFIX}/embeddings"
    assert f.request.headers["host"] == "127.0.0.1:8787"


def test_other_listeners_are_left_alone(addon):
    f = reverse_flow("/v1/chat/completions", mode="regular")
    before = f.request.get_state()
    addon.request(f)
    assert f.response is None and f.request.get_state() == before


def test_unsafe_path_is_answered_400_and_not_rewritten(addon):
    f = reverse_flow("/v1/%2e%2e/secret")
    addon.request(f)
    assert f.response.status_code == 400
    body = answered(f)
    assert body["error"]["code"] == "invalid_path" and "encoded" in body["error"]["message"]
    assert f.request.host == "127.0.0.1"


def test_fail_closed_on_internal_error(addon, monkeypatch, caplog):
    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(gateway_mod.paths, "map_target", boom)
    f = reverse_flow()
    with caplog.at_level(logging.ERROR):
        addon.request(f)
    assert f.response.status_code == 500
    assert answered(f)["error"]["code"] == "proxy_internal_error"
    assert f.request.host == "127.0.0.1"  # never forwarded anywhere
    assert "not forwarded" in caplog.text


def test_hooks_skip_flows_already_answered(addon):
    f = reverse_flow()
    f.response = http.Response.make(204)
    addon.request(f)
    assert f.request.host == "127.0.0.1"


def test_health_is_local_and_unlogged(addon, caplog):
    f = reverse_flow("/healthz", method="GET")
    with caplog.at_level(logging.INFO):
        addon.request(f)
        addon.response(f)
    assert answered(f) == {"status": "ok"}
    assert "healthz" not in caplog.text


def test_token_injected_only_when_absent(addon):
    addon.tctx.configure(addon, cf_token="cf-token-123456789")
    f = reverse_flow()
    addon.request(f)
    assert f.request.headers["cf-aig-authorization"] == "Bearer cf-token-123456789"
    f = reverse_flow(headers=[("cf-aig-authorization", "Bearer client-own")])
    addon.request(f)
    assert f.request.headers["cf-aig-authorization"] == "Bearer client-own"


@pytest.mark.parametrize(
    "auth_header",
    [None, "Bearer wrong-key", "bearer", "Basic a2V5LW9uZTp4", "Bearer key-one extra", "key-one"],
)
def test_access_keys_refuse(addon, auth_header):
    addon.tctx.configure(addon, cf_proxy_keys="key-one,key-two")
    f = reverse_flow(headers=[("authorization", auth_header)] if auth_header else [])
    addon.request(f)
    assert f.response.status_code == 401
    assert f.response.headers["www-authenticate"].startswith("Bearer")
    body = answered(f)
    assert body["error"]["code"] == "invalid_proxy_key"
    assert "key-one" not in f.response.text and "wrong-key" not in f.response.text
    assert f.request.host == "127.0.0.1"


def test_access_key_accepted_and_removed(addon):
    addon.tctx.configure(addon, cf_proxy_keys="key-one,key-two", cf_token="gw-token-abcdef")
    f = reverse_flow(headers=[("authorization", "Bearer key-two")])
    addon.request(f)
    assert f.response is None
    assert "authorization" not in f.request.headers
    assert f.request.headers["cf-aig-authorization"] == "Bearer gw-token-abcdef"


def test_health_needs_no_key_but_metrics_does(addon):
    addon.tctx.configure(addon, cf_proxy_keys="key-one")
    f = reverse_flow("/healthz", method="GET")
    addon.request(f)
    assert f.response.status_code == 200
    f = reverse_flow("/metrics", method="GET")
    addon.request(f)
    assert f.response.status_code == 401
    f = reverse_flow("/metrics", method="GET", headers=[("authorization", "Bearer key-one")])
    addon.request(f)
    assert f.response.status_code == 200 and b"cf_gateway_requests" in f.response.content


def test_replay_of_rewritten_flow_is_not_rewritten_twice(addon):
    addon.tctx.configure(addon, cf_proxy_keys="key-one")
    f = reverse_flow(headers=[("authorization", "Bearer key-one")])
    addon.request(f)
    f.is_replay = "request"
    addon.request(f)
    assert f.response is None
    assert f.request.path == f"{PREFIX}/chat/completions"


def test_secrets_masked_after_sending(addon):
    addon.tctx.configure(addon, cf_token="gw-token-abcdefghijkl")
    f = reverse_flow(
        headers=[
            ("authorization", "Bearer sk-provider-key-0123456789"),
            ("x-api-key", "xak-1234567890abcdef"),
        ]
    )
    addon.request(f)
    assert f.request.headers["authorization"] == "Bearer sk-provider-key-0123456789"  # forwarded as is
    f.response = tutils.tresp()
    addon.responseheaders(f)
    assert f.request.headers["authorization"] == "Bearer ********6789"
    assert f.request.headers["cf-aig-authorization"] == "Bearer ********ijkl"
    assert f.request.headers["x-api-key"] == "********cdef"


def test_redaction_can_be_turned_off(addon):
    addon.tctx.configure(addon, cf_redact="off")
    f = reverse_flow(headers=[("authorization", "Bearer sk-provider-key-0123456789")])
    addon.request(f)
    f.response = tutils.tresp()
    addon.responseheaders(f)
    assert f.request.headers["authorization"] == "Bearer sk-provider-key-0123456789"


def sse_response(body_encoding=None):
    headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
    if body_encoding:
        headers.append((b"content-encoding", body_encoding.encode()))
    return tutils.tresp(headers=http.Headers(headers), content=b"")


def test_event_streams_are_streamed_and_recorded(addon):
    f = reverse_flow()
    addon.request(f)
    f.response = sse_response()
    addon.responseheaders(f)
    assert isinstance(f.response.stream, Recorder)
    chunks = [b'data: {"a":1}\n\n', b"data: [DONE]\n\n"]
    assert [f.response.stream(c) for c in chunks] == chunks  # passed on unchanged
    f.response.stream(b"")
    addon.response(f)
    assert f.response.content == b"".join(chunks)


def test_gzip_stream_recorded_still_encoded(addon):
    f = reverse_flow()
    addon.request(f)
    f.response = sse_response("gzip")
    addon.responseheaders(f)
    raw = gzip.compress(b"data: [DONE]\n\n")
    f.response.stream(raw[:5])
    f.response.stream(raw[5:])
    addon.response(f)
    assert f.response.raw_content == raw
    assert f.response.get_content() == b"data: [DONE]\n\n"


def test_record_limit_truncates_and_says_so(addon, caplog):
    addon.tctx.configure(addon, cf_record_limit="10")
    f = reverse_flow()
    addon.request(f)
    f.response = sse_response()
    addon.responseheaders(f)
    for _ in range(4):
        assert f.response.stream(b"x" * 8) == b"x" * 8
    with caplog.at_level(logging.INFO):
        addon.response(f)
    assert f.response.content == b"x" * 10
    assert "22 bytes not kept" in f.comment
    assert "22 bytes not kept" in caplog.text


def test_json_responses_are_not_streamed(addon):
    f = reverse_flow()
    addon.request(f)
    f.response = tutils.tresp(headers=http.Headers([(b"content-type", b"application/json")]))
    addon.responseheaders(f)
    assert not f.response.stream


def test_one_log_line_per_flow_with_summary(addon, caplog):
    body = json.dumps({"model": "openai/gpt-4o-mini", "messages": []}).encode()
    f = reverse_flow(content=body, headers=[("authorization", "Bearer sk-secret-value-0000")])
    addon.request(f)
    usage = {"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    f.response = tutils.tresp(
        headers=http.Headers([(b"content-type", b"application/json"), (b"cf-aig-cache-status", b"MISS")]),
        content=json.dumps(usage).encode(),
    )
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        addon.responseheaders(f)
        addon.response(f)
    lines = [r for r in caplog.records if r.name == "cf_gateway"]
    assert len(lines) == 1
    line = lines[0].getMessage()
    assert line.startswith("POST /v1/chat/completions -> https://gateway.ai.cloudflare.com/v1/")
    assert " 200 " in line and "model=openai/gpt-4o-mini" in line and "tokens=3/4/7" in line
    assert "cache=MISS" in line
    assert "sk-secret" not in caplog.text
    assert f.comment.startswith("openai/gpt-4o-mini · 7 tok · ")


def test_log_requests_off(addon, caplog):
    addon.tctx.configure(addon, cf_log_requests="off")
    f = reverse_flow()
    addon.request(f)
    f.response = tutils.tresp()
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        addon.response(f)
    assert not [r for r in caplog.records if r.name == "cf_gateway"]


def test_json_log_format(addon, caplog):
    addon.tctx.configure(addon, cf_log_format="json")
    f = reverse_flow()
    addon.request(f)
    f.response = tutils.tresp()
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        addon.response(f)
    (record,) = [r for r in caplog.records if r.name == "cf_gateway"]
    data = json.loads(record.getMessage())
    assert data["status"] == 200 and data["method"] == "POST" and data["path"] == "/v1/chat/completions"


def test_upstream_failure_warns_with_reason(addon, caplog):
    f = reverse_flow()
    addon.request(f)
    f.error = tflow.terr("Connection refused")
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        addon.error(f)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Connection refused" in warnings[0].getMessage()
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and "failed" in infos[0].getMessage()


def test_warns_about_eager_connections_on_reverse_listeners(addon, caplog):
    addon.tctx.options.add_option("connection_strategy", str, "eager", "declared by mitmproxy's proxyserver")
    addon.tctx.options.mode = ["reverse:https://gateway.ai.cloudflare.com@3000"]
    with caplog.at_level(logging.WARNING):
        addon.running()
    assert "connection_strategy=lazy" in caplog.text
    caplog.clear()
    addon.tctx.options.connection_strategy = "lazy"
    with caplog.at_level(logging.WARNING):
        addon.running()
    assert caplog.text == ""


def test_startup_log_names_the_mode_never_the_secrets(caplog, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("secret-key-one\nsecret-key-two\n")
    a = CfGateway()
    with taddons.context(a) as tctx, caplog.at_level(logging.INFO):
        tctx.configure(a, **GOOD, cf_token="gw-token-secret", cf_proxy_keys=f"@{keys}")
    assert "access keys: 2 keys" in caplog.text and "gateway token injected" in caplog.text
    assert "secret-key" not in caplog.text and "gw-token-secret" not in caplog.text


def test_flows_that_never_went_upstream_do_not_warn(addon, caplog):
    f = reverse_flow()
    f.error = tflow.terr(
        "mitmproxy received an HTTP CONNECT request even though it is not running in regular mode"
    )
    addon.request(f)  # skipped: the flow already failed, nothing was rewritten
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        addon.error(f)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "CONNECT" in caplog.text  # still on the request line


@pytest.mark.parametrize(("method", "code"), [("G(T", "invalid_method")])
def test_invalid_requests_answered_not_forwarded(addon, method, code):
    f = reverse_flow(method=method)
    addon.request(f)
    assert answered(f)["error"]["code"] == code
    assert f.request.host == "127.0.0.1"
