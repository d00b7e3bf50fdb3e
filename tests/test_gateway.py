"""The addon's hooks, driven with mitmproxy.test.taddons/tflow (cfgw.gateway)."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import logging

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import tflow, tutils

from cfgw import gateway as gateway_mod
from cfgw.recorder import Recorder
from tests.flows import ACCOUNT, GATEWAY, GOOD, PREFIX, clean_environment, loaded, reverse_flow, send

ORIGIN = "https://gateway.ai.cloudflare.com"
TOKEN = "cfat-Tq8RwE3yUiOpLkJhGfDsZx"
KEY = "pk-alpha-Qz7vWx2LmNpRtYkJhG"
OPEN_LISTENER = "reverse:http://127.0.0.1:0@0.0.0.0:3000"
GATEWAY_401 = {
    "success": False,
    "result": [],
    "messages": [],
    "error": [{"code": 2009, "message": "Unauthorized"}],
}


def arrive(addon, f) -> None:
    """The request hooks as mitmproxy calls them: requestheaders with the head, request with the body."""
    addon.requestheaders(f)
    addon.request(f)


def boom(*args, **kwargs):
    raise RuntimeError("kaboom")


def answered(f) -> dict:
    assert f.response is not None
    assert f.response.headers["content-type"] == "application/json"
    return json.loads(f.response.content)


def not_rewritten(f) -> bool:
    """Still aimed at the reverse target nobody can serve: mitmproxy would answer it 502."""
    return (f.request.scheme, f.request.host, f.request.port) == ("http", "127.0.0.1", 0)


def error_of(f) -> tuple[str, str]:
    """(code, type) of a local error, asserting the exact key set of the path family's shape."""
    body = answered(f)
    if f.request.path.startswith("/v1/messages"):
        assert body["type"] == "error" and set(body) == {"type", "error"}
        assert set(body["error"]) == {"type", "message", "code"}
    else:
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]["code"], body["error"]["type"]


def gateway_answer(status: int, body: dict, gzipped: bool = False) -> http.Response:
    raw = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"cf-ray", b"8f00-SJC")]
    if gzipped:
        raw = gzip.compress(raw)
        headers.append((b"content-encoding", b"gzip"))
    headers.append((b"content-length", str(len(raw)).encode()))
    return tutils.tresp(status_code=status, headers=http.Headers(headers), content=raw)


# -- options -----------------------------------------------------------------------------------


def test_options_are_strings_with_env_defaults(monkeypatch, tmp_path):
    clean_environment(monkeypatch, tmp_path)
    (tmp_path / ".env").write_text(f"ACCOUNT_ID={ACCOUNT}\nGATEWAY_ID=from-dotenv\nCF_LOG_FORMAT=json\n")
    monkeypatch.setenv("GATEWAY_ID", "from-env")
    with loaded() as (a, tctx):
        for name in ("cf_account_id", "cf_gateway_id", "cf_base_url", "cf_token", "cf_proxy_keys"):
            assert tctx.options._options[name].typespec is str
        assert tctx.options.cf_account_id == ACCOUNT  # from .env
        assert tctx.options.cf_gateway_id == "from-env"  # the environment wins over .env
        tctx.configure(a, cf_log_requests="on")  # any cf_ option triggers a full parse
        assert a.settings.log_format == "json"
        assert a.settings.gateway_id == "from-env"
        tctx.configure(a, cf_gateway_id="from-set")  # --set wins over both
        assert a.settings.gateway_id == "from-set"


def test_done_takes_out_the_log_record_factory_load_put_in(monkeypatch, tmp_path):
    """The masking factory is process-wide: a reload, or the next test, must not inherit it."""
    clean_environment(monkeypatch, tmp_path)
    before = logging.getLogRecordFactory()
    with loaded():
        assert logging.getLogRecordFactory() is not before
    assert logging.getLogRecordFactory() is before


def test_missing_config_logs_one_line_and_answers_503(monkeypatch, tmp_path, caplog):
    clean_environment(monkeypatch, tmp_path)
    with loaded() as (a, tctx), caplog.at_level(logging.ERROR):
        tctx.configure(a, cf_account_id="", cf_gateway_id="gw")
        assert a.settings is None
        f = reverse_flow()
        arrive(a, f)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "cf-gateway: cf_account_id (env ACCOUNT_ID) is required (your Cloudflare account id)"
    ]
    assert f.response.status_code == 503
    assert error_of(f) == ("not_configured", "server_error")
    assert not_rewritten(f) and f.request.path == "/v1/chat/completions"


def test_bad_change_to_working_config_is_refused(addon):
    with pytest.raises(exceptions.OptionsError, match=r"cf_base_url \(env CF_BASE_URL\)"):
        addon.tctx.configure(addon, cf_base_url="https://example.com/path")
    assert addon.settings.base_url.host == "gateway.ai.cloudflare.com"


