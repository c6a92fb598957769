"""A message's trace: what each processing step decided and why (DESIGN §5).

Written with the message's final state in the same transaction, so ``messages trace`` shows
exactly the decisions that led to it, and a rolled-back attempt leaves none behind.
"""

from __future__ import annotations

from typing import Any

from mailledger.capture.pipeline.claimed import ClaimedMessage
from mailledger.capture.pipeline.pending import TRACE, PendingRows
from mailledger.store.models import utcnow


class Tracer:
    """Collects a message's trace entries, in order, for one insert with the batch's rows.

    Added as ORM objects they cost a flush each time a later query autoflushed (about a
    third of processing's CPU, found by `make bench`); ``write`` hands them to the
    transaction's pending rows, inserted with every other message's in one statement.
    """

    def __init__(self, rows: PendingRows, message: ClaimedMessage) -> None:
        self._pending = rows
        self._message = message
        self._rows: list[dict[str, Any]] = []

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
        """Queue what was collected; the caller's transaction inserts and commits it."""
        if self._rows:
            self._pending.add(TRACE, self._rows)
            self._rows = []
