"""Options: parsing, secrets and their sources, and what the addon refuses or warns about at load."""

from __future__ import annotations

import logging

import pytest
from mitmproxy import exceptions

from cfgw import config
from tests import flows
from tests.flows import settings

BAD_VALUES = [
    ("cf_account_id", "ABC"),
    ("cf_gateway_id", "Bad--gateway"),
    ("cf_api", "soap"),
    ("cf_token", "two words"),
    ("cf_proxy_keys", "short"),
    ("cf_provider_keys", "sometimes"),
    ("cf_open_proxy", "yes"),
    ("cf_base_url", "https://example.com/path"),
    ("cf_log_format", "xml"),
    ("cf_record_limit", "lots"),
    ("cf_max_connections", "0"),
    ("cf_replay", "/no/such/recording.flows"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_error_names_the_option_and_its_variable(name, value):
    env = config.BY_NAME[name].env
    with pytest.raises(ValueError, match=rf"^cf-gateway: {name} \(env {env}\) "):
        settings(**{name: value})


def test_defaults_come_from_the_environment():
    values = config.defaults({"ACCOUNT_ID": flows.ACCOUNT, "GATEWAY_ID": "other", "CF_LOG_FORMAT": "json"})
    s = config.parse_settings(values, {})
    assert (s.account_id, s.gateway_id, s.log_format) == (flows.ACCOUNT, "other", "json")


def test_defaults_show_a_secret_only_as_its_source():
    values = config.defaults({"CF_AIG_TOKEN": "tok-secret", "PROXY_KEYS": "@/run/keys"})
    assert values["cf_token"] == "(from CF_AIG_TOKEN)"
    assert values["cf_proxy_keys"] == "@/run/keys"
    assert "tok-secret" not in values.values()


def test_secret_from_a_variable():
    s = settings({"CF_AIG_TOKEN": "tok-from-env"}, cf_token="(from CF_AIG_TOKEN)")
    assert s.token == "tok-from-env"


def test_secret_from_an_unset_variable_is_refused():
    with pytest.raises(ValueError, match=r"cf_token \(env CF_AIG_TOKEN\) says \(from CF_AIG_TOKEN\), but"):
        settings(cf_token="(from CF_AIG_TOKEN)")


def test_secret_from_a_file(tmp_path):
    (tmp_path / "token").write_text("Bearer tok-in-file\n")
    assert settings(cf_token=f"@{tmp_path / 'token'}").token == "tok-in-file"


def test_secret_from_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"cf_token \(env CF_AIG_TOKEN\) cannot read"):
        settings(cf_token=f"@{tmp_path / 'missing'}")


def test_secret_given_literally():
    assert settings(cf_token="tok-literal").token == "tok-literal"


def test_access_keys_from_a_list():
    keys = settings(cf_proxy_keys="key-one-1, key-two-22").proxy_keys
    assert keys == config.AccessKeys(("key-one-1", "key-two-22"), "list")


def test_access_keys_from_a_file_one_per_line(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# the team's keys\nkey-one-1\n\nkey-two-22\n")
    keys = settings(cf_proxy_keys=f"@{path}").proxy_keys
    assert keys == config.AccessKeys(("key-one-1", "key-two-22"), f"file {path}")


def test_rest_needs_the_api_token():
    with pytest.raises(ValueError, match=r"cf_api_token \(env CLOUDFLARE_API_TOKEN\) must be set"):
        settings(cf_api="rest")


def test_rest_uses_the_api_token_not_the_gateway_token():
    s = settings({"CLOUDFLARE_API_TOKEN": "api-tok"}, cf_api="rest", cf_token="aig-tok",
                 cf_api_token="(from CLOUDFLARE_API_TOKEN)")  # fmt: skip
    assert (s.token, s.origin, s.prefix) == (
        "api-tok",
        config.REST_ORIGIN,
        f"/client/v4/accounts/{flows.ACCOUNT}",
    )


@pytest.mark.parametrize(("value", "size"), [("7", 7), ("512k", 512 << 10), ("8M", 8 << 20), ("1g", 1 << 30)])
def test_sizes(value, size):
    assert config.parse_size(value) == size


@pytest.mark.parametrize(
    "value", ["ftp://host", "https://host/v1", "https://host?x=1", "https://u:p@host", "https://host:99999"]
)
def test_base_url_must_be_an_origin(value):
    with pytest.raises(ValueError):
        config.parse_origin(value, "gateway")


def test_base_url_loses_a_trailing_slash():
    assert config.parse_origin("http://127.0.0.1:8787/", "gateway") == "http://127.0.0.1:8787"


@pytest.mark.parametrize(
    "host", ["localhost", "a.localhost", "127.0.0.2", "::1", "[::1]", "::ffff:127.0.0.1"]
)
def test_loopback(host):
    assert config.is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "10.0.0.1", "example.com", "localhost.example.com"])