def test_a_single_deferred_set_is_applied(monkeypatch, tmp_path):
    clean_environment(monkeypatch, tmp_path)
    with loaded("cf_redact=off") as (a, tctx):
        tctx.configure(a, **GOOD)
        assert a.settings.redact is False


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("cf_redact=on", "cf_redact=on"), "is given 2 times with --set; give it once"),
        (("cf_redact=on", "cf_redact=off", "cf_redact=on"), "is given 3 times with --set; give it once"),
        (("cf_redact",), "is given without a value with --set; give it once"),
    ],
)
def test_repeated_or_valueless_set_refuses_to_start(monkeypatch, tmp_path, caplog, args, problem):
    """mitmproxy would drop the script silently on these (its deferred options raise, unlogged)."""
    clean_environment(monkeypatch, tmp_path)
    with caplog.at_level(logging.ERROR), loaded(*args) as (a, tctx):
        assert "cf_redact" not in tctx.options.deferred
        tctx.configure(a, **GOOD)
        assert a.settings is None
        f = reverse_flow()
        arrive(a, f)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        f"cf-gateway: cf_redact (env CF_REDACT) {problem}"
    ]
    assert f.response.status_code == 503 and not_rewritten(f)


def test_open_door_is_refused_at_startup(monkeypatch, tmp_path, caplog):
    clean_environment(monkeypatch, tmp_path)
    with loaded(f"mode={OPEN_LISTENER}") as (a, tctx), caplog.at_level(logging.ERROR):
        tctx.configure(a, **GOOD, cf_token=TOKEN)
        assert a.settings is None
        f = reverse_flow(mode=OPEN_LISTENER)
        arrive(a, f)
    (error,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.startswith("cf-gateway: refusing to inject the gateway token (CF_AIG_TOKEN) for anyone ")
    for way_out in ("reach 0.0.0.0", "PROXY_KEYS", "127.0.0.1", "HOST_ADDR=127.0.0.1", "cf_open_proxy=on"):
        assert way_out in error
    assert TOKEN not in error
    assert f.response.status_code == 503 and not_rewritten(f)


def test_open_door_change_is_refused_while_running(addon):
    with pytest.raises(exceptions.OptionsError, match="PROXY_KEYS"):
        addon.tctx.configure(addon, mode=[OPEN_LISTENER], cf_token=TOKEN)
    assert addon.settings.token is None


@pytest.mark.parametrize(
    "options",
    [
        {"mode": ["reverse:http://127.0.0.1:0@127.0.0.1:3000"]},
        {"mode": ["reverse:http://127.0.0.1:0@3000"], "listen_host": "127.0.0.1"},
        {"mode": ["reverse:http://127.0.0.1:0@localhost:3000"]},
        {"mode": [OPEN_LISTENER], "cf_proxy_keys": KEY},
        {"mode": [OPEN_LISTENER], "cf_open_proxy": "on"},
        {"mode": [OPEN_LISTENER, "regular@8080"], "cf_proxy_keys": KEY},
    ],
)
def test_ways_out_of_the_open_door(addon, options):
    addon.tctx.configure(addon, cf_token=TOKEN, **options)
    assert addon.settings.token == TOKEN


def test_pass_through_may_listen_anywhere(addon):
    addon.tctx.configure(addon, mode=[OPEN_LISTENER])
    assert addon.settings.token is None and addon.settings.proxy_keys is None


def test_body_size_limit_defaults_to_32m(addon):
    assert addon.tctx.options.body_size_limit == "32m"


def test_a_users_body_size_limit_is_kept(monkeypatch, tmp_path):
    clean_environment(monkeypatch, tmp_path)
    with loaded("body_size_limit=100m") as (a, tctx):
        tctx.configure(a, **GOOD)
        assert tctx.options.body_size_limit == "100m"


# -- requests: routes and rewriting --------------------------------------------------------------


def test_rewrite_http1(addon):
    f = reverse_flow("/v1/chat/completions?x=1&y=%2F", headers=[("authorization", "Bearer sk-client")])
    arrive(addon, f)
    assert f.response is None
    r = f.request
    assert (r.scheme, r.host, r.port) == ("https", "gateway.ai.cloudflare.com", 443)
    assert r.path == f"{PREFIX}/chat/completions?x=1&y=%2F"
    assert r.headers["host"] == "gateway.ai.cloudflare.com"
    assert r.authority == ""
    assert r.headers["authorization"] == "Bearer sk-client"  # passed through untouched
    assert f.metadata["cf_gateway"] == {"family": "chat", "route": "compat", "path": "/v1/chat/completions"}
    assert addon.flows[f].upstream == f"{ORIGIN}{PREFIX}/chat/completions"


def test_rewrite_absolute_form_goes_out_in_origin_form(addon):
    f = reverse_flow("/chat/completions")
    f.request.authority = "127.0.0.1:0"
    arrive(addon, f)
    assert f.request.authority == ""
    assert f.request.url == f"{ORIGIN}{PREFIX}/chat/completions"


def test_rewrite_http2_sets_authority(addon):
    f = reverse_flow("/v1/models", method="GET", content=b"")
    f.request.http_version = "HTTP/2.0"
    arrive(addon, f)
    assert f.request.authority == "gateway.ai.cloudflare.com"


def test_custom_base_url_port(addon):
    addon.tctx.configure(addon, cf_base_url="http://127.0.0.1:8787")
    f = reverse_flow("/v1/embeddings")
    arrive(addon, f)
    assert f.request.url == f"http://127.0.0.1:8787{PREFIX}/embeddings"
    assert f.request.headers["host"] == "127.0.0.1:8787"


@pytest.mark.parametrize(
    ("path", "routes", "target", "family"),
    [
        ("/v1/messages?beta=true", "auto", f"{GATEWAY}/anthropic/v1/messages?beta=true", "messages"),
        ("/v1/messages/count_tokens", "auto", f"{GATEWAY}/anthropic/v1/messages/count_tokens", "messages"),
        ("/messages", "auto", f"{GATEWAY}/anthropic/v1/messages", "messages"),
        ("/v1/responses/resp_1", "auto", f"{GATEWAY}/openai/responses/resp_1", "responses"),
        (
            "/responses/resp_1/input_items?limit=5",
            "auto",
            f"{GATEWAY}/openai/responses/resp_1/input_items?limit=5",
            "responses",
        ),
        ("/v1/embeddings", "auto", f"{PREFIX}/embeddings", "other"),
        ("/v1/messages", "compat", f"{PREFIX}/messages", "messages"),
        ("/v1/responses?x=%2F", "compat", f"{PREFIX}/responses?x=%2F", "responses"),
    ],
)
def test_routes(addon, path, routes, target, family):
    addon.tctx.configure(addon, cf_routes=routes)
    f = reverse_flow(path)
    arrive(addon, f)
    assert f.request.host == "gateway.ai.cloudflare.com"
    assert f.request.path == target
    assert f.metadata["cf_gateway"]["family"] == family


ANTHROPIC_BODY = b'{"model": "anthropic/claude-sonnet-4-5", "max_tokens": 8, "messages": []}'


@pytest.mark.parametrize(
    ("path", "routes", "body", "forwarded"),
    [
        ("/v1/messages", "auto", ANTHROPIC_BODY, ANTHROPIC_BODY.replace(b"anthropic/", b"")),
        (
            "/v1/responses",
            "auto",
            b'{"input":"say openai/gpt-5","model" : "openai/gpt-5"}',
            b'{"input":"say openai/gpt-5","model" : "gpt-5"}',
        ),
        ("/v1/messages", "compat", ANTHROPIC_BODY, ANTHROPIC_BODY),  # compat wants the provider prefix
        ("/v1/chat/completions", "auto", b'{"model":"openai/gpt-5"}', b'{"model":"openai/gpt-5"}'),
        ("/v1/responses", "auto", ANTHROPIC_BODY, ANTHROPIC_BODY),  # not this route's provider
        (  # exact even with the same value nested: only the root's model changes
            "/v1/messages",
            "auto",
            b'{"metadata":{"model":"anthropic/claude-sonnet-4-5"},"model":"anthropic/claude-sonnet-4-5"}',
            b'{"metadata":{"model":"anthropic/claude-sonnet-4-5"},"model":"claude-sonnet-4-5"}',
        ),
        (  # ambiguous: the root's key spelled with an escape, a nested literal one; left alone
            "/v1/messages",
            "auto",
            rb'{"mod\u0065l":"anthropic/claude-sonnet-4-5","metadata":{"model":"anthropic/claude-sonnet-4-5"}}',
            rb'{"mod\u0065l":"anthropic/claude-sonnet-4-5","metadata":{"model":"anthropic/claude-sonnet-4-5"}}',
        ),
    ],
)
def test_model_spelling_on_provider_routes(addon, path, routes, body, forwarded):
    addon.tctx.configure(addon, cf_routes=routes)
    f = reverse_flow(path, content=body)
    arrive(addon, f)
    assert f.request.raw_content == forwarded
    assert f.request.headers["content-length"] == str(len(forwarded))
    assert addon.flows[f].model == json.loads(forwarded)["model"]


def test_other_listeners_are_left_alone(addon):
    f = reverse_flow("/v1/chat/completions", mode="regular")
    before = f.request.get_state()
    arrive(addon, f)
    assert f.response is None and f.request.get_state() == before


def test_hooks_skip_flows_already_answered(addon):
    f = reverse_flow()
    f.response = http.Response.make(204)
    arrive(addon, f)
    assert f.response.status_code == 204 and not_rewritten(f)


# -- requests: answered locally, in the family's shape --------------------------------------------


def test_unsafe_path_is_answered_400_and_not_rewritten(addon):
    f = reverse_flow("/v1/%2e%2e/secret")
    addon.requestheaders(f)  # decided before the body is read
    assert f.response.status_code == 400
    body = answered(f)
    assert body["error"]["code"] == "invalid_path"
    assert body["error"]["message"] == "Refused request path: the path contains the encoded character %2e."
    addon.request(f)
    assert not_rewritten(f)


@pytest.mark.parametrize(
    ("path", "cause", "status", "error"),
    [
        ("/v1/chat/completions", "key", 401, ("invalid_proxy_key", "authentication_error")),
        ("/v1/responses", "key", 401, ("invalid_proxy_key", "authentication_error")),
        ("/v1/messages", "key", 401, ("invalid_proxy_key", "authentication_error")),
        ("/v1/chat/completions/%2e%2e", "path", 400, ("invalid_path", "invalid_request_error")),
        ("/v1/responses/%2e%2e", "path", 400, ("invalid_path", "invalid_request_error")),
        ("/v1/messages/%2e%2e", "path", 400, ("invalid_path", "invalid_request_error")),
        ("/v1/chat/completions", "internal", 500, ("proxy_internal_error", "server_error")),
        ("/v1/responses", "internal", 500, ("proxy_internal_error", "server_error")),
        ("/v1/messages", "internal", 500, ("proxy_internal_error", "api_error")),
        ("/v1/messages", "header", 400, ("invalid_header", "invalid_request_error")),
    ],
)
def test_local_errors_come_in_the_familys_shape(addon, monkeypatch, path, cause, status, error):
    headers = [("authorization", f"Bearer {KEY}")]
    if cause == "key":
        addon.tctx.configure(addon, cf_proxy_keys=KEY)
        headers = []
    elif cause == "internal":
        monkeypatch.setattr(gateway_mod.auth, "with_credentials", boom)
    elif cause == "header":
        headers.append(("x-folded", "a\r\n b"))
    f = reverse_flow(path, headers=headers)
    arrive(addon, f)
    assert f.response.status_code == status
    assert error_of(f) == error
    assert not_rewritten(f)


def test_401_bodies_exactly(addon):
    addon.tctx.configure(addon, cf_proxy_keys=KEY)
    message = (
        "Missing proxy key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>' "
        "with one of this proxy's access keys."
    )
    chat, messages = reverse_flow("/v1/chat/completions"), reverse_flow("/v1/messages")
    arrive(addon, chat)
    arrive(addon, messages)
    assert answered(chat) == {
        "error": {
            "message": message,
            "type": "authentication_error",
            "param": None,
            "code": "invalid_proxy_key",
        }
    }
    assert answered(messages) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": message, "code": "invalid_proxy_key"},
    }


