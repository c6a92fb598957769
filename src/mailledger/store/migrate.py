"""Schema migrations with Alembic, configured in code so no alembic.ini has to be found.

The scripts ship inside the package (``store/migrations``), so ``mailledger db upgrade`` works
from an installed wheel as well as from a checkout.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def alembic_config(url: str, engine: Engine | None = None) -> Config:
    """An Alembic configuration for this database; ``engine`` is reused when given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Percent signs in a URL (escaped passwords) would be read as interpolation by configparser.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def upgrade(url: str, engine: Engine | None = None, revision: str = "head") -> None:
    """Bring the database's schema up to ``revision`` (the newest by default)."""
    command.upgrade(alembic_config(url, engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first upgrade."""
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
