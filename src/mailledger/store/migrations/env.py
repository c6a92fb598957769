"""Alembic environment: the schema is ``Base.metadata``, the database is the configured URL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import Connection, Engine

from mailledger.store.engine import make_engine
from mailledger.store.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(kind: str, item: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    # Render our timestamp type as what it stores, so a migration never imports the models
    # (a script must keep working after the Python class that generated it has changed).
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


@contextlib.contextmanager
def _sqlite_foreign_keys_off(connection: Connection) -> Iterator[None]:
    """Foreign keys off on SQLite while migrations run, then checked before the commit.

    Batch mode changes a SQLite table by copying it and dropping the old one; with foreign
    keys on, that DROP first deletes every row, cascading to the children (every route of
    every received message when ``received_messages`` gains a column). Alembic's advice: turn
    them off for the run. The pragma is ignored inside a transaction, so it is set before ours
    begins; :func:`_check_foreign_keys` then refuses to commit a schema with a dangling key.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    raw = connection.connection.dbapi_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        raw.execute("PRAGMA foreign_keys=ON")


def _check_foreign_keys(connection: Connection) -> None:
    if connection.dialect.name != "sqlite":
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    if broken:
        raise RuntimeError(
            f"the migration left rows whose foreign key points nowhere: {broken[:5]}"
        )


def _run_online() -> None:
    given = config.attributes.get("engine")
    url = config.get_main_option("sqlalchemy.url") or ""
    engine: Engine = given if given is not None else make_engine(url)
    try:
        with engine.connect() as connection, _sqlite_foreign_keys_off(connection):
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # SQLite cannot ALTER most things in place; batch mode copies the table instead.
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
                render_item=_render_item,
            )
            with context.begin_transaction():
                context.run_migrations()
                _check_foreign_keys(connection)
    finally:
        if given is None:
            engine.dispose()


def _run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