def test_unauthenticated_request_is_refused_on_its_headers_without_100_continue(addon):
    addon.tctx.configure(addon, cf_proxy_keys=KEY)
    f = reverse_flow(headers=[("expect", "100-continue"), ("content-length", "100000000")], content=b"")
    addon.requestheaders(f)
    assert f.response.status_code == 401
    assert "expect" not in f.request.headers  # mitmproxy sends "100 Continue" only while it is there
    ok = reverse_flow(headers=[("authorization", f"Bearer {KEY}"), ("expect", "100-continue")], content=b"")
    addon.requestheaders(ok)
    assert ok.response is None and ok.request.headers["expect"] == "100-continue"


@pytest.mark.parametrize("value", [b"a\r\n b", b"a\rb", b"a\x00b", b"a\n\tb"])
def test_header_values_with_cr_lf_or_nul_are_refused(addon, value):
    f = reverse_flow()
    f.request.headers = http.Headers(fields=((b"host", b"127.0.0.1:0"), (b"x-odd", value)))
    arrive(addon, f)
    assert f.response.status_code == 400
    assert answered(f)["error"]["code"] == "invalid_header"
    assert not_rewritten(f)


@pytest.mark.parametrize(("method", "code"), [("G(T", "invalid_method"), ("G\x1bT", "invalid_method")])
def test_invalid_requests_answered_not_forwarded(addon, method, code):
    f = reverse_flow(method=method)
    arrive(addon, f)
    assert answered(f)["error"]["code"] == code
    assert not_rewritten(f)


