"""Options: parsers, the single declaration of each option, environment defaults and secrets (cfgw.config)."""

from __future__ import annotations

import dataclasses

import pytest

from cfgw import config

GOOD_ACCOUNT = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "value", ["", "   ", "0123", "0123456789ABCDEF0123456789ABCDEF", GOOD_ACCOUNT + "0", "g" * 32]
)
def test_account_id_rejects(value):
    with pytest.raises(ValueError):
        config.parse_account_id(value)


def test_account_id_accepts_and_strips():
    assert config.parse_account_id(f" {GOOD_ACCOUNT}\n") == GOOD_ACCOUNT


@pytest.mark.parametrize("value", ["default", "my-gw", "a_b-c_d", "x" * 64, "a1-b2-c3"])
def test_gateway_id_accepts(value):
    assert config.parse_gateway_id(value) == value


def test_gateway_id_defaults_to_cloudflares_auto_created_gateway():
    assert config.parse_gateway_id("") == "default"
    assert config.parse_gateway_id("  ") == "default"


@pytest.mark.parametrize("value", ["My-GW", "a--b", "-a", "a-", "a.b", "a/b", "x" * 65, "bad..id"])
def test_gateway_id_rejects(value):
    with pytest.raises(ValueError):
        config.parse_gateway_id(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", config.Upstream("https", "gateway.ai.cloudflare.com", 443)),
        ("https://gateway.ai.cloudflare.com", config.Upstream("https", "gateway.ai.cloudflare.com", 443)),
        ("http://127.0.0.1:8787/", config.Upstream("http", "127.0.0.1", 8787)),
        ("http://[::1]:9000", config.Upstream("http", "::1", 9000)),
    ],
)
def test_base_url_accepts(value, expected):
    assert config.parse_base_url(value) == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("ftp://example.com", "http"),
        ("gateway.ai.cloudflare.com", "http"),
        ("https://", "no host"),
        ("https://user:pw@example.com", "credentials"),
        ("https://example.com/v1", "without path"),
        ("https://example.com?x=1", "without path"),
        ("https://example.com:99999", "not a valid URL"),
    ],
)
def test_base_url_rejects(value, problem):
    with pytest.raises(ValueError, match=problem):
        config.parse_base_url(value)


def test_upstream_hostport_omits_default_ports():
    assert config.Upstream("https", "h", 443).hostport == "h"
    assert config.Upstream("http", "h", 80).hostport == "h"
    assert config.Upstream("http", "h", 8080).hostport == "h:8080"
    assert config.Upstream("http", "::1", 8080).hostport == "[::1]:8080"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8m", 8 << 20),
        ("512k", 512 << 10),
        ("0", 0),
        ("1g", 1 << 30),
        ("100", 100),
        ("2MiB", 2 << 20),
        (" 3 KB ", 3 << 10),
    ],
)
def test_size(value, expected):
    assert config.parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "-1", "8x", "m", "1.5m"])
def test_size_rejects(value):
    with pytest.raises(ValueError):
        config.parse_size(value)


def test_switch_and_format():
    assert config.parse_switch("ON") is True
    assert config.parse_switch("off") is False
    with pytest.raises(ValueError):
        config.parse_switch("maybe")
    assert config.parse_choice("text", "json")("JSON") == "json"
    with pytest.raises(ValueError, match="'text', 'json'"):
        config.parse_choice("text", "json")("yaml")


def test_token_strips_bearer_and_never_echoes_bad_values():
    assert config.parse_token("") is None
    assert config.parse_token("Bearer abc123") == "abc123"
    with pytest.raises(ValueError) as e:
        config.parse_token("two words-secretvalue")
    assert "secretvalue" not in str(e.value)


def test_proxy_keys_list():
    keys = config.parse_proxy_keys(" k1, k2 ,,k1")
    assert keys.keys == ("k1", "k2") and keys.source == "list"
    assert config.parse_proxy_keys("") is None


