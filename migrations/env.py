"""Alembic environment: async engines, the run_sync pattern, and our `schema=` URL parameter.

The URL is the config's main option `sqlalchemy.url` (set by proxy.db.migrate); when it is
unset, as for a developer's `alembic check` from the repository root, it comes from the
proxy's settings (USAGE_PROXY_DATABASE_URL, the config file, or the default). A connection
passed in `config.attributes["connection"]` is used as is (proxy.db.migrate does this).

With `schema=NAME` connections have search_path=NAME, so the tables and alembic_version both
live in that schema without naming it here; autogenerate compares against that schema too.
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from proxy.db.engine import make_engine, split_url
from proxy.db.models import Base, Money, UTCDateTime
from proxy.settings import load_settings

config = context.config
target_metadata = Base.metadata

# Only the alembic command line configures logging; inside the proxy, the proxy does.
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or load_settings().database_url


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    # Revisions must not import the models (they change; a revision never does).
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, Money):
        return 'sa.Numeric(precision=20, scale=10).with_variant(sa.BigInteger(), "sqlite")'
    return False


def _configure(**kwargs) -> None:
    parsed, _ = split_url(_url())
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=parsed.get_backend_name() == "sqlite",
        compare_type=True,
        # proxy.db.engine emits BEGIN itself on SQLite, so DDL is transactional there too.
        transactional_ddl=True,
        render_item=_render_item,
        **kwargs,
    )


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = make_engine(_url())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    parsed, _ = split_url(_url())
    _configure(url=parsed, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(_run_async())
    else:
        _run(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
