"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from mailledger.store.engine import make_engine
from mailledger.store.migrate import alembic_config, current_revision, upgrade
from mailledger.store.models import Base


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
