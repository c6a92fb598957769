"""``mailledger db upgrade``: bring the database schema up to date."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, command, group, out

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_db_upgrade(_args: argparse.Namespace, settings: Settings) -> int:
    """Bring the database schema up to date."""
    from mailledger.store.migrate import upgrade

    upgrade(settings.database.url)
    out("database schema is up to date")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``db`` command group to the CLI."""
    db = group(commands, "db", "database schema")
    command(db, "upgrade", cmd_db_upgrade, "apply schema migrations")
