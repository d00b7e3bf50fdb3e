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
from mitmproxy.test import taddons, tflow, tutils

from cfgw import auth, config
from cfgw.gateway import CfGateway
from tests.flows import GOOD, PREFIX, reverse_flow

# Fixed, distinctive secrets: their tails cannot turn up by chance in ids or hex.
KEY_A = "pk-alpha-Qz7vWx2LmNpRtYkJhG"
KEY_B = "pk-bravo-Hd9sUe4FcVbXoZqWmT"
TOKEN = "cfat-Tq8RwE3yUiOpLkJhGfDsZx"
PROVIDER_KEY = "prov-key-Zx4CvBnM7aSdFgHjKlPq"


def sent(addon, f):
    """What mitmproxy does around sending: request hook, then (real or emulated) responseheaders."""
    addon.request(f)
    if f.response is None:
        f.response = tutils.tresp()
    addon.responseheaders(f)
    addon.response(f)


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
        ]
    )
    auth.redact(headers)
    assert headers.get_all("authorization") == [
        f"Bearer {auth.MASK}{PROVIDER_KEY[-4:]}",
        f"Bearer {auth.MASK}{KEY_A[-4:]}",
    ]
    assert headers["cf-aig-authorization"] == f"Bearer {auth.MASK}{TOKEN[-4:]}"
    assert headers["x-api-key"] == headers["api-key"] == auth.MASK + KEY_B[-4:]
    assert headers["proxy-authorization"] == f"Basic {auth.MASK}{KEY_A[-4:]}"
    assert headers["x-custom"] == KEY_A  # not a known secret header
    assert headers["content-type"] == "application/json"
    assert next(iter(headers.keys())) == "Authorization"  # order and spelling kept


def test_inject_token():
    req = tutils.treq()
    auth.inject_token(req, None)
    assert "cf-aig-authorization" not in req.headers
    auth.inject_token(req, TOKEN)
    assert req.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"
    req = tutils.treq(headers=http.Headers([(b"CF-AIG-AUTHORIZATION", b"Bearer client-own")]))
    auth.inject_token(req, TOKEN)
    assert req.headers.get_all("cf-aig-authorization") == ["Bearer client-own"]


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
def test_startup_line_names_the_mode_and_no_secret(caplog, options, mode):
    a = CfGateway()
    with taddons.context(a) as tctx, caplog.at_level(logging.INFO, logger="cf_gateway"):
        tctx.configure(a, **GOOD, **options)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "cf_gateway"]
    assert mode in line
    assert ("gateway token injected" in line) == ("cf_token" in options)
    for secret in (KEY_A, KEY_B, TOKEN):
        assert secret[-5:] not in line


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
        sent(addon, f)
    r = f.response
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/json"
    error = json.loads(r.content)["error"]
    assert error["code"] == "invalid_proxy_key" and error["message"].startswith(problem)
    assert error["type"] == "invalid_request_error"
    # never rewritten, so never forwarded; no token added to a request that goes nowhere
    assert (f.request.host, f.request.path) == ("127.0.0.1", "/v1/chat/completions")
    assert "cf-aig-authorization" not in f.request.headers
    saved = json.dumps(f.get_state(), default=repr) + caplog.text + r.text
    for secret in (KEY_A, KEY_B, TOKEN, PROVIDER_KEY):
        assert secret[-5:] not in saved
    assert " 401 " in caplog.text


def test_valid_key_removed_and_token_injected(addon):
    addon.tctx.configure(addon, cf_proxy_keys=f"{KEY_A},{KEY_B}", cf_token=TOKEN)
    f = reverse_flow(headers=[("Authorization", f"bearer {KEY_B}"), ("x-api-key", PROVIDER_KEY)])
    addon.request(f)
    assert f.response is None
    assert f.request.path == f"{PREFIX}/chat/completions"
    assert "authorization" not in f.request.headers
    assert f.request.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"
    assert f.request.headers["x-api-key"] == PROVIDER_KEY  # forwarded unmasked


