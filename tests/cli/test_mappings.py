from __future__ import annotations

import asyncio
import io
import json
import sys
from pathlib import Path

from sqlalchemy import select

from proxy.db.engine import make_engine, make_sessionmaker, sqlite_path
from proxy.db.models import Base
from proxy.db.secrets import get_or_create_secret
from proxy.keys import fingerprint
from tests.cli.runner import run
from tests.fake_keys import fake_key

BIN = Path(sys.executable).parent / "usage-proxy"
KEY = fake_key("cli", "9876")


async def _everything_stored(url: str) -> str:
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            dump = []
            for table in Base.metadata.sorted_tables:
                dump += [repr(tuple(row)) for row in await conn.execute(select(table))]
            return "\n".join(dump)
    finally:
        await engine.dispose()


def test_keys_add_reads_stdin_and_stores_no_trace_of_the_key(
    capsys, monkeypatch, db_url: str, tmp_path: Path
):
    monkeypatch.delenv("USAGE_PROXY_KEY_SECRET", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(KEY + "\n"))
    code, out, err = run(
        capsys, "keys", "add", "--team", "red", "--label", "ci", "--database-url", db_url
    )
    assert code == 0, err
    assert KEY not in out + err and "sk-...9876" in out

    stored = asyncio.run(_everything_stored(db_url))
    assert KEY not in stored and KEY[3:-4] not in stored
    if (path := sqlite_path(db_url)) is not None:
        for file in path.parent.glob(path.name + "*"):
            assert KEY.encode() not in file.read_bytes(), file

    code, out, err = run(capsys, "keys", "list", "--database-url", db_url, "--format", "json")
    assert code == 0, err
    [entry] = json.loads(out)

    async def secret() -> bytes:
        engine = make_engine(db_url)
        try:
            return await get_or_create_secret(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    expected = fingerprint(KEY, asyncio.run(secret()))
    assert (entry["key_hint"], entry["team"], entry["label"]) == ("sk-...9876", "red", "ci")
    assert entry["key_fingerprint"] == expected

    monkeypatch.setattr(sys, "stdin", io.StringIO(KEY + "\n"))
    code, _, err = run(capsys, "keys", "remove", "--database-url", db_url)
    assert code == 0, err
    code, out, _ = run(capsys, "keys", "list", "--database-url", db_url, "--format", "json")
    assert json.loads(out) == []
    code, _, err = run(
        capsys, "keys", "remove", "--fingerprint", expected, "--database-url", db_url
    )
    assert code == 1 and "no mapping" in err


def test_keys_add_uses_the_configured_secret(capsys, monkeypatch, db_url: str):
    monkeypatch.setenv("USAGE_PROXY_KEY_SECRET", "configured-secret")
    monkeypatch.setattr(sys, "stdin", io.StringIO(KEY + "\n"))
    assert run(capsys, "keys", "add", "--team", "red", "--database-url", db_url)[0] == 0
    _, out, _ = run(capsys, "keys", "list", "--database-url", db_url, "--format", "csv")
    assert fingerprint(KEY, b"configured-secret") in out


def test_keys_add_without_a_key_on_stdin_exits_2(capsys, monkeypatch, db_url: str):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    code, _, err = run(capsys, "keys", "add", "--team", "red", "--database-url", db_url)
    assert code == 2 and "no API key" in err


def test_projects_add_list_remove(capsys, db_url: str):
    assert (
        run(capsys, "projects", "add", "proj_1", "--team", "blue", "--database-url", db_url)[0] == 0
    )
    code, out, _ = run(capsys, "projects", "list", "--database-url", db_url, "--format", "csv")
    assert code == 0 and out.splitlines()[1].startswith("proj_1,blue,")
    assert run(capsys, "projects", "remove", "proj_1", "--database-url", db_url)[0] == 0
    assert run(capsys, "projects", "remove", "proj_1", "--database-url", db_url)[0] == 1