# -- fail closed -------------------------------------------------------------------------------------


def test_fail_closed_on_internal_error(addon, monkeypatch, caplog):
    monkeypatch.setattr(gateway_mod.auth, "with_credentials", boom)
    f = reverse_flow()
    with caplog.at_level(logging.ERROR):
        arrive(addon, f)
    assert f.response.status_code == 500
    assert answered(f)["error"]["code"] == "proxy_internal_error"
    assert not_rewritten(f) and f.request.path == "/v1/chat/completions"  # never forwarded anywhere
    assert (
        "cf-gateway: internal error on POST /v1/chat/completions; answered 500, not forwarded" in caplog.text
    )


def test_head_internal_error_has_no_body(addon, monkeypatch):
    """A body on a HEAD answer would desync a keep-alive client."""
    monkeypatch.setattr(gateway_mod.auth, "with_credentials", boom)
    f = reverse_flow("/v1/models", method="HEAD", content=b"")
    arrive(addon, f)
    assert f.response.status_code == 500
    assert f.response.raw_content == b""
    assert not_rewritten(f)


def test_head_refusal_has_no_body(addon):
    addon.tctx.configure(addon, cf_proxy_keys=KEY)
    f = reverse_flow("/v1/models", method="HEAD", content=b"")
    arrive(addon, f)
    assert f.response.status_code == 401 and f.response.raw_content == b""


