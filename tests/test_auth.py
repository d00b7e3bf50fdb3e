"""Access keys, token injection and secret masking (cfgw.auth, and the addon hooks that use it)."""

from __future__ import annotations

import hmac
import json
import logging
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from cfgw import auth, config
from tests.flows import GATEWAY, GOOD, PREFIX, clean_environment, loaded, reverse_flow, send

# Fixed, distinctive secrets: their tails cannot turn up by chance in ids or hex.
KEY_A = "pk-alpha-Qz7vWx2LmNpRtYkJhG"
KEY_B = "pk-bravo-Hd9sUe4FcVbXoZqWmT"
TOKEN = "cfat-Tq8RwE3yUiOpLkJhGfDsZx"
PROVIDER_KEY = "prov-key-Zx4CvBnM7aSdFgHjKlPq"


def arrive(addon, f) -> None:
    """The request hooks as mitmproxy calls them: requestheaders with the head, request with the body."""
    addon.requestheaders(f)
    addon.request(f)


# -- pure helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
        ("Basic YWJjOmRlZg==", None),
        ("Bearer abc def", None),
        ("Bearer abc, Bearer def", None),  # two Authorization headers, as mitmproxy joins them
        ("Token abc", None),
    ],
)
def test_bearer_token(value, token):
    assert auth.bearer_token(value) == token


def test_key_matches_only_exact_keys():
    digests = (auth.digest(KEY_A), auth.digest(KEY_B))
    assert auth.key_matches(KEY_A, digests)
    assert auth.key_matches(KEY_B, digests)
    for guess in (None, "", KEY_A[:-1], KEY_A + "x", KEY_A.upper(), " " + KEY_A):
        assert not auth.key_matches(guess, digests)
    assert not auth.key_matches(KEY_A, ())


@pytest.mark.parametrize("guess", [KEY_A, KEY_B, "pk-wrong", None])
def test_key_matches_compares_against_every_key(monkeypatch, guess):
    """No early exit: the work done does not tell a client which key (if any) it hit."""
    calls = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append(len(b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    digests = (auth.digest(KEY_A), auth.digest(KEY_B), auth.digest("pk-third-key"))
    auth.key_matches(guess, digests)
    assert calls == [32, 32, 32]


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (TOKEN, auth.MASK + TOKEN[-4:]),
        (f"Bearer {TOKEN}", f"Bearer {auth.MASK}{TOKEN[-4:]}"),
        (f"bearer {TOKEN}", f"bearer {auth.MASK}{TOKEN[-4:]}"),
        ("Basic dXNlcjpwYXNzd29yZDEyMzQ1Ng==", f"Basic {auth.MASK}Ng=="),
        ("short-key", auth.MASK),  # too short to keep anything
        ("Bearer short-key", f"Bearer {auth.MASK}"),
        ("Bearer", auth.MASK),
        ("", auth.MASK),
    ],
)
def test_mask(value, masked):
    assert auth.mask(value) == masked
    assert auth.mask(masked) == masked  # masking twice changes nothing


SECRET_CHARS = string.ascii_letters + string.digits + "-_.~+/="


@settings(max_examples=300, deadline=None)
@given(secret=st.text(SECRET_CHARS, min_size=5, max_size=200), bearer=st.booleans())
def test_mask_keeps_at_most_the_last_four_characters(secret, bearer):
    value = f"Bearer {secret}" if bearer else secret
    out = auth.mask(value)
    assert secret[-5:] not in out.removeprefix("Bearer ")  # (the scheme word itself may hold it: "earer")
    kept = out.removeprefix("Bearer ").removeprefix(auth.MASK)
    assert len(kept) <= 4 and secret.endswith(kept)