def test_not_loopback(host):
    assert not config.is_loopback(host)


@pytest.mark.parametrize(
    ("values", "drop"),
    [
        ({}, False),
        ({"cf_token": "tok"}, True),
        ({"cf_token": "tok", "cf_provider_keys": "forward"}, False),
        ({"cf_provider_keys": "drop"}, True),
        ({"cf_proxy_keys": "key-one-1", "cf_provider_keys": "forward"}, True),
    ],
)
def test_when_client_keys_are_dropped(values, drop):
    assert settings(**values).drop_client_keys is drop


def test_describe_shows_no_secret():
    s = settings(cf_token="tok-secret-1", cf_proxy_keys="key-secret-2")
    line = s.describe()
    assert "tok-secret-1" not in line and "key-secret-2" not in line
    assert "access keys: 1 (list)" in line


def test_unknown_option_names_the_closest():
    assert config.unknown_options(["cf_tokn", "web_port", "cf_zzzzzz"]) == [
        "cf-gateway: unknown option cf_tokn: did you mean cf_token?",
        "cf-gateway: unknown option cf_zzzzzz",
    ]


# -- at load, as mitmproxy loads the script ----------------------------------------------------


def test_unknown_option_given_with_set_is_refused(caplog):
    with flows.loaded("cf_tokn=x", configure=False) as (tctx, gw):
        assert "did you mean cf_token?" in caplog.text
        assert "cf_token" not in tctx.options  # no options: mitmproxy exits; nothing is forwarded
        assert gw.settings is None


def test_option_given_twice_is_refused(caplog):
    with flows.loaded("cf_token=a", "cf_token=b", configure=False) as (_, gw):
        assert "cf_token (env CF_AIG_TOKEN) is given more than once" in caplog.text
        assert gw.settings is None


def test_unread_cf_variable_warns(caplog):
    with flows.loaded(env={"CF_TOKNE": "x", "CF_LOG_FORMAT": "json"}):
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("CF_TOKNE is set but no option reads it" in w for w in warned)
        assert not any("CF_LOG_FORMAT" in w for w in warned)


def test_dotenv_is_read_and_its_secret_shown_as_source():
    with flows.loaded(dotenv="CF_AIG_TOKEN=tok-from-dotenv\n") as (tctx, gw):
        assert gw.settings.token == "tok-from-dotenv"
        assert tctx.options.cf_token == "(from CF_AIG_TOKEN)"


def test_literal_secret_moves_out_of_the_option(caplog):
    with flows.loaded(cf_token="tok-typed-in") as (tctx, gw):
        assert tctx.options.cf_token == "(from CF_AIG_TOKEN)"
        assert gw.settings.token == "tok-typed-in"
        assert "cf_token was given literally" in caplog.text
        assert "tok-typed-in" not in caplog.text


def test_each_literal_secret_is_warned_about_once(caplog):
    with flows.loaded(cf_token="tok-typed-in", cf_proxy_keys="key-typed-in") as (tctx, gw):
        shown = (tctx.options.cf_token, tctx.options.cf_proxy_keys)
        assert shown == ("(from CF_AIG_TOKEN)", "(from PROXY_KEYS)")
        assert gw.settings.proxy_keys.keys == ("key-typed-in",)
        assert caplog.text.count("was given literally") == 2


def test_bad_change_at_runtime_is_refused_and_the_settings_stay():
    with flows.loaded() as (tctx, gw):
        before = gw.settings
        with pytest.raises(exceptions.OptionsError, match=r"cf_api_token \(env CLOUDFLARE_API_TOKEN\)"):
            tctx.configure(gw, cf_api="rest")
        assert gw.settings == before and tctx.options.cf_api == "gateway"


def test_bad_setting_at_startup_is_logged_and_nothing_is_configured(caplog):
    with flows.loaded("cf_log_format=xml", configure=False) as (_, gw):
        assert "cf_log_format (env CF_LOG_FORMAT) must be one of text, json" in caplog.text
        assert gw.settings is None


def test_keys_from_a_file_named_by_the_environment(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nteam-a-0123456789\nteam-b-0123456789\n")
    s = flows.settings({"PROXY_KEYS": f"@{keys}"}, cf_proxy_keys="(from PROXY_KEYS)")
    assert s.proxy_keys.keys == ("team-a-0123456789", "team-b-0123456789")


def test_record_and_replay_together_are_refused(tmp_path):
    recording = tmp_path / "r.mitm"
    recording.write_bytes(b"")
    with pytest.raises(ValueError, match=r"cf_replay .*cf_record cannot both be set"):
        flows.settings(cf_replay=str(recording), cf_record=str(tmp_path / "new.mitm"))