def test_flow_whose_requestheaders_hook_failed_is_not_forwarded(addon, monkeypatch):
    """mitmproxy logs a hook's exception and carries on with the flow: request must not forward it."""
    monkeypatch.setattr(addon, "answer_or_admit", boom)
    f = reverse_flow()
    with pytest.raises(RuntimeError):
        addon.requestheaders(f)
    addon.request(f)
    assert f.response.status_code == 500
    assert answered(f)["error"]["code"] == "proxy_internal_error"
    assert not_rewritten(f) and "cf-gateway" not in f.metadata


def test_flow_requestheaders_never_saw_is_not_forwarded(addon):
    f = reverse_flow()
    addon.request(f)  # e.g. the addon was (re)loaded between the two hooks
    assert f.response.status_code == 500 and not_rewritten(f)


# -- health and metrics ------------------------------------------------------------------------------


def test_health_is_local_and_unlogged(addon, caplog):
    f = reverse_flow("/healthz", method="GET", content=b"")
    with caplog.at_level(logging.INFO):
        send(addon, f)
    assert answered(f) == {"status": "ok"}
    assert "healthz" not in caplog.text


def test_health_needs_no_key_but_metrics_does(addon):
    addon.tctx.configure(addon, cf_proxy_keys="key-one")
    f = reverse_flow("/healthz", method="GET", content=b"")
    arrive(addon, f)
    assert f.response.status_code == 200
    f = reverse_flow("/metrics", method="GET", content=b"")
    arrive(addon, f)
    assert f.response.status_code == 401
    f = reverse_flow("/metrics", method="GET", headers=[("authorization", "Bearer key-one")], content=b"")
    arrive(addon, f)
    assert f.response.status_code == 200 and b"cf_gateway_requests" in f.response.content


# -- credentials ------------------------------------------------------------------------------------


def test_token_injected_only_when_absent(addon):
    addon.tctx.configure(addon, cf_token="cf-token-123456789")
    f = reverse_flow()
    arrive(addon, f)
    assert f.request.headers["cf-aig-authorization"] == "Bearer cf-token-123456789"
    f = reverse_flow(headers=[("cf-aig-authorization", "Bearer client-own")])
    arrive(addon, f)
    assert f.request.headers.get_all("cf-aig-authorization") == ["Bearer client-own"]


@pytest.mark.parametrize(
    "auth_header",
    [None, "Bearer wrong-key", "bearer", "Basic a2V5LW9uZTp4", "Bearer key-one extra", "key-one"],
)
def test_access_keys_refuse(addon, auth_header):
    addon.tctx.configure(addon, cf_proxy_keys="key-one,key-two")
    f = reverse_flow(headers=[("authorization", auth_header)] if auth_header else [])
    addon.requestheaders(f)
    assert f.response.status_code == 401
    assert f.response.headers["www-authenticate"] == 'Bearer realm="cf-gateway"'
    assert answered(f)["error"]["code"] == "invalid_proxy_key"
    assert "key-one" not in f.response.text and "wrong-key" not in f.response.text
    addon.request(f)
    assert not_rewritten(f)


def test_access_key_accepted_and_removed(addon):
    addon.tctx.configure(addon, cf_proxy_keys="key-one,key-two", cf_token="gw-token-abcdef")
    f = reverse_flow(headers=[("authorization", "Bearer key-two")])
    arrive(addon, f)
    assert f.response is None
    assert "authorization" not in f.request.headers
    assert f.request.headers["cf-aig-authorization"] == "Bearer gw-token-abcdef"


def test_replay_of_rewritten_flow_is_not_rewritten_twice(addon):
    addon.tctx.configure(addon, cf_proxy_keys="key-one")
    f = reverse_flow(headers=[("authorization", "Bearer key-one")])
    arrive(addon, f)
    f.is_replay = "request"
    arrive(addon, f)
    assert f.response is None
    assert f.request.path == f"{PREFIX}/chat/completions"