def test_redact_masks_every_secret_header_and_nothing_else():
    headers = http.Headers(
        [
            (b"Authorization", f"Bearer {PROVIDER_KEY}".encode()),
            (b"authorization", f"Bearer {KEY_A}".encode()),  # repeated header: every value
            (b"CF-AIG-Authorization", f"Bearer {TOKEN}".encode()),
            (b"x-api-key", KEY_B.encode()),
            (b"api-key", KEY_B.encode()),
            (b"proxy-authorization", f"Basic {KEY_A}".encode()),
            (b"x-custom", KEY_A.encode()),
            (b"content-type", b"application/json"),
            (b"x-api-key", auth.MASK.encode() + b"beef"),  # masked already: not a secret to keep
        ]
    )
    clear = [(name.lower(), value) for name, value in headers.fields[:6]]
    found = auth.redact(headers)
    assert [(name, real) for name, _, real in found] == clear  # for the replay stash, in order
    assert [masked for _, masked, _ in found] == [value for _, value in headers.fields[:6]]
    assert headers.get_all("authorization") == [
        f"Bearer {auth.MASK}{PROVIDER_KEY[-4:]}",
        f"Bearer {auth.MASK}{KEY_A[-4:]}",
    ]
    assert headers["cf-aig-authorization"] == f"Bearer {auth.MASK}{TOKEN[-4:]}"
    assert headers.get_all("x-api-key") == [auth.MASK + KEY_B[-4:], auth.MASK + "beef"]
    assert headers["api-key"] == auth.MASK + KEY_B[-4:]
    assert headers["proxy-authorization"] == f"Basic {auth.MASK}{KEY_A[-4:]}"
    assert headers["x-custom"] == KEY_A  # not a known secret header
    assert headers["content-type"] == "application/json"
    assert next(iter(headers.keys())) == "Authorization"  # order and spelling kept


def fields(*pairs: tuple[str, str]) -> http.Headers:
    return http.Headers([(k.encode(), v.encode()) for k, v in pairs])


CLIENT_GATEWAY = (("cf-aig-collect-log", "false"), ("CF-AIG-Custom-Cost", '{"total_cost":0}'))


KEY_SENT = ("authorization", "Bearer k")
X_KEY_SENT = ("x-api-key", "k")
OWN_TOKEN = ("CF-AIG-Authorization", "Bearer own")
INJECTED = ("cf-aig-authorization", f"Bearer {TOKEN}")
SET_CREDENTIALS = {  # id: (token, key_mode, strip other cf-aig-*, headers before, headers after)
    "pass-through without token": (None, False, False, [KEY_SENT, X_KEY_SENT], [KEY_SENT, X_KEY_SENT]),
    "pass-through, token added": (TOKEN, False, False, [KEY_SENT], [KEY_SENT, INJECTED]),
    "pass-through, the client's token kept": (TOKEN, False, False, [OWN_TOKEN], [OWN_TOKEN]),
    "pass-through, strip": (TOKEN, False, True, [KEY_SENT, OWN_TOKEN, *CLIENT_GATEWAY], [KEY_SENT, INJECTED]),
    "key mode, allow": (
        TOKEN,
        True,
        False,
        [KEY_SENT, X_KEY_SENT, OWN_TOKEN, *CLIENT_GATEWAY],
        [*CLIENT_GATEWAY, INJECTED],
    ),
    "key mode without token, allow": (None, True, False, [KEY_SENT, OWN_TOKEN], [OWN_TOKEN]),
    "key mode without token, strip": (None, True, True, [X_KEY_SENT, OWN_TOKEN, *CLIENT_GATEWAY], []),
}


@pytest.mark.parametrize("case", SET_CREDENTIALS)
def test_with_credentials(case):
    token, key_mode, strip, before, after = SET_CREDENTIALS[case]
    assert auth.with_credentials(fields(*before).fields, token, key_mode, strip) == fields(*after).fields


# -- key files ---------------------------------------------------------------------------


def test_key_file_ignores_comments_blank_lines_and_line_endings(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_bytes(
        f"# proxy keys\r\n\r\n  {KEY_A}  \r\n\t# {KEY_B} is retired\n\n{KEY_B}\n{KEY_A}\n   \n".encode()
    )
    keys = config.parse_proxy_keys(f"@{f}")
    assert keys.keys == (KEY_A, KEY_B)
    assert keys.source == f"file {f}"


def test_key_file_path_with_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "k").write_text(KEY_A)
    assert config.parse_proxy_keys("@~/k").keys == (KEY_A,)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "holds no keys"),
        (b"# only a comment\n\n   \n", "holds no keys"),
        (b"\xff\xfe not utf-8", "cannot read key file"),
        (f"{KEY_A}\nbad {KEY_B}\n".encode(), "printable ASCII without spaces"),
        (f"{KEY_A} # inline comments are not comments\n".encode(), "printable ASCII without spaces"),
    ],
)
def test_key_file_errors_never_show_keys(tmp_path, content, problem):
    f = tmp_path / "keys.txt"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=problem) as e:
        config.parse_proxy_keys(f"@{f}")
    assert KEY_A not in str(e.value) and KEY_B not in str(e.value)


