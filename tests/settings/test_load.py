"""load.py: precedence (flags > environment > file > defaults), and a config file read once."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.errors import ConfigError
from proxy.settings import Settings, load_settings

SECRET = "s3cr3t-value-that-must-not-leak"


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
