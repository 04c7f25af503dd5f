"""options.py: validation naming the key, and secrets that never show in a message or a
repr."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.errors import ConfigError
from proxy.settings import OPTIONS, Settings, load_settings, mask_url
from tests.settings.test_load import SECRET


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
        ({}, {"USAGE_PROXY_MIGRATE": "maybe"}, None, "migrate", "maybe"),
        ({"log_format": "xml"}, {}, None, "log_format", "xml"),
        ({"log_level": "LOUD"}, {}, None, "log_level", "LOUD"),
        ({"collector_workers": 0}, {}, None, "collector_workers", "0"),
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