def test_key_file_unreadable(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read key file .*missing.*FileNotFoundError"):
        config.parse_proxy_keys(f"@{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match=r"cannot read key file .*IsADirectoryError"):
        config.parse_proxy_keys(f"@{tmp_path}")


@pytest.mark.parametrize(
    ("options", "mode"),
    [
        ({}, "pass-through"),
        ({"cf_token": TOKEN}, "gateway token injected"),
        ({"cf_proxy_keys": KEY_A}, "access keys: 1 key (list)"),
        ({"cf_proxy_keys": f"{KEY_A},{KEY_B}", "cf_token": f"Bearer {TOKEN}"}, "access keys: 2 keys (list)"),
    ],
)
def test_startup_line_names_the_mode_and_no_secret(monkeypatch, tmp_path, caplog, options, mode):
    clean_environment(monkeypatch, tmp_path)
    with loaded() as (a, tctx), caplog.at_level(logging.INFO, logger="cf_gateway"):
        tctx.configure(a, **GOOD, **options)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "cf_gateway"]
    assert mode in line
    assert ("gateway token injected" in line) == ("cf_token" in options)
    for secret in (KEY_A, KEY_B, TOKEN):
        assert secret[-5:] not in line


# -- secrets as options: never shown in clear ----------------------------------------------


@pytest.mark.parametrize(
    ("option", "env", "value"),
    [("cf_token", "CF_AIG_TOKEN", TOKEN), ("cf_proxy_keys", "PROXY_KEYS", f"{KEY_A},{KEY_B}")],
)
def test_secrets_from_the_environment_show_their_source(monkeypatch, tmp_path, option, env, value):
    clean_environment(monkeypatch, tmp_path)
    monkeypatch.setenv(env, value)
    with loaded() as (a, tctx):
        tctx.configure(a, **GOOD)
        assert getattr(tctx.options, option) == f"(from {env})"
        assert a.settings.token == (TOKEN if env == "CF_AIG_TOKEN" else None)
        assert a.settings.proxy_keys == (
            config.AccessKeys((KEY_A, KEY_B), "list") if env == "PROXY_KEYS" else None
        )


def test_secrets_from_a_dotenv_file_show_their_source(monkeypatch, tmp_path):
    clean_environment(monkeypatch, tmp_path)
    (tmp_path / ".env").write_text(f"CF_AIG_TOKEN={TOKEN}\n")
    with loaded() as (a, tctx):
        tctx.configure(a, **GOOD)
        assert tctx.options.cf_token == "(from CF_AIG_TOKEN)"
        assert a.settings.token == TOKEN


def test_secret_files(addon, tmp_path):
    (tmp_path / "token").write_text(f"Bearer {TOKEN}\n")
    (tmp_path / "keys").write_text(f"# team keys\n{KEY_A}\n{KEY_B}\n")
    addon.tctx.configure(addon, cf_token=f"@{tmp_path / 'token'}", cf_proxy_keys=f"@{tmp_path / 'keys'}")
    assert addon.tctx.options.cf_token == f"@{tmp_path / 'token'}"
    assert addon.settings.token == TOKEN
    assert addon.settings.proxy_keys == config.AccessKeys((KEY_A, KEY_B), f"file {tmp_path / 'keys'}")
    f = reverse_flow(headers=[("x-api-key", KEY_B)])
    arrive(addon, f)
    assert f.response is None and f.request.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"


# -- the addon: access keys, token, masking ----------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "problem"),
    [
        (None, "Missing"),
        (f"Bearer {KEY_A}x", "Invalid"),
        (f"Bearer {PROVIDER_KEY}", "Invalid"),
        (f"Basic {KEY_A}", "Invalid"),
        (KEY_A, "Invalid"),  # no scheme
        (f"Bearer {KEY_A} {KEY_B}", "Invalid"),
        ("Bearer", "Invalid"),
    ],
)
def test_refused_requests_are_answered_401_and_masked(addon, caplog, authorization, problem):
    addon.tctx.configure(addon, cf_proxy_keys=f"{KEY_A},{KEY_B}", cf_token=TOKEN)
    f = reverse_flow(headers=[("authorization", authorization)] if authorization else [])
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        addon.requestheaders(f)
        assert f.response is not None  # refused on the headers, before the body is read
        send(addon, f)
    r = f.response
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="cf-gateway"'
    assert r.headers["content-type"] == "application/json"
    error = json.loads(r.content)["error"]
    assert error["code"] == "invalid_proxy_key" and error["message"].startswith(f"{problem} proxy key: ")
    assert error["type"] == "authentication_error"
    # never rewritten, so never forwarded; no token added to a request that goes nowhere
    assert (f.request.host, f.request.path) == ("127.0.0.1", "/v1/chat/completions")
    assert "cf-aig-authorization" not in f.request.headers
    saved = json.dumps(f.get_state(), default=repr) + caplog.text + r.text
    for secret in (KEY_A, KEY_B, TOKEN, PROVIDER_KEY):
        assert secret[-5:] not in saved
    assert "POST /v1/chat/completions chat 401 " in caplog.text


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_access_key_in_either_header_admits_and_both_are_removed(addon, header):
    addon.tctx.configure(addon, cf_proxy_keys=f"{KEY_A},{KEY_B}", cf_token=TOKEN)
    presented = (header, f"bearer {KEY_B}" if header == "authorization" else KEY_B)
    other = ("x-api-key", PROVIDER_KEY) if header == "authorization" else ("api-key", PROVIDER_KEY)
    f = reverse_flow("/v1/messages", headers=[presented, other, ("anthropic-version", "2023-06-01")])
    arrive(addon, f)
    assert f.response is None
    assert f.request.path == f"{GATEWAY}/anthropic/v1/messages"
    assert "authorization" not in f.request.headers and "x-api-key" not in f.request.headers
    assert f.request.headers["anthropic-version"] == "2023-06-01"
    assert f.request.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"


