"""Rows every message writes (trace, sources, participants, attachments), inserted together.

One insert of many rows costs little more than one insert of one row, and a processing
transaction records a whole batch of messages (``capture.worker``). So the steps add these rows
here and ``write`` inserts each table's rows in one statement (``executemany``). A step that
is about to read such rows (a merge reading the activity's participants, the loop guard
counting an email's sources, a webhook's payload) calls ``write`` first, so it sees them.

Each message's work runs in a savepoint. ``begin`` marks where the message's rows start;
``discard`` after the savepoint was rolled back drops that message's rows and puts back the
rows of earlier messages that were written inside it (the rollback took them out again).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert

from mailledger.store.models import ActivitySource, Attachment, Participant, TraceEntry
from mailledger.store.precompiled import Cursor, Statement

# Run on the driver's cursor (``store.precompiled``): SQLAlchemy's execution of an
# ``executemany`` cost more than the driver's.
TRACE = Statement(insert(TraceEntry))
SOURCES = Statement(insert(ActivitySource))
PARTICIPANTS = Statement(insert(Participant))
ATTACHMENTS = Statement(insert(Attachment))
_ORDER = (TRACE, SOURCES, PARTICIPANTS, ATTACHMENTS)

Row = dict[str, Any]


class PendingRows:
    """Rows waiting to be inserted, in the order they were added, table by table."""

    def __init__(self, sql: Cursor) -> None:
        self._sql = sql
        self._rows: list[tuple[Statement, Row]] = []
        self._mark = 0  # where the current message's rows start in _rows
        self._written_in_message: list[tuple[Statement, Row]] = []

    def add(self, statement: Statement, rows: list[Row]) -> None:
        """Queue rows for one of the tables above."""
        self._rows.extend((statement, row) for row in rows)

    def begin(self) -> None:
        """A message's work starts (its savepoint was just taken)."""
        self._mark = len(self._rows)
        self._written_in_message = []

    def discard(self) -> None:
        """The message's savepoint was rolled back: forget its rows, restore the others'."""
        self._rows = self._written_in_message + self._rows[: self._mark]
        self.begin()

    def write(self) -> None:
        """Insert every queued row, one statement per table."""
        if not self._rows:
            return
        by_table: dict[Statement, list[Row]] = {}
        for statement, row in self._rows:
            by_table.setdefault(statement, []).append(row)
        for statement in _ORDER:
            rows = by_table.get(statement)
            if rows:
                self._sql.many(statement, rows)
        # Rows of earlier messages written inside the current message's savepoint.
        self._written_in_message.extend(self._rows[: self._mark])
        self._rows = []
        self._mark = 0