def test_secrets_masked_after_sending(addon):
    addon.tctx.configure(addon, cf_token="gw-token-abcdefghijkl", cf_provider_keys="forward")
    f = reverse_flow(
        headers=[
            ("authorization", "Bearer sk-provider-key-0123456789"),
            ("x-api-key", "xak-1234567890abcdef"),
        ]
    )
    arrive(addon, f)
    assert f.request.headers["authorization"] == "Bearer sk-provider-key-0123456789"  # forwarded as is
    f.response = tutils.tresp()
    addon.responseheaders(f)
    assert f.request.headers["authorization"] == "Bearer ********6789"
    assert f.request.headers["cf-aig-authorization"] == "Bearer ********ijkl"
    assert f.request.headers["x-api-key"] == "********cdef"


def test_redaction_can_be_turned_off(addon):
    addon.tctx.configure(addon, cf_redact="off")
    f = reverse_flow(headers=[("authorization", "Bearer sk-provider-key-0123456789")])
    send(addon, f)
    assert f.request.headers["authorization"] == "Bearer sk-provider-key-0123456789"


# -- responses: streams, gateway errors ------------------------------------------------------------


def sse_response(body_encoding=None):
    headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
    if body_encoding:
        headers.append((b"content-encoding", body_encoding.encode()))
    return tutils.tresp(headers=http.Headers(headers), content=b"")


def test_event_streams_are_streamed_and_recorded(addon):
    f = reverse_flow()
    arrive(addon, f)
    f.response = sse_response()
    addon.responseheaders(f)
    assert f.response.stream == addon.flows[f].recorder.relay  # a Recorder's bound relay
    assert isinstance(addon.flows[f].recorder, Recorder)
    chunks = [b'data: {"a":1}\n\n', b"data: [DONE]\n\n"]
    assert [f.response.stream(c) for c in chunks] == chunks  # passed on unchanged
    f.response.stream(b"")
    addon.response(f)
    assert f.response.content == b"".join(chunks)


def test_gzip_stream_recorded_still_encoded(addon):
    f = reverse_flow()
    arrive(addon, f)
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
    arrive(addon, f)
    f.response = sse_response()
    addon.responseheaders(f)
    for _ in range(4):
        assert f.response.stream(b"x" * 8) == b"x" * 8
    with caplog.at_level(logging.INFO):
        addon.response(f)
    assert f.response.content == b"x" * 10
    assert "stream record truncated at cf_record_limit: 22 bytes not kept" in f.comment
    assert (
        f"cf-gateway: flow {f.id} stream record truncated at cf_record_limit: 22 bytes not kept"
        in caplog.text
    )


def test_json_responses_are_not_streamed(addon):
    f = reverse_flow()
    arrive(addon, f)
    f.response = tutils.tresp(headers=http.Headers([(b"content-type", b"application/json")]))
    addon.responseheaders(f)
    assert not f.response.stream


@pytest.mark.parametrize(
    ("path", "shaped"),
    [
        (
            "/v1/chat/completions",
            {
                "error": {
                    "message": "Unauthorized (AI Gateway error 2009)",
                    "type": "gateway_error",
                    "param": None,
                    "code": 2009,
                }
            },
        ),
        (
            "/v1/messages",
            {
                "type": "error",
                "error": {
                    "type": "authentication_error",
                    "message": "Unauthorized (AI Gateway error 2009)",
                    "code": 2009,
                },
            },
        ),
    ],
)
@pytest.mark.parametrize("gzipped", [False, True])
def test_gateway_errors_are_reshaped_for_the_client(addon, path, shaped, gzipped):
    f = reverse_flow(path)
    send(addon, f, gateway_answer(401, GATEWAY_401, gzipped))
    r = f.response
    assert r.status_code == 401 and r.headers["cf-ray"] == "8f00-SJC"
    assert json.loads(r.get_content()) == {**shaped, "success": False, "result": [], "messages": []}
    assert r.headers["content-length"] == str(len(r.raw_content))
    assert r.headers.get("content-encoding") == ("gzip" if gzipped else None)
    if gzipped:
        assert json.loads(gzip.decompress(r.raw_content)) == json.loads(r.get_content())
    assert addon.flows[f].gateway_code == 2009


def test_raw_gateway_errors_are_left_alone(addon):
    addon.tctx.configure(addon, cf_gateway_errors="raw")
    f = reverse_flow()
    answer = gateway_answer(401, GATEWAY_401)
    send(addon, f, answer)
    assert f.response.raw_content == json.dumps(GATEWAY_401).encode()
    assert addon.flows[f].gateway_code == 2009


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}},
        ),
        (
            "/v1/messages",
            {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
        ),
    ],
)
def test_provider_errors_pass_unchanged(addon, path, body):
    f = reverse_flow(path)
    send(addon, f, gateway_answer(401, body))
    assert f.response.raw_content == json.dumps(body).encode()
    assert addon.flows[f].gateway_code is None