def test_with_a_token_and_no_keys_client_keys_are_dropped_by_default(addon):
    """Unified Billing / stored keys: SDKs insist on sending some key, which would bypass them."""
    addon.tctx.configure(addon, cf_token=TOKEN)
    f = reverse_flow(
        "/v1/messages", headers=[("authorization", f"Bearer {PROVIDER_KEY}"), ("x-api-key", PROVIDER_KEY)]
    )
    arrive(addon, f)
    assert f.response is None
    assert "authorization" not in f.request.headers and "x-api-key" not in f.request.headers
    assert f.request.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"


def test_without_a_token_client_keys_pass_untouched_by_default(addon):
    f = reverse_flow(headers=[("authorization", f"Bearer {PROVIDER_KEY}"), ("x-api-key", PROVIDER_KEY)])
    arrive(addon, f)
    assert f.request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert f.request.headers["x-api-key"] == PROVIDER_KEY


def test_provider_keys_drop_without_a_token(addon):
    addon.tctx.configure(addon, cf_provider_keys="drop")
    f = reverse_flow(headers=[("authorization", f"Bearer {PROVIDER_KEY}")])
    arrive(addon, f)
    assert "authorization" not in f.request.headers


def test_without_keys_both_key_headers_pass_untouched(addon):
    addon.tctx.configure(addon, cf_token=TOKEN, cf_provider_keys="forward")
    f = reverse_flow(
        "/v1/messages", headers=[("authorization", f"Bearer {PROVIDER_KEY}"), ("x-api-key", PROVIDER_KEY)]
    )
    arrive(addon, f)
    assert f.response is None
    assert f.request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert f.request.headers["x-api-key"] == PROVIDER_KEY
    assert f.request.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("policy", ["auto", "allow", "strip"])
def test_in_key_mode_the_proxy_token_replaces_the_clients(addon, policy):
    addon.tctx.configure(addon, cf_proxy_keys=KEY_A, cf_token=TOKEN, cf_client_gateway_headers=policy)
    f = reverse_flow(
        headers=[("authorization", f"Bearer {KEY_A}"), ("cf-aig-authorization", "Bearer own-token")]
    )
    arrive(addon, f)
    assert f.request.headers.get_all("cf-aig-authorization") == [f"Bearer {TOKEN}"]


@pytest.mark.parametrize(
    ("keys", "policy", "kept"),
    [
        (True, "auto", False),
        (True, "allow", True),
        (True, "strip", False),
        (False, "auto", True),
        (False, "allow", True),
        (False, "strip", False),
    ],
)
def test_client_gateway_headers_policy(addon, keys, policy, kept):
    addon.tctx.configure(addon, cf_client_gateway_headers=policy, cf_proxy_keys=KEY_A if keys else "")
    client = [("authorization", f"Bearer {KEY_A}")] if keys else []
    f = reverse_flow(headers=[*client, *CLIENT_GATEWAY, ("x-other", "1")])
    arrive(addon, f)
    assert f.response is None
    forwarded = [(k, v) for k, v in f.request.headers.fields if k.lower().startswith(b"cf-aig-")]
    assert forwarded == (list(fields(*CLIENT_GATEWAY).fields) if kept else [])
    assert f.request.headers["x-other"] == "1"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_health_needs_no_key_and_is_not_logged(addon, caplog, method):
    addon.tctx.configure(addon, cf_proxy_keys=KEY_A)
    f = reverse_flow("/healthz", method=method, headers=[("authorization", f"Bearer {KEY_B}")], content=b"")
    with caplog.at_level(logging.DEBUG, logger="cf_gateway"):
        send(addon, f)
    assert f.response.status_code == 200
    if method == "GET":
        assert json.loads(f.response.content) == {"status": "ok"}
    else:  # no body, but the GET's length
        assert f.response.raw_content == b"" and f.response.headers["content-length"] == "15"
    assert f.request.host == "127.0.0.1"
    assert f.request.headers["authorization"] == f"Bearer {auth.MASK}{KEY_B[-4:]}"
    assert not [r for r in caplog.records if r.name.startswith("cf_gateway")]


