"""Schema migrations with Alembic, configured in code so no alembic.ini has to be found.

The scripts ship inside the package (``store/migrations``), so ``mailledger db upgrade`` works
from an installed wheel as well as from a checkout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


# The ``config.attributes`` key of the ``[secrets] key_file`` path: migrations that seal or
# open stored secrets (0010: webhook signing secrets) read it; a migration has no settings.
SECRETS_KEY_FILE = "secrets_key_file"


def alembic_config(
    url: str, engine: Engine | None = None, *, secrets_key_file: str | None = None
) -> Config:
    """An Alembic configuration for this database; ``engine`` is reused when given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Percent signs in a URL (escaped passwords) would be read as interpolation by configparser.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if engine is not None:
        config.attributes["engine"] = engine
    if secrets_key_file is not None:
        config.attributes[SECRETS_KEY_FILE] = secrets_key_file
    return config


def upgrade(
    url: str,
    engine: Engine | None = None,
    revision: str = "head",
    *,
    secrets_key_file: str | None = None,
) -> None:
    """Bring the database's schema up to ``revision`` (the newest by default).

    ``secrets_key_file`` (``[secrets] key_file``, which must exist) lets a migration seal the
    secrets it converts; without it they stay as they were and are sealed on first use.
    """
    command.upgrade(alembic_config(url, engine, secrets_key_file=secrets_key_file), revision)


def downgrade(url: str, revision: str, *, secrets_key_file: str | None = None) -> None:
    """Take the schema back to ``revision``; sealed secrets are opened with the key file."""
    command.downgrade(alembic_config(url, secrets_key_file=secrets_key_file), revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first upgrade."""
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


@dataclass(frozen=True, slots=True)
class Revision:
    """One migration script: its id, the one before it, and what it does."""

    revision: str
    down_revision: str | None
    description: str


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database's schema stands against the migrations this code ships.

    ``current`` is None before the first upgrade; ``unversioned_complete`` is a database whose
    tables were made from the models directly (``Base.metadata.create_all``, as tests do): it
    has every table and no revision.
    """

    current: str | None
    head: str
    known: bool
    unversioned_complete: bool = False

    @property
    def up_to_date(self) -> bool:
        """True when the code can run on this schema as it is."""
        return self.current == self.head or (self.current is None and self.unversioned_complete)


def head_revision() -> str:
    """The newest revision among the scripts shipped with this code."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
    return head


def history() -> list[Revision]:
    """Every revision, oldest first."""
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    revisions = [
        Revision(
            script.revision,
            script.down_revision if isinstance(script.down_revision, str) else None,
            script.doc or "",
        )
        for script in scripts.walk_revisions()
    ]
    return list(reversed(revisions))


def schema_state(engine: Engine) -> SchemaState:
    """The database's revision against the newest one, read without changing anything."""
    from sqlalchemy import inspect  # noqa: PLC0415

    from mailledger.store.models import Base  # noqa: PLC0415

    head = head_revision()
    current = current_revision(engine)
    known = current is None or current in {r.revision for r in history()}
    complete = False
    if current is None:
        tables = set(inspect(engine).get_table_names())
        complete = set(Base.metadata.tables) <= tables
    return SchemaState(current, head, known, complete)


def read_state(url: str, *, connect_timeout_seconds: int = 10) -> SchemaState:
    """The schema state of the database at ``url``, creating nothing.

    A missing SQLite file is reported as a database without a schema (opening it would
    create an empty one); a server that does not answer raises SQLAlchemy's error after
    ``connect_timeout_seconds``.
    """
    from sqlalchemy import create_engine  # noqa: PLC0415
    from sqlalchemy.engine import make_url  # noqa: PLC0415
    from sqlalchemy.pool import NullPool  # noqa: PLC0415

    parsed = make_url(url)
    connect_args: dict[str, object] = {}
    if parsed.get_backend_name() == "sqlite":
        if (
            parsed.database not in (None, "", ":memory:")
            and not Path(str(parsed.database)).exists()
        ):
            return SchemaState(None, head_revision(), known=True)
    elif parsed.get_backend_name() == "postgresql":
        connect_args["connect_timeout"] = connect_timeout_seconds
    engine = create_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        return schema_state(engine)
    finally:
        engine.dispose()