def test_gateway_2009_hint_is_logged_once_per_process(addon, caplog):
    with caplog.at_level(logging.WARNING, logger="cf_gateway"):
        for _ in range(2):
            send(addon, reverse_flow(), gateway_answer(401, GATEWAY_401))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"cf-gateway: the gateway answered 401/2009: {gateway_mod.GATEWAY_HINTS[2009]}"]


# -- the summary line --------------------------------------------------------------------------------


def test_one_log_line_per_flow_with_summary(addon, caplog):
    body = json.dumps({"model": "openai/gpt-4o-mini", "messages": []}).encode()
    f = reverse_flow(content=body, headers=[("authorization", "Bearer sk-secret-value-0000")])
    usage = json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}).encode()
    answer = tutils.tresp(
        headers=http.Headers([(b"content-type", b"application/json"), (b"cf-aig-cache-status", b"MISS")]),
        content=usage,
    )
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        send(addon, f, answer)
    lines = [r.getMessage() for r in caplog.records if r.name == "cf_gateway.requests"]
    # tflow's fixed timestamps: request 946681200-01, response 946681202-03
    assert lines == [
        f"POST /v1/chat/completions chat -> compat {ORIGIN}{PREFIX}/chat/completions 200 3000ms "
        f"ttfb=1000ms {len(usage)}B model=openai/gpt-4o-mini cache=MISS tokens=3 in/4 out"
    ]
    assert "sk-secret" not in caplog.text
    assert f.comment == "openai/gpt-4o-mini · 7 tok · 3.0 s"


def test_the_line_is_written_after_the_hook_in_an_event_loop(addon, caplog, tmp_path):
    """In mitmproxy (an event loop runs) the client's answer does not wait for the summary line:
    it is written right after the hook returns, the lines of one loop iteration in order, to the
    terminal and the file the settings named when the flow finished."""
    log_file = tmp_path / "summary.log"
    addon.tctx.configure(addon, cf_log_file=str(log_file))
    paths = ["/v1/models", "/v1/embeddings", "/v1/chat/completions"]

    def lines() -> list[str]:
        return [r.getMessage().split()[1] for r in caplog.records if r.name == "cf_gateway.requests"]

    async def run() -> None:
        for path in paths:
            f = reverse_flow(path=path)
            send(addon, f)
            assert f.comment  # the flow itself is summarised before mitmproxy goes on with it
        assert lines() == [] and log_file.read_text() == ""
        await asyncio.sleep(0)
        assert lines() == paths
        assert [line.split()[1] for line in log_file.read_text().splitlines()] == paths
        send(addon, reverse_flow(path="/v1/last"))
        # a new file named before the loop came round: the waiting line still goes to the old one
        addon.tctx.configure(addon, cf_log_file=str(tmp_path / "new.log"))
        assert log_file.read_text().splitlines()[-1].split()[1] == "/v1/last"
        send(addon, reverse_flow(path="/v1/at-shutdown"))
        addon.done()  # the lines still waiting are written before the file is closed
        assert lines()[-1] == "/v1/at-shutdown"
        assert (tmp_path / "new.log").read_text().split()[1] == "/v1/at-shutdown"

    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        asyncio.run(run())


def test_log_requests_off(addon, caplog):
    addon.tctx.configure(addon, cf_log_requests="off")
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        send(addon, reverse_flow())
    assert not [r for r in caplog.records if r.name.startswith("cf_gateway")]


def test_json_log_format(addon, caplog):
    addon.tctx.configure(addon, cf_log_format="json")
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        send(addon, reverse_flow())
    (record,) = [r for r in caplog.records if r.name == "cf_gateway.requests"]
    data = json.loads(record.getMessage())
    assert (data["status"], data["method"], data["path"], data["family"], data["route"]) == (
        200,
        "POST",
        "/v1/chat/completions",
        "chat",
        "compat",
    )