def test_health_other_methods_are_not_local(addon):
    addon.tctx.configure(addon, cf_proxy_keys=KEY_A)
    f = reverse_flow("/healthz", method="POST")
    arrive(addon, f)
    assert f.response.status_code == 401


def test_secrets_masked_once_sent_but_forwarded_unmasked(addon):
    addon.tctx.configure(addon, cf_token=TOKEN, cf_provider_keys="forward")
    f = reverse_flow(
        headers=[
            ("authorization", f"Bearer {PROVIDER_KEY}"),
            ("api-key", KEY_B),
            ("x-api-key", KEY_A),
        ]
    )
    arrive(addon, f)
    forwarded = f.request.headers.copy()
    assert forwarded["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert forwarded["cf-aig-authorization"] == f"Bearer {TOKEN}"
    f.response = tutils.tresp()
    addon.responseheaders(f)
    state = json.dumps(f.get_state(), default=repr)
    for secret in (KEY_A, KEY_B, TOKEN, PROVIDER_KEY):
        assert secret[-5:] not in state
        assert secret[-4:] in state
    assert f.request.headers["api-key"] == auth.MASK + KEY_B[-4:]


def test_secrets_masked_when_upstream_fails_before_a_response(addon, caplog):
    addon.tctx.configure(addon, cf_token=TOKEN, cf_provider_keys="forward")
    f = reverse_flow(headers=[("x-api-key", KEY_A)])
    arrive(addon, f)
    f.error = tflow.terr("Connection refused")
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        addon.error(f)
    assert f.request.headers["cf-aig-authorization"] == f"Bearer {auth.MASK}{TOKEN[-4:]}"
    assert f.request.headers["x-api-key"] == auth.MASK + KEY_A[-4:]
    assert TOKEN[-5:] not in caplog.text and KEY_A[-5:] not in caplog.text


def test_secrets_masked_on_shutdown_while_waiting_for_an_answer(addon):
    """-w saves flows still waiting for an answer when mitmdump stops."""
    f = reverse_flow(headers=[("x-api-key", KEY_A)])
    arrive(addon, f)
    addon.done()
    assert f.request.headers["x-api-key"] == auth.MASK + KEY_A[-4:]


def test_redact_off_keeps_values_on_the_flow(addon):
    addon.tctx.configure(addon, cf_token=TOKEN, cf_redact="off", cf_provider_keys="forward")
    f = reverse_flow(headers=[("x-api-key", KEY_A)])
    send(addon, f)
    assert f.request.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"
    assert f.request.headers["x-api-key"] == KEY_A


# -- replays: the real secret goes back on, never onto the saved flow ------------------------


def replayed(f):
    """What mitmweb's Replay does to a finished flow (clientplayback.start_replay) before the hooks run."""
    f.live = True  # a duplicate (f.copy()) is not live until its replay runs
    f.is_replay = "request"
    f.response = None
    f.error = None
    return f


def test_replay_gets_the_real_secret_back_and_is_masked_again(addon):
    f = reverse_flow(headers=[("authorization", f"Bearer {PROVIDER_KEY}")])
    send(addon, f)
    assert f.request.headers["authorization"] == f"Bearer {auth.MASK}{PROVIDER_KEY[-4:]}"
    replayed(f)
    addon.requestheaders(f)
    assert f.request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    addon.request(f)
    assert f.response is None and f.request.path == f"{PREFIX}/chat/completions"  # not rewritten twice
    f.response = tutils.tresp()
    addon.responseheaders(f)
    assert f.request.headers["authorization"] == f"Bearer {auth.MASK}{PROVIDER_KEY[-4:]}"


def test_mitmdump_keeps_no_secrets_for_replays(monkeypatch, tmp_path):
    """mitmdump has no flow view: nothing can replay a finished flow, so no secret is kept for one."""
    clean_environment(monkeypatch, tmp_path)
    with loaded(view=False) as (a, tctx):
        tctx.configure(a, **GOOD)
        f = reverse_flow(headers=[("authorization", f"Bearer {PROVIDER_KEY}")])
        send(a, f)
        assert f.request.headers["authorization"] == f"Bearer {auth.MASK}{PROVIDER_KEY[-4:]}"
        assert len(a.stash) == 0 and "secrets" not in f.metadata["cf_gateway"]
        replayed(f)
        a.requestheaders(f)  # a script replaying it anyway gets a clear refusal, not the mask sent on
        assert f.response is not None and f.response.status_code == 400
        assert f.request.headers["authorization"] == f"Bearer {auth.MASK}{PROVIDER_KEY[-4:]}"


def test_duplicate_replays_with_the_secret(addon):
    f = reverse_flow("/v1/messages", headers=[("x-api-key", PROVIDER_KEY)])
    send(addon, f)
    dup = replayed(f.copy())
    dup.request.content = b'{"edited": true}'
    arrive(addon, dup)
    assert dup.response is None
    assert dup.request.headers["x-api-key"] == PROVIDER_KEY
    assert dup.request.path == f"{GATEWAY}/anthropic/v1/messages"


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/v1/chat/completions", "openai"), ("/v1/responses", "openai"), ("/v1/messages", "anthropic")],
)
def test_unrestorable_mask_is_answered_400_not_sent(addon, caplog, path, shape):
    f = reverse_flow(path, headers=[("x-api-key", PROVIDER_KEY)])
    send(addon, f)
    del f.metadata["cf_gateway"]["secrets"]  # as for a flow loaded from a file after a restart
    replayed(f)
    with caplog.at_level(logging.WARNING, logger="cf_gateway"):
        arrive(addon, f)
    assert f.response.status_code == 400
    body = json.loads(f.response.content)
    if shape == "anthropic":
        assert (body["type"], body["error"]["type"]) == ("error", "invalid_request_error")
    else:
        assert set(body) == {"error"} and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "unrestorable_secret"
    assert body["error"]["message"].startswith(
        "This replay was not sent: its 'x-api-key' header holds a mask"
    )
    assert not addon.flows[f].admitted
    assert f.request.headers["x-api-key"] == auth.MASK + PROVIDER_KEY[-4:]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"cf-gateway: replay of flow {f.id} not sent: its x-api-key header is masked")


