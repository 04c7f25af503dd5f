"""Deployment: docker-compose.yml, the Dockerfile and the env example agree with the code, and
`serve` waits for a database server that is still starting. No Docker engine runs in CI, so
the files are read, not run; what can run (the image's build stage, the wait) does."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from proxy.cli.serve import upgrade_when_reachable
from proxy.db.migrate import current, head
from proxy.errors import ConfigError
from proxy.settings import OPTIONS, load_settings
from tests.conftest import PG_ENV, _pg_execute, with_schema

ROOT = Path(__file__).resolve().parent.parent
OPTION_ENVS = {opt.env for opt in OPTIONS} | {"USAGE_PROXY_CONFIG"}
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), line
            values[name] = value
    return values


def _interpolate(text: str, env: dict[str, str]) -> str:
    """docker compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, and $$ for a literal $."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        value = env.get(name)
        if (op in (":-", ":?") and not value) or (op in ("-", "?") and value is None):
            if op.endswith("?"):
                raise AssertionError(f"{name} is required: {arg}")
            return arg
        return value or ""

    return _VAR.sub(one, text).replace("$$", "$")


def _referenced(compose_text: str) -> dict[str, str | None]:
    """Variables the compose file takes from .env: name -> its default (None: required)."""
    found: dict[str, str | None] = {}
    for name, op, arg in _VAR.findall(compose_text.replace("$$", "")):
        found[name] = arg if op.endswith("-") else None
    return found


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


# --- docker-compose.yml ----------------------------------------------------------------------


def test_compose_runs_postgres_and_the_proxy_built_here() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"db", "proxy"}
    db, proxy = services["db"], services["proxy"]
    assert db["image"].startswith("postgres:15")
    assert proxy["build"] in (".", {"context": "."})
    assert proxy["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    [volume] = db["volumes"]
    name, _, target = volume.partition(":")
    assert target == "/var/lib/postgresql/data" and name in compose["volumes"]


def test_compose_environment_names_are_settings_the_code_reads() -> None:
    environment = _compose()["services"]["proxy"]["environment"]
    for name in environment:
        assert name in OPTION_ENVS, f"{name} is not a USAGE_PROXY_* setting of proxy.settings"
    assert "USAGE_PROXY_DATABASE_URL" in environment


def test_every_variable_compose_needs_is_in_the_env_example_and_nothing_else() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    referenced = _referenced(text)
    example = _env_example()
    assert set(example) == set(referenced), "the env example and the compose file differ"
    for name in example:
        if name.startswith("USAGE_PROXY_"):
            assert name in OPTION_ENVS, name


def test_the_proxy_container_gets_valid_settings_for_the_db_service_and_port() -> None:
    """The settings the container starts with, from the env example as it is committed."""
    compose = yaml.safe_load(
        _interpolate((ROOT / "docker-compose.yml").read_text(), _env_example())
    )
    environment = {k: str(v) for k, v in compose["services"]["proxy"]["environment"].items()}
    settings = load_settings(environ=environment)
    url = make_url(settings.database_url)
    example = _env_example()
    assert (url.drivername, url.host, url.port) == ("postgresql+asyncpg", "db", 5432)
    assert (url.username, url.password, url.database) == (
        example["POSTGRES_USER"],
        example["POSTGRES_PASSWORD"],
        example["POSTGRES_DB"],
    )
    assert url.host in compose["services"]
    db_env = compose["services"]["db"]["environment"]
    assert (db_env["POSTGRES_USER"], db_env["POSTGRES_DB"]) == (url.username, url.database)
    assert settings.host == "0.0.0.0"
    [published] = compose["services"]["proxy"]["ports"]
    host_port, _, container_port = published.rpartition(":")
    assert int(container_port) == settings.port
    assert int(host_port) == int(example["PROXY_PORT"])
    assert ("EXPOSE", str(settings.port)) in _dockerfile()


# --- Dockerfile ------------------------------------------------------------------------------


def test_the_image_runs_usage_proxy_serve() -> None:
    instructions = dict(_dockerfile())  # the last of each kind is the one in force
    argv = json.loads(instructions["ENTRYPOINT"]) + json.loads(instructions["CMD"])
    assert argv == ["usage-proxy", "serve"]
    assert "/_proxy/health" in instructions["HEALTHCHECK"]
    assert instructions["USER"] not in ("root", "0")


def test_the_image_build_stage_builds_from_what_it_copies(tmp_path: Path) -> None:
    """The build stage, without Docker: copy what the Dockerfile copies, build the wheel as it
    does, and check the wheel carries what the proxy reads at run time."""
    first_stage = []
    for instruction, args in _dockerfile():
        if instruction == "FROM" and first_stage:
            break
        first_stage.append((instruction, args))
    for instruction, args in first_stage:
        if instruction == "COPY":
            *sources, dest = args.split()
            target = tmp_path / dest
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
                if path.is_dir():  # as COPY does: the folder's content goes into the target
                    shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
                elif dest.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, target / path.name)
                else:
                    shutil.copy(path, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", "dist", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("usage_proxy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "proxy/cli/root.py",
        "proxy/data/pricing.toml",
        "migrations/env.py",
        "migrations/script.py.mako",
    ):
        assert needed in names, needed
    assert any(n.startswith("migrations/versions/") and n.endswith(".py") for n in names)
    assert any(n.startswith("proxy/data/tiktoken/") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))
    )
    assert b"usage-proxy = proxy.cli:main" in entry_points


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".git", ".venv", "*.db"} <= ignored
    assert not ignored & {"proxy", "migrations", "pyproject.toml", "README.md"}


# --- waiting for the database ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Signal(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.event = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.event.set()


@pytest.fixture
def retry_log() -> _Signal:
    handler = _Signal()
    logger = logging.getLogger("proxy.cli")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"set {PG_ENV} to test against PostgreSQL")
async def test_serve_migrates_once_a_starting_database_answers(retry_log: _Signal) -> None:
    """A PostgreSQL that refuses connections at first (still starting) and answers later: the
    migration waits for it instead of failing."""
    real = make_url(os.environ[PG_ENV])
    port = _free_port()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    url = with_schema(real.set(host="127.0.0.1", port=port).render_as_string(False), schema)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(real.host, real.port or 5432)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    migrating = asyncio.create_task(upgrade_when_reachable(url, wait=60))
    server = None
    try:
        await asyncio.wait_for(retry_log.event.wait(), 30)
        assert "not reachable yet" in retry_log.messages[0]
        assert not migrating.done()
        server = await asyncio.start_server(pipe, "127.0.0.1", port)
        await asyncio.wait_for(migrating, 60)
        direct = with_schema(os.environ[PG_ENV], schema)
        assert await current(direct) == head()
    finally:
        migrating.cancel()
        if server is not None:
            server.close()
        await asyncio.to_thread(_pg_execute, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_serve_gives_up_on_an_unreachable_database_after_the_wait(
    retry_log: _Signal,
) -> None:
    url = f"postgresql+asyncpg://u:pw@127.0.0.1:{_free_port()}/db"
    with pytest.raises(OSError):
        await upgrade_when_reachable(url, wait=1.0)
    assert retry_log.messages and all("pw" not in m for m in retry_log.messages)


async def test_serve_does_not_wait_on_errors_that_waiting_cannot_fix(
    retry_log: _Signal, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"/file is not a folder"):
        await upgrade_when_reachable(f"sqlite:///{tmp_path / 'file' / 'usage.db'}", wait=60)
    assert retry_log.messages == []
