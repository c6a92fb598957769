"""``mailledger db upgrade | current | history``: the schema, brought up to date and shown."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from mailledger.cli.kit import EXIT_OK, EXIT_REFUSED, command, group, out

if TYPE_CHECKING:
    from mailledger.config import Settings


def cmd_db_upgrade(_args: argparse.Namespace, settings: Settings) -> int:
    """Bring the database schema up to date, then move DKIM key files into the database."""
    from mailledger.cli.dkimkeys import import_key_files
    from mailledger.store.migrate import upgrade
    from mailledger.store.secretbox import ensure_key_file

    # The key first: the upgrade seals secrets kept in clear with it (migration 0010).
    created = ensure_key_file(settings.secrets.key_file)
    upgrade(settings.database.url, secrets_key_file=settings.secrets.key_file)
    out("database schema is up to date")
    if created:
        out(f"created the secrets key {settings.secrets.key_file} (mode 0600): back it up")
    # DKIM key files made before keys lived in the database (migration 0018) are sealed into
    # it here, where the secrets key is at hand. A file another node holds is not an error
    # for this node's upgrade: the line says to run `dkim import` there.
    import_key_files(settings)
    return EXIT_OK


def cmd_db_current(_args: argparse.Namespace, settings: Settings) -> int:
    """The database's revision; exit 0 only when it is the newest this code knows."""
    from mailledger.store.migrate import read_state

    state = read_state(settings.database.url)
    if state.up_to_date:
        current = state.current or "unversioned, every table present"
        out(f"{current} (head): the schema is up to date")
        return EXIT_OK
    if state.current is None:
        out("no schema yet: run `mailledger db upgrade`")
    elif not state.known:
        out(
            f"{state.current}: not a revision this mailledger knows (its newest is "
            f"{state.head}): install the newer mailledger"
        )
    else:
        out(f"{state.current}: the newest is {state.head}: run `mailledger db upgrade`")
    return EXIT_REFUSED


def cmd_db_history(_args: argparse.Namespace, settings: Settings) -> int:
    """Every migration, oldest first, with the database's own revision marked."""
    from mailledger.store.migrate import history, read_state

    state = read_state(settings.database.url)
    revisions = history()
    width = max(len(r.revision) for r in revisions)
    for revision in revisions:
        marks = [
            mark
            for mark, applies in (
                ("current", revision.revision == state.current),
                ("head", revision.revision == state.head),
            )
            if applies
        ]
        note = f"  ({', '.join(marks)})" if marks else ""
        out(f"{revision.revision.ljust(width)}  {revision.description}{note}")
    if state.current is None:
        out("the database has no revision yet: run `mailledger db upgrade`")
    return EXIT_OK


def register(commands: Any) -> None:
    """Add the ``db`` command group to the CLI."""
    db = group(commands, "db", "database schema")
    command(db, "upgrade", cmd_db_upgrade, "apply schema migrations")
    command(db, "current", cmd_db_current, "the database's revision; exit 0 when up to date")
    command(db, "history", cmd_db_history, "every migration, the database's own marked")