def test_upstream_failure_warns_with_reason(addon, caplog):
    f = reverse_flow()
    arrive(addon, f)
    f.error = tflow.terr("Connection refused")
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        addon.error(f)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"cf-gateway: flow {f.id}: upstream failed before a response: Connection refused"]
    (info,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == (
        f"POST /v1/chat/completions chat -> compat {ORIGIN}{PREFIX}/chat/completions 502 upstream_failed "
        "7000ms error='Connection refused'"
    )


def test_flows_the_addon_never_saw_are_not_summarised(addon, caplog):
    """A flow that failed before requestheaders (mitmproxy logs it itself) never went upstream."""
    f = reverse_flow()
    f.error = tflow.terr(
        "mitmproxy received an HTTP CONNECT request even though it is not running in regular mode"
    )
    arrive(addon, f)  # skipped: the flow already failed
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        addon.error(f)
    assert not [r for r in caplog.records if r.name.startswith("cf_gateway")]
    assert not_rewritten(f)


def test_warns_about_eager_connections_on_reverse_listeners(addon, caplog):
    addon.tctx.options.connection_strategy = "eager"  # mitmproxy's default
    addon.tctx.options.mode = ["reverse:http://127.0.0.1:0@3000"]
    with caplog.at_level(logging.WARNING):
        addon.running()
    assert "connection_strategy=lazy" in caplog.text
    caplog.clear()
    addon.tctx.options.connection_strategy = "lazy"
    with caplog.at_level(logging.WARNING):
        addon.running()
    assert caplog.text == ""


def test_startup_log_names_the_mode_never_the_secrets(monkeypatch, caplog, tmp_path):
    clean_environment(monkeypatch, tmp_path)
    keys = tmp_path / "keys.txt"
    keys.write_text("secret-key-one\nsecret-key-two\n")
    with loaded() as (a, tctx), caplog.at_level(logging.INFO):
        tctx.configure(a, **GOOD, cf_token="gw-token-secret", cf_proxy_keys=f"@{keys}")
    assert f"access keys: 2 keys (file {keys})" in caplog.text and "gateway token injected" in caplog.text
    assert "secret-key" not in caplog.text and "gw-token-secret" not in caplog.text


def test_a_reload_keeps_the_options_in_force_even_where_a_default_or_help_changed(monkeypatch):
    """mitmproxy resets an option whose default or help changed when a script reloads; a reset
    cf_proxy_keys would turn access control off."""
    from cfgw import config
    from cfgw.gateway import CfGateway

    with loaded() as (a, tctx):
        tctx.configure(a, **GOOD, cf_proxy_keys="pk-kept-Qz7vWx2LmNpR", cf_base_url="http://127.0.0.1:9")
        tctx.master.addons.remove(a)
        changed = tuple(
            config.Option(o.name, o.field, dataclasses.replace(o.spec, help=o.spec.help + " (edited)"))
            for o in config.OPTIONS
        )
        monkeypatch.setattr(config, "OPTIONS", changed)
        b = CfGateway()
        tctx.master.addons.add(b)  # what a reload does: the edited script's addon is loaded anew,
        b.configure(set(tctx.options.keys()))  # then configured with every option (script.py)
        try:
            assert b.settings is not None and b.settings.proxy_keys is not None
            assert b.settings.base_url.port == 9
            f = reverse_flow()
            b.requestheaders(f)
            assert f.response is not None and f.response.status_code == 401
        finally:
            b.done()


def test_an_edited_replay_still_gets_path_safety(addon):
    """A replayed flow is already aimed at the gateway; a path edited in mitmweb is checked too."""
    f = reverse_flow()
    arrive(addon, f)
    f.is_replay = "request"
    f.request.path = f"{PREFIX}/../../other-account/x"
    arrive(addon, f)
    assert f.response is not None and f.response.status_code == 400
    assert json.loads(f.response.content)["error"]["code"] == "invalid_path"


def test_moving_the_listener_to_all_interfaces_is_checked_too(addon):
    addon.tctx.configure(
        addon, cf_token=TOKEN, mode=["reverse:http://127.0.0.1:0@3000"], listen_host="127.0.0.1"
    )
    with pytest.raises(exceptions.OptionsError, match="PROXY_KEYS"):
        addon.tctx.configure(addon, listen_host="0.0.0.0")


def test_the_replay_stash_outlives_a_reload():
    from cfgw.gateway import CfGateway

    with loaded() as (a, tctx):
        tctx.configure(a, **GOOD)
        f = reverse_flow(headers=[("authorization", "Bearer sk-provider-key-0123456789")])
        send(a, f)
        assert f.request.headers["authorization"] == "Bearer ********6789"
        tctx.master.addons.remove(a)
        b = CfGateway()
        tctx.master.addons.add(b)
        b.configure(set(tctx.options.keys()))
        try:
            f.is_replay = "request"
            f.response = None
            b.requestheaders(f)
            assert f.response is None
            assert f.request.headers["authorization"] == "Bearer sk-provider-key-0123456789"
        finally:
            b.done()


def test_warns_about_stream_large_bodies(addon, caplog):
    addon.tctx.options.stream_large_bodies = "1m"
    with caplog.at_level(logging.WARNING):
        addon.running()
    assert "stream_large_bodies is set" in caplog.text


def test_the_log_file_gets_the_masked_line(addon, tmp_path):
    """A client can put anything in its path; the file goes through the secret filter as the log does."""
    log_file = tmp_path / "summary.log"
    addon.tctx.configure(addon, cf_token=TOKEN, cf_log_file=str(log_file))
    f = reverse_flow(path=f"/v1/{TOKEN}/models", method="GET", content=b"")
    send(addon, f)
    text = log_file.read_text()
    assert "/models" in text and TOKEN not in text