def test_proxy_keys_file(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text("# team keys\n\nalpha-key\n  beta-key  \n# old: gamma\n")
    keys = config.parse_proxy_keys(f"@{f}")
    assert keys.keys == ("alpha-key", "beta-key")
    assert str(f) in keys.source


def test_proxy_keys_file_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read key file"):
        config.parse_proxy_keys(f"@{tmp_path / 'missing.txt'}")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(ValueError, match="holds no keys"):
        config.parse_proxy_keys(f"@{empty}")
    with pytest.raises(ValueError, match="cannot read key file"):
        config.parse_proxy_keys(f"@{tmp_path}")  # a directory


def test_proxy_keys_reject_spaces_without_echo():
    with pytest.raises(ValueError) as e:
        config.parse_proxy_keys("good,bad key-supersecret")
    assert "supersecret" not in str(e.value)


def test_option_defaults_precedence_and_secret_placeholders():
    environ = {"ACCOUNT_ID": "from-env", "CF_AIG_TOKEN": "tok-secret-value"}
    dotenv = {"ACCOUNT_ID": "from-dotenv", "GATEWAY_ID": "gw-dotenv", "HOST_PORT": "1", "PROXY_KEYS": "k1,k2"}
    d = config.option_defaults(environ, dotenv)
    assert d["cf_account_id"] == "from-env"
    assert d["cf_gateway_id"] == "gw-dotenv"
    assert d["cf_base_url"] == config.DEFAULT_BASE_URL
    assert d["cf_record_limit"] == "8m"
    assert d["cf_token"] == "(from CF_AIG_TOKEN)"  # mitmweb shows where it comes from, never the value
    assert d["cf_proxy_keys"] == "(from PROXY_KEYS)"
    assert "tok-secret-value" not in repr(d) and "k1" not in repr(d)
    assert config.option_defaults({"PROXY_KEYS": "@/etc/keys"}, {})["cf_proxy_keys"] == "@/etc/keys"


def test_parse_settings_resolves_secret_sources(tmp_path):
    values = config.option_defaults({"ACCOUNT_ID": GOOD_ACCOUNT, "CF_AIG_TOKEN": "tok-1"}, {})
    s = config.parse_settings(values, {"CF_AIG_TOKEN": "tok-1"})
    assert s.token == "tok-1" and s.gateway_id == "default" and s.routes == "auto"
    assert "tok-1" not in repr(s)
    f = tmp_path / "token"
    f.write_text("Bearer tok-from-file\n")
    s = config.parse_settings({**values, "cf_token": f"@{f}"}, {})
    assert s.token == "tok-from-file"
    with pytest.raises(ValueError, match=r"cf_token \(env CF_AIG_TOKEN\) cannot read token file"):
        config.parse_settings({**values, "cf_token": f"@{tmp_path / 'nope'}"}, {})


def test_parse_settings_names_the_first_bad_option():
    values = config.option_defaults({"ACCOUNT_ID": GOOD_ACCOUNT}, {})
    with pytest.raises(ValueError, match=r"^cf-gateway: cf_routes \(env CF_ROUTES\) must be one of"):
        config.parse_settings({**values, "cf_routes": "everything"}, {})


def test_every_option_is_declared_once_with_prefix_env_and_help():
    names = [o.name for o in config.OPTIONS]
    assert len(names) == len(set(names)) == len(dataclasses.fields(config.Settings))
    for o in config.OPTIONS:
        assert o.name == "cf_" + o.field
        assert o.spec.help and o.spec.env
        msg = config.option_error(o, "is wrong")
        assert o.name in msg and o.spec.env in msg
    assert {o.name for o in config.OPTIONS if o.spec.secret} == {"cf_token", "cf_proxy_keys"}


def test_client_gateway_headers_auto_follows_key_mode():
    values = config.option_defaults({"ACCOUNT_ID": GOOD_ACCOUNT}, {})
    assert not config.parse_settings(values, {}).strip_client_gateway_headers
    keyed = config.parse_settings({**values, "cf_proxy_keys": "k1"}, {})
    assert keyed.strip_client_gateway_headers
    assert not config.parse_settings(
        {**values, "cf_proxy_keys": "k1", "cf_client_gateway_headers": "allow"}, {}
    ).strip_client_gateway_headers


def test_literal_secrets_are_taken_out_of_the_options():
    values = config.option_defaults({"ACCOUNT_ID": GOOD_ACCOUNT}, {})
    values.update(cf_token="tok-literal-1", cf_proxy_keys="k1,k2", cf_routes="compat")
    store: dict = {"CF_AIG_TOKEN": "tok-env"}
    hidden = config.hide_literal_secrets(values, store)
    assert hidden == {"cf_token": "(from --set cf_token)", "cf_proxy_keys": "(from --set cf_proxy_keys)"}
    assert values["cf_token"] == "(from --set cf_token)" and values["cf_routes"] == "compat"
    s = config.parse_settings(values, store)
    assert s.token == "tok-literal-1" and s.proxy_keys.keys == ("k1", "k2")
    assert config.hide_literal_secrets(values, store) == {}  # placeholders and files stay as they are
    values["cf_token"] = "(from PATH)"  # only the option's own sources: never another variable's value
    with pytest.raises(ValueError, match="single printable ASCII word"):
        config.parse_settings(values, {**store, "PATH": "/usr/bin"})


def test_a_placeholder_whose_source_holds_nothing_is_an_error_never_no_secret():
    """'(from PROXY_KEYS)' with nothing behind it must not read as 'no access keys': that would
    turn access control off."""
    values = config.option_defaults({"ACCOUNT_ID": GOOD_ACCOUNT}, {})
    for option, source in (("cf_proxy_keys", "PROXY_KEYS"), ("cf_token", "--set cf_token")):
        with pytest.raises(ValueError, match=f"names {source}, which holds nothing here"):
            config.parse_settings({**values, option: f"(from {source})"}, {})