def test_client_token_left_alone_with_keys(addon):
    addon.tctx.configure(addon, cf_proxy_keys=KEY_A, cf_token=TOKEN)
    f = reverse_flow(
        headers=[("authorization", f"Bearer {KEY_A}"), ("cf-aig-authorization", "Bearer own-token")]
    )
    addon.request(f)
    assert f.request.headers.get_all("cf-aig-authorization") == ["Bearer own-token"]


def test_without_keys_authorization_passes_untouched(addon):
    addon.tctx.configure(addon, cf_token=TOKEN)
    f = reverse_flow(headers=[("authorization", f"Bearer {PROVIDER_KEY}")])
    addon.request(f)
    assert f.response is None
    assert f.request.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert f.request.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_health_needs_no_key_and_is_not_logged(addon, caplog, method):
    addon.tctx.configure(addon, cf_proxy_keys=KEY_A)
    f = reverse_flow("/healthz", method=method, headers=[("authorization", f"Bearer {KEY_B}")])
    with caplog.at_level(logging.DEBUG, logger="cf_gateway"):
        sent(addon, f)
    assert f.response.status_code == 200
    if method == "GET":
        assert json.loads(f.response.content) == {"status": "ok"}
    else:  # no body, but the GET's length
        assert f.response.raw_content == b"" and f.response.headers["content-length"] == "15"
    assert f.request.host == "127.0.0.1"
    assert f.request.headers["authorization"] == f"Bearer {auth.MASK}{KEY_B[-4:]}"
    assert not [r for r in caplog.records if r.name == "cf_gateway"]


def test_health_other_methods_are_not_local(addon):
    addon.tctx.configure(addon, cf_proxy_keys=KEY_A)
    f = reverse_flow("/healthz", method="POST")
    addon.request(f)
    assert f.response.status_code == 401


def test_secrets_masked_once_sent_but_forwarded_unmasked(addon):
    addon.tctx.configure(addon, cf_token=TOKEN)
    f = reverse_flow(
        headers=[
            ("authorization", f"Bearer {PROVIDER_KEY}"),
            ("api-key", KEY_B),
            ("x-api-key", KEY_A),
        ]
    )
    addon.request(f)
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
    addon.tctx.configure(addon, cf_token=TOKEN)
    f = reverse_flow(headers=[("x-api-key", KEY_A)])
    addon.request(f)
    f.error = tflow.terr("Connection refused")
    with caplog.at_level(logging.INFO, logger="cf_gateway"):
        addon.error(f)
    assert f.request.headers["cf-aig-authorization"] == f"Bearer {auth.MASK}{TOKEN[-4:]}"
    assert f.request.headers["x-api-key"] == auth.MASK + KEY_A[-4:]
    assert TOKEN[-5:] not in caplog.text and KEY_A[-5:] not in caplog.text


def test_redact_off_keeps_values_on_the_flow(addon):
    addon.tctx.configure(addon, cf_token=TOKEN, cf_redact="off")
    f = reverse_flow(headers=[("x-api-key", KEY_A)])
    sent(addon, f)
    assert f.request.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"
    assert f.request.headers["x-api-key"] == KEY_A


def test_replayed_flow_is_not_asked_for_a_key(addon):
    """A replay from mitmweb carries the masked headers; it was authorised when first sent."""
    addon.tctx.configure(addon, cf_proxy_keys=KEY_A, cf_token=TOKEN)
    f = reverse_flow(headers=[("authorization", f"Bearer {KEY_A}")])
    sent(addon, f)
    replay = f.copy()
    replay.response = None
    replay.is_replay = "request"
    replay.request.headers["cf-aig-authorization"] = f"Bearer {TOKEN}"  # as a user would fix it up
    addon.request(replay)
    assert replay.response is None
    assert replay.request.path == f"{PREFIX}/chat/completions"
