"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from mailledger.store import directory
from mailledger.store.engine import make_engine, make_sessionmaker
from mailledger.store.migrate import alembic_config, current_revision, downgrade, upgrade
from mailledger.store.models import Base
from mailledger.store.secretbox import ensure_key_file
from mailledger.testing.api import insert_activity
from mailledger.testing.received import insert_quarantined


@pytest.mark.postgres
def test_upgrade_head_matches_models(database_url: str) -> None:
    """A fresh database upgraded to head has no differences from Base.metadata (no drift)."""
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
        assert diff == [], f"models and migrations differ; regenerate 0001: {diff}"
        head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
        assert current_revision(engine) == head
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_upgrade_is_repeatable(database_url: str) -> None:
    """Running the upgrade twice is harmless: `make run` calls it on every start."""
    upgrade(database_url)
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        assert current_revision(engine) is not None
    finally:
        engine.dispose()


def test_one_head() -> None:
    """The revision history is linear: two heads would make `db upgrade head` ambiguous."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


@pytest.mark.postgres
def test_upgrade_and_downgrade_keep_child_rows(database_url: str, tmp_path: Path) -> None:
    """Rebuilding a parent table (SQLite batch mode) must not cascade-delete its children.

    Down to 0009 and up again rebuilds ``received_messages``, ``staff``, ``tenants`` and
    ``webhook_endpoints`` on SQLite; every route, trace line, activity and delivery stays.
    """
    key = tmp_path / "secret.key"
    ensure_key_file(key)
    upgrade(database_url, secrets_key_file=str(key))
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions.begin() as session:
            tenant = directory.add_tenant(session, "acme", "acme.capture.example", ["acme.test"])
            staff = directory.add_staff(session, tenant, "richard", ["richard@acme.test"])
            insert_quarantined(session, tenant, staff)
            insert_activity(session, tenant.id, staff_id=staff.id, subject="kept")
        before = _child_counts(engine)
        assert all(before.values()), before
        downgrade(database_url, "0009", secrets_key_file=str(key))
        assert _child_counts(engine) == before
        upgrade(database_url, secrets_key_file=str(key))
        assert _child_counts(engine) == before
    finally:
        engine.dispose()


def _child_counts(engine: Engine) -> dict[str, int]:
    tables = ("message_routes", "trace_entries", "activities", "staff_addresses")
    with engine.connect() as connection:
        return {
            table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in tables
        }
