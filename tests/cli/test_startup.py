from __future__ import annotations

import logging
import socket

import pytest

from proxy.cli.startup import require_bindable, unknown_environment, warn_unknown_environment
from proxy.errors import ConfigError


def test_unknown_usage_proxy_variables_are_named_with_the_closest_setting():
    environ = {
        "USAGE_PROXY_PORT": "8080",
        "USAGE_PROXY_DATABSE_URL": "postgresql://u:s3cret@db/x",
        "USAGE_PROXY_CONFIG": "proxy.toml",
        "USAGE_PROXY_TEST_POSTGRES_URL": "postgresql://postgres@127.0.0.1/test",
        "USAGE_PROXY_COLOUR": "red",
        "HOME": "/root",
    }
    assert unknown_environment(environ) == [
        ("USAGE_PROXY_COLOUR", None),
        ("USAGE_PROXY_DATABSE_URL", "USAGE_PROXY_DATABASE_URL"),
    ]


def test_the_warning_names_the_variable_never_its_value(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="proxy.cli"):
        warn_unknown_environment({"USAGE_PROXY_ADMIN_TOKN": "s3cret", "USAGE_PROXY_HOST": "x"})
    assert [r.getMessage() for r in caplog.records] == [
        "environment variable USAGE_PROXY_ADMIN_TOKN is not a setting and is ignored; "
        "did you mean USAGE_PROXY_ADMIN_TOKEN?"
    ]
    assert "s3cret" not in caplog.text


def test_a_port_in_use_is_a_config_error_and_a_free_one_passes():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(
            ConfigError, match=rf"port: cannot listen on 127.0.0.1:{port}: .*--port"
        ):
            require_bindable("127.0.0.1", port)
    require_bindable("127.0.0.1", port)  # free again, and nothing was left bound
    require_bindable("127.0.0.1", port)


def test_a_host_that_does_not_resolve_is_a_config_error():
    with pytest.raises(ConfigError, match=r"host: cannot resolve 'no-such-host\.invalid'"):
        require_bindable("no-such-host.invalid", 8080)
