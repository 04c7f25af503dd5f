"""settings.py: precedence (flags > environment > file > defaults), validation naming the key,
and secrets that never show in a message or a repr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.errors import ConfigError
from proxy.settings import OPTIONS, Settings, load_settings, mask_url

SECRET = "s3cr3t-value-that-must-not-leak"


@pytest.fixture
def config(tmp_path: Path):
    def write(text: str) -> str:
        path = tmp_path / "usage-proxy.toml"
        path.write_text(text)
        return str(path)

    return write


def test_defaults() -> None:
    s = load_settings({}, {})
    assert s == Settings()
    assert s.upstream_timeout == 600.0
    assert s.max_observed_body == 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("file", "env", "flag", "expected"),
    [
        (None, None, None, 8080),
        (1001, None, None, 1001),
        (1001, "1002", None, 1002),
        (1001, "1002", 1003, 1003),
        (None, "1002", 1003, 1003),
        (1001, None, 1003, 1003),
    ],
)
def test_precedence(config, file: int | None, env: str | None, flag: int | None, expected: int):
    environ = {"USAGE_PROXY_CONFIG": config(f"port = {file}\n" if file else "")}
    if env is not None:
        environ["USAGE_PROXY_PORT"] = env
    assert load_settings({"port": flag}, environ).port == expected


def test_nested_table_flattens_into_its_prefix(config) -> None:
    path = config(
        'upstream = "http://upstream.test:9000"\n'
        "[estimate]\nbase_prompt = 200\nper_user_message = 5\n"
        "[collector]\nworkers = 4\n"
    )
    s = load_settings({"config": path}, {"USAGE_PROXY_ESTIMATE_PER_USER_MESSAGE": "6"})
    assert s.upstream == "http://upstream.test:9000"
    assert s.estimate_base_prompt == 200
    assert s.estimate_per_user_message == 6  # the environment beats the file
    assert s.collector_workers == 4
    assert s.estimate_constants()["base_prompt"] == 200
    assert s.config == path


def test_config_flag_beats_config_env(config, tmp_path: Path) -> None:
    chosen = config("port = 1111\n")
    ignored = tmp_path / "other.toml"
    ignored.write_text("port = 2222\n")
    s = load_settings({"config": chosen}, {"USAGE_PROXY_CONFIG": str(ignored)})
    assert s.port == 1111


def test_unset_flags_do_not_override() -> None:
    s = load_settings({"port": None, "upstream": None}, {"USAGE_PROXY_PORT": "9999"})
    assert s.port == 9999
    assert s.upstream == "https://api.openai.com"


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False)]
)
def test_boolean_from_environment(raw: str, value: bool) -> None:
    assert load_settings({}, {"USAGE_PROXY_MIGRATE": raw}).migrate is value


def test_numbers_from_environment_and_file(config) -> None:
    path = config("upstream_timeout = 5\nmax_observed_body = 1024\n")
    s = load_settings(
        {}, {"USAGE_PROXY_CONFIG": path, "USAGE_PROXY_UPSTREAM_CONNECT_TIMEOUT": "2.5"}
    )
    assert s.upstream_timeout == 5.0 and isinstance(s.upstream_timeout, float)
    assert s.upstream_connect_timeout == 2.5
    assert s.max_observed_body == 1024


@pytest.mark.parametrize(
    ("flags", "environ", "file", "key", "shown"),
    [
        ({}, {"USAGE_PROXY_PORT": "eighty"}, None, "port", "eighty"),
        ({"port": 0}, {}, None, "port", "0"),
        ({}, {}, 'port = "x"\n', "port", "x"),
        ({}, {}, "port = 80.5\n", "port", "80.5"),
        ({}, {}, "port = true\n", "port", "True"),
        ({"upstream": "ftp://example.com"}, {}, None, "upstream", "ftp://example.com"),
        ({"upstream": "http://"}, {}, None, "upstream", "http://"),
        ({"upstream": "http://h:99999"}, {}, None, "upstream", "http://h:99999"),
        ({}, {"USAGE_PROXY_UPSTREAM_TIMEOUT": "0"}, None, "upstream_timeout", "0"),
        ({}, {"USAGE_PROXY_UPSTREAM_TIMEOUT": "soon"}, None, "upstream_timeout", "soon"),
        ({"max_observed_body": -1}, {}, None, "max_observed_body", "-1"),
        ({}, {"USAGE_PROXY_HOLD_TIMEOUT": "-1"}, None, "hold_timeout", "-1"),
        ({}, {"USAGE_PROXY_BUDGET_STRICT_TIMEOUT": "-0.5"}, None, "budget_strict_timeout", "-0.5"),
        ({}, {"USAGE_PROXY_MIGRATE": "maybe"}, None, "migrate", "maybe"),
        ({"log_format": "xml"}, {}, None, "log_format", "xml"),
        ({"log_level": "LOUD"}, {}, None, "log_level", "LOUD"),
        ({"collector_workers": 0}, {}, None, "collector_workers", "0"),
        ({"client_header_timeout": 0}, {}, None, "client_header_timeout", "0"),
        ({"client_body_timeout": -1}, {}, None, "client_body_timeout", "-1"),
        ({"client_keepalive_timeout": 0}, {}, None, "client_keepalive_timeout", "0"),
        ({"client_max_header_bytes": 0}, {}, None, "client_max_header_bytes", "0"),
        ({"client_max_connections": 0}, {}, None, "client_max_connections", "0"),
        ({}, {}, "[estimate]\nbase_prompt = -2\n", "estimate_base_prompt", "-2"),
        ({}, {}, "[estimate]\nbase_prompt = 'many'\n", "estimate_base_prompt", "many"),
        ({}, {}, "[estimate]\nno_such_constant = 1\n", "estimate_no_such_constant", ""),
        ({}, {}, "no_such_key = 1\n", "no_such_key", ""),
        ({"no_such_flag": 1}, {}, None, "no_such_flag", ""),
        ({"database_url": "just-a-path"}, {}, None, "database_url", "just-a-path"),
    ],
)
def test_bad_values_name_the_key(
    config, flags: dict[str, Any], environ: dict[str, str], file: str | None, key: str, shown: str
) -> None:
    if file is not None:
        environ = {**environ, "USAGE_PROXY_CONFIG": config(file)}
    with pytest.raises(ConfigError) as info:
        load_settings(flags, environ)
    message = str(info.value)
    assert key in message
    assert shown in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [(None, "does not exist"), ("port = = 1\n", "not valid TOML")],
)
def test_bad_config_file(tmp_path: Path, text: str | None, fragment: str) -> None:
    path = tmp_path / "broken.toml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_settings({"config": str(path)}, {})
    assert "config" in str(info.value)


@pytest.mark.parametrize("name", ["key_secret", "admin_token"])
def test_secret_with_a_bad_value_is_not_echoed(config, name: str) -> None:
    path = config(f"{name} = 4242424242\n")
    with pytest.raises(ConfigError) as info:
        load_settings({"config": path}, {})
    assert name in str(info.value)
    assert "4242424242" not in str(info.value)
    assert "***" in str(info.value)


def test_secrets_are_not_in_repr() -> None:
    s = load_settings({}, {"USAGE_PROXY_ADMIN_TOKEN": SECRET, "USAGE_PROXY_KEY_SECRET": SECRET})
    assert s.admin_token == SECRET and s.key_secret == SECRET
    assert SECRET not in repr(s)
    assert SECRET not in str(s)


def test_database_password_is_not_in_repr() -> None:
    s = Settings(database_url=f"postgresql+asyncpg://usage:{SECRET}@db:5432/usage")
    assert SECRET not in repr(s)


def test_database_password_not_in_other_validation_messages() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"database_url": f"postgresql://u:{SECRET}@db/x", "port": 0}, {})
    assert "port" in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+asyncpg://u:pw@db:5432/x", "postgresql+asyncpg://u:***@db:5432/x"),
        ("sqlite+aiosqlite:///usage.db", "sqlite+aiosqlite:///usage.db"),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_every_option_is_declared_once_with_help() -> None:
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    assert "config" not in names
    for opt in OPTIONS:
        assert opt.help, opt.name
        assert opt.env == "USAGE_PROXY_" + opt.name.upper()
        assert isinstance(opt.default, opt.type), opt.name


def test_settings_are_frozen_and_replace_validates() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]
    assert s.replace(port=1234).port == 1234
    with pytest.raises(ConfigError, match="port"):
        s.replace(port=70000)


@pytest.mark.parametrize(
    "upstream",
    [
        "http://user:hunter2-upstream-pw@upstream.test",
        "https://user:hunter2-upstream-pw@upstream.test:8443/base",
        "http://hunter2-upstream-pw@upstream.test",  # a token as the user name
        "http://user:hunter2-upstream-pw@upstream.test:99999",  # and a bad port
        "ftp://user:hunter2-upstream-pw@upstream.test",  # and a bad scheme
    ],
)
def test_an_upstream_with_credentials_is_refused_and_never_echoed(upstream: str) -> None:
    """Issue 20: user info in the upstream URL is refused with one clear line (the client's own
    key is what the upstream authenticates; Basic auth beside it cannot work), and no part of
    it is shown."""
    with pytest.raises(ConfigError) as info:
        load_settings({"upstream": upstream}, {})
    message = str(info.value)
    assert message.startswith("upstream: ") and "hunter2" not in message
    assert "***@upstream.test" in message


def test_no_settings_can_hold_an_upstream_with_credentials() -> None:
    """So neither the start line nor /_proxy/health, which show `upstream`, can show one."""
    with pytest.raises(ConfigError):
        Settings(upstream="http://user:hunter2-upstream-pw@upstream.test")
