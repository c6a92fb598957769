"""A message's trace: what each processing step decided and why (DESIGN §5).

Written with the message's final state in the same transaction, so ``messages trace`` shows
exactly the decisions that led to it, and a rolled-back attempt leaves none behind.
"""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.orm import Session

from mailledger.store.models import ReceivedMessage, TraceEntry, utcnow

# Run on the connection, not the session: the ORM's bulk insert costs more than the insert.
_INSERT_TRACE = insert(TraceEntry)


class Tracer:
    """Collects a message's trace entries, in order, and writes them in one statement.

    Added as ORM objects they cost a flush each time a later query autoflushed (about a
    third of processing's CPU, found by `make bench`); ``write`` inserts them all at once.
    """

    def __init__(self, session: Session, message: ReceivedMessage) -> None:
        self._session = session
        self._message = message
        self._rows: list[dict[str, object]] = []

    def __call__(self, step: str, decision: str, detail: str = "") -> None:
        self._rows.append(
            {
                "message_id": self._message.id,
                "at": utcnow(),
                "step": step,
                "decision": decision,
                "detail": detail[:2000],
            }
        )

    def write(self) -> None:
        """Insert what was collected; the caller's transaction commits it with the rest."""
        if self._rows:
            self._session.connection().execute(_INSERT_TRACE, self._rows)
            self._rows = []
