"""Settings read from the environment: the development-mode host and the start-up warnings."""

from __future__ import annotations

import pytest

from app.settings import Settings
from tests.support.api import SECRET

GOOD = "0123456789abcdef" * 4  # 64 characters, what `openssl rand -hex 32` prints


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    """Start every test from an environment that sets no setting of the service."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"EMBEDDING_HMAC_SECRET": GOOD}, "0.0.0.0"),
        ({"ALLOW_INSECURE_AUTH": "1"}, "127.0.0.1"),
        ({"EMBEDDING_HMAC_SECRET": GOOD, "ALLOW_PRIVATE_URLS": "1"}, "127.0.0.1"),
        ({"ALLOW_INSECURE_AUTH": "1", "ALLOW_PRIVATE_URLS": "1"}, "127.0.0.1"),
        ({"ALLOW_INSECURE_AUTH": "1", "HOST": ""}, "127.0.0.1"),
        ({"ALLOW_INSECURE_AUTH": "1", "HOST": "0.0.0.0"}, "0.0.0.0"),
        ({"EMBEDDING_HMAC_SECRET": GOOD, "HOST": "10.1.2.3"}, "10.1.2.3"),
        ({"EMBEDDING_HMAC_SECRET": GOOD, "HOST": "::1"}, "::1"),
    ],
)
def test_settings_resolved_host_from_environment(monkeypatch, env, expected):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().resolved_host == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            {"allow_insecure_auth": True, "allow_private_urls": True},
            (
                "HOST=0.0.0.0 with ALLOW_INSECURE_AUTH=1 and ALLOW_PRIVATE_URLS=1: anyone who can reach this "
                "address gets an unauthenticated fetcher into the local network"
            ),
        ),
        (
            {"allow_insecure_auth": True},
            (
                "HOST=0.0.0.0 with ALLOW_INSECURE_AUTH=1: anyone who can reach this address can use the service "
                "without signing a request"
            ),
        ),
        (
            {"allow_private_urls": True},
            (
                "HOST=0.0.0.0 with ALLOW_PRIVATE_URLS=1: anyone who can reach this address with a valid signature "
                "can make the server fetch private and loopback addresses"
            ),
        ),
    ],
)
def test_settings_warns_when_dev_flags_listen_on_open_address(flags, expected):
    settings = Settings(embedding_hmac_secret=GOOD, host="0.0.0.0", **flags)
    (warning,) = settings.startup_warnings()
    assert expected in warning
    assert "Unset HOST to listen on 127.0.0.1 only" in warning


@pytest.mark.parametrize("host", [None, "127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_settings_no_warning_when_dev_flags_listen_on_loopback(host):
    settings = Settings(allow_insecure_auth=True, allow_private_urls=True, host=host)
    assert settings.startup_warnings() == []


@pytest.mark.parametrize("host", [None, "0.0.0.0", "10.1.2.3"])
def test_settings_no_warning_without_dev_flags(host):
    assert Settings(embedding_hmac_secret=GOOD, host=host).startup_warnings() == []


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        (GOOD, []),
        ("a" * 32, []),
        ("a" * 31, ["key 1 of 1 is 31 characters"]),
        ("abc", ["key 1 of 1 is 3 characters"]),
        ("x", ["key 1 of 1 is 1 character:"]),
        (f"{GOOD},short-old-key", ["key 2 of 2 is 13 characters"]),
        (f"tiny, {GOOD} ,twelve-chars", ["key 1 of 3 is 4 characters", "key 3 of 3 is 12 characters"]),
    ],
)
def test_settings_warns_about_each_short_secret_by_position(secret, expected):
    warnings = Settings(embedding_hmac_secret=secret).startup_warnings()
    assert len(warnings) == len(expected)
    for warning, position in zip(warnings, expected, strict=True):
        assert f"EMBEDDING_HMAC_SECRET {position}" in warning
        assert "openssl rand -hex 32" in warning


@pytest.mark.parametrize("secret", ["abc", "twelve-chars", SECRET, f"{GOOD},short-old-key"])
def test_settings_short_secret_warning_never_holds_the_secret(secret):
    short_keys = [k for k in secret.split(",") if len(k) < 32]
    text = "\n".join(Settings(embedding_hmac_secret=secret).startup_warnings())
    assert short_keys and all(key not in text for key in short_keys)
    assert GOOD not in text


def test_settings_accepts_the_test_suites_short_secret():
    # Warn, never refuse: existing deployments with short secrets must keep starting.
    assert Settings(embedding_hmac_secret=SECRET).hmac_keys == (SECRET,)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (GOOD, (GOOD,)),
        (f" {GOOD} , ,old-{GOOD}", (GOOD, f"old-{GOOD}")),
        (" , ", ()),
    ],
)
def test_settings_api_keys_split_at_commas(keys, expected):
    assert Settings(embedding_hmac_secret=GOOD, api_keys=keys).api_key_list == expected


def test_settings_api_keys_alone_are_enough_to_start(monkeypatch):
    monkeypatch.setenv("API_KEYS", GOOD)
    settings = Settings()
    assert (settings.hmac_keys, settings.api_key_list) == ((), (GOOD,))


@pytest.mark.parametrize("keys", [None, "", " , "])
def test_settings_refuse_to_start_without_secret_or_key(keys):
    with pytest.raises(ValueError, match="EMBEDDING_HMAC_SECRET is not set") as err:
        Settings(api_keys=keys)
    assert "API_KEYS" in str(err.value) and "ALLOW_INSECURE_AUTH=1" in str(err.value)


def test_settings_warn_about_a_short_api_key_never_naming_it():
    (warning,) = Settings(api_keys=f"{GOOD},short-api-key").startup_warnings()
    assert warning.startswith("API_KEYS key 2 of 2 is 13 characters")
    assert "short-api-key" not in warning and GOOD not in warning


def test_settings_api_keys_never_appear_in_the_settings_repr():
    settings = Settings(api_keys=f"{GOOD},another-key-0123456789abcdef0123")
    assert GOOD not in repr(settings) and "another-key" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 128 << 20),
        ({"MAX_REQUEST_BYTES": str(1 << 20)}, 4 << 20),
        ({"MAX_BUFFERED_REQUEST_BYTES": str(64 << 20)}, 64 << 20),
    ],
    ids=["default", "follows-max-request-bytes", "set"],
)
def test_settings_request_body_budget_defaults_to_four_largest_bodies(monkeypatch, env, expected):
    for name, value in (env | {"EMBEDDING_HMAC_SECRET": GOOD}).items():
        monkeypatch.setenv(name, value)
    assert Settings().resolved_buffered_request_bytes() == expected


def test_settings_refuse_a_body_budget_below_the_largest_body():
    with pytest.raises(ValueError, match="MAX_BUFFERED_REQUEST_BYTES=1048576 is below MAX_REQUEST_BYTES=33554432"):
        Settings(embedding_hmac_secret=GOOD, max_buffered_request_bytes=1 << 20)


ONE_MODEL = '[{"model": "clip-tiny", "pretrained": "none", "name": "a"}]'
TWO_MODELS = '[{"model": "clip-tiny", "pretrained": "none", "name": "a"}, {"model": "clip-tiny", "pretrained": "none", "name": "b"}]'


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WORKERS": "4"}, False),
        ({"WORKERS": "2", "ENGINE_PROCESS": "auto"}, True),
        ({"WORKERS": "1", "ENGINE_PROCESS": "auto"}, False),
        ({"WORKERS": "1", "ENGINE_PROCESS": "on"}, True),
        ({"WORKERS": "4", "ENGINE_PROCESS": "off"}, False),
        ({"WORKERS": "2", "ENGINE_PROCESS": "auto", "MODELS": ONE_MODEL}, True),
        ({"WORKERS": "2", "ENGINE_PROCESS": "auto", "MODELS": TWO_MODELS}, False),
    ],
    ids=["off-by-default", "auto-with-workers", "auto-alone", "on-alone", "off", "auto-one-model", "auto-two-models"],
)
def test_settings_engine_process_is_on_only_when_asked_for(monkeypatch, env, expected):
    for name, value in (env | {"EMBEDDING_HMAC_SECRET": GOOD, "STATE_URL": "redis://127.0.0.1:1/0"}).items():
        monkeypatch.setenv(name, value)
    assert Settings().engine_process_on() is expected


def test_settings_refuse_engine_process_with_several_models(monkeypatch):
    env = {"EMBEDDING_HMAC_SECRET": GOOD, "ENGINE_PROCESS": "on", "MODELS": TWO_MODELS}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(
        ValueError, match=r"ENGINE_PROCESS=on runs one model .* MODELS lists 2 \(a, b\): set ENGINE_PROCESS=off"
    ):
        Settings()
