from __future__ import annotations

import json
import logging

import pytest

from proxy.logs import JsonFormatter, RedactingFilter, configure_logging
from proxy.redact import redact
from proxy.settings import Settings
from tests.fake_keys import fake_key

KEY = fake_key("logs", "9876")


def _record(msg: str, *args: object, exc: BaseException | None = None, **extra: object):
    record = logging.LogRecord("proxy.test", logging.WARNING, __file__, 1, msg, args, None)
    if exc is not None:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    record.__dict__.update(extra)
    return record


def test_the_filter_masks_arguments_tracebacks_and_extra_fields() -> None:
    try:
        raise RuntimeError(f"upstream said: invalid key {KEY}")
    except RuntimeError as exc:
        record = _record("failed for %s", f"Bearer {KEY}", exc=exc, path=f"/v1/x/{KEY}")
    assert RedactingFilter().filter(record) is True
    for formatter in (logging.Formatter("%(message)s %(path)s"), JsonFormatter()):
        out = formatter.format(record)
        assert KEY not in out and KEY[3:] not in out, out
        assert "RuntimeError" in out and "Bearer ***" in out


def test_json_formatter_writes_one_object_with_the_extra_fields() -> None:
    record = _record("GET %s", "/v1/models", status=200, request_id="ab-1", duration_ms=1.5)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "GET /v1/models"
    assert (entry["status"], entry["request_id"], entry["duration_ms"]) == (200, "ab-1", 1.5)
    assert (entry["level"], entry["logger"]) == ("WARNING", "proxy.test")
    assert entry["time"].endswith("+00:00")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_logging_writes_to_stderr_masked_and_is_undone(capsys, fmt: str) -> None:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    undo = configure_logging(Settings(log_format=fmt, log_level="debug"))
    try:
        # A second call replaces the first: one line per record, not two.
        undo = configure_logging(Settings(log_format=fmt, log_level="debug"))
        logging.getLogger("proxy.anything").debug("client sent %s", KEY)
    finally:
        undo()
    assert (root.level, root.handlers) == (level, handlers)
    lines = capsys.readouterr().err.splitlines()
    [line] = [line for line in lines if "client sent" in line]
    assert KEY not in line and "sk-***" in line
    if fmt == "json":
        assert json.loads(line)["level"] == "DEBUG"
    else:
        assert "DEBUG proxy.anything: client sent sk-***" in line


def test_configure_logging_honours_the_level(capsys) -> None:
    undo = configure_logging(Settings(log_level="WARNING"))
    try:
        logging.getLogger("proxy.x").info("quiet")
        logging.getLogger("proxy.x").warning("loud")
    finally:
        undo()
    err = capsys.readouterr().err
    assert "loud" in err and "quiet" not in err


class _Request:
    method = "POST"
    remote = "127.0.0.1"

    def __init__(self, raw_path: str) -> None:
        self.rel_url = type("U", (), {"raw_path": raw_path})()

    def get(self, _key: object) -> str:
        return "abc-1"


class _Response:
    status = 200

    def __init__(self, upstream_id: str | None) -> None:
        self.headers = {"x-request-id": upstream_id} if upstream_id else {}


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize(
    ("path", "upstream_id"),
    [(f"/v1/files/{KEY}/content", None), ("/v1/models", f"req-{KEY}"), ("/v1/models", None)],
)
def test_access_lines_mask_their_own_fields(
    capsys, fmt: str, path: str, upstream_id: str | None
) -> None:
    # The access logger masks its fields itself and tells the filter so: the secret must still
    # be gone from the line and from every JSON field, and the marker must not be printed.
    from proxy.logs import ACCESS_LOGGER, AccessLogger

    undo = configure_logging(Settings(log_format=fmt, log_level="info"))
    try:
        AccessLogger(logging.getLogger(ACCESS_LOGGER), "").log(
            _Request(path), _Response(upstream_id), 0.0012
        )
    finally:
        undo()
    [line] = [x for x in capsys.readouterr().err.splitlines() if "proxy.access" in x]
    assert KEY not in line and "_redacted" not in line
    if path != "/v1/models" or upstream_id:
        assert "sk-***" in line
    if fmt == "json":
        entry = json.loads(line)
        assert entry["path"] == redact(path) and entry["method"] == "POST"
        assert entry.get("upstream_request_id") == (redact(upstream_id) if upstream_id else None)


def test_configure_logging_restores_the_record_lookups() -> None:
    before = (logging._srcfile, logging.logThreads, logging.logProcesses)
    undo = configure_logging(Settings())
    try:
        assert logging._srcfile is None and not logging.logThreads
    finally:
        undo()
    assert (logging._srcfile, logging.logThreads, logging.logProcesses) == before