def test_key_mode_replay_gets_the_fresh_token(addon):
    addon.tctx.configure(addon, cf_proxy_keys=KEY_A, cf_token=TOKEN)
    f = reverse_flow(headers=[("authorization", f"Bearer {KEY_A}")])
    send(addon, f)
    assert f.request.headers["cf-aig-authorization"] == f"Bearer {auth.MASK}{TOKEN[-4:]}"
    fresh = "cfat-rotated-Lm4Np8Qr2St6Uv"
    addon.tctx.configure(addon, cf_token=fresh)
    replayed(f)
    arrive(addon, f)  # no access key on a replay: the person at mitmweb is the operator
    assert f.response is None
    assert f.request.headers.get_all("cf-aig-authorization") == [f"Bearer {fresh}"]


def test_a_flow_mitmproxy_refused_before_requestheaders_is_still_masked(addon):
    """mitmproxy's own header checks (Content-Length with Transfer-Encoding, a bad header name)
    fail the flow before requestheaders: the addon never took it on, and -w would save it."""
    f = reverse_flow(headers=[("authorization", f"Bearer {KEY_A}"), ("x-api-key", PROVIDER_KEY)])
    f.error = tflow.terr("Received an invalid header")
    addon.error(f)
    assert f.request.headers["authorization"] == f"Bearer {auth.MASK}{KEY_A[-4:]}"
    assert f.request.headers["x-api-key"] == auth.MASK + PROVIDER_KEY[-4:]


def test_flows_of_an_unconfigured_addon_are_masked_too(addon):
    addon.settings = None  # e.g. a reload whose configure failed: every request is answered 503
    f = reverse_flow(headers=[("authorization", f"Bearer {KEY_A}")])
    arrive(addon, f)
    assert f.response.status_code == 503
    addon.responseheaders(f)
    assert f.request.headers["authorization"] == f"Bearer {auth.MASK}{KEY_A[-4:]}"
