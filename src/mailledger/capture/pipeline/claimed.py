"""A claimed message and its routes as plain values: what processing reads and decides.

The worker loads the messages it records as plain rows, in one statement with their routes,
and writes what processing decided back in one statement per table for the whole
transaction. As ORM objects they cost more than the statements themselves: the load's
bookkeeping for every row, the session's tracking of every attribute processing sets, and
the bulk update that read it all back (``python -m bench.processing``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update

from mailledger.store.models import MessageRoute, MessageState, ReceivedMessage, RouteKind
from mailledger.store.precompiled import Cursor, Statement

# What processing sets on a message and on its routes, written back by primary key.
MESSAGE_OUTCOME = (
    "state",
    "reason",
    "finished_at",
    "claimed_by",
    "claim_expires_at",
    "message_id",
    "auth",
)
ROUTE_OUTCOME = ("outcome", "activity_id")


@dataclass(slots=True)
class ClaimedRoute:
    """One capture address the message was accepted for, and what processing decided."""

    id: int
    tenant_id: int
    kind: RouteKind
    staff_id: int | None
    rcpt: str
    outcome: str = ""
    activity_id: int | None = None


@dataclass(slots=True)
class ClaimedMessage:
    """A received message being processed: intake's facts, and the columns processing sets."""

    id: int
    queue_id: str
    blob: str
    peer: str
    helo: str
    mail_from: str
    received_at: datetime
    attempts: int
    force_record: bool
    submitted_by_staff_id: int | None
    mailbox_account_id: int | None
    state: MessageState
    claimed_by: str | None
    reason: str = ""
    message_id: str = ""
    finished_at: datetime | None = None
    claim_expires_at: datetime | None = None
    auth: dict[str, Any] = field(default_factory=dict)
    routes: list[ClaimedRoute] = field(default_factory=list)

    @classmethod
    def of(cls, message: ReceivedMessage) -> ClaimedMessage:
        """The plain values of a loaded message and its routes."""
        routes = [
            ClaimedRoute(r.id, r.tenant_id, r.kind, r.staff_id, r.rcpt, r.outcome, r.activity_id)
            for r in message.routes
        ]
        return cls(
            **{name: getattr(message, name) for name in _MESSAGE_FACTS + MESSAGE_OUTCOME},
            routes=routes,
        )

    def apply_to(self, message: ReceivedMessage) -> None:
        """Set what processing decided on the loaded message and its routes."""
        for name in MESSAGE_OUTCOME:
            setattr(message, name, getattr(self, name))
        by_id = {route.id: route for route in self.routes}
        for loaded in message.routes:
            for name in ROUTE_OUTCOME:
                setattr(loaded, name, getattr(by_id[loaded.id], name))


# The message columns read besides the outcome's (the dataclass's fields, in its order).
_MESSAGE_FACTS = (
    "id",
    "queue_id",
    "blob",
    "peer",
    "helo",
    "mail_from",
    "received_at",
    "attempts",
    "force_record",
    "submitted_by_staff_id",
    "mailbox_account_id",
)
_MESSAGE_COLUMNS = tuple(
    getattr(ReceivedMessage, name) for name in ("id", *_MESSAGE_FACTS[1:], *MESSAGE_OUTCOME)
)
_ROUTE_COLUMNS = (
    MessageRoute.id.label("route_id"),
    MessageRoute.tenant_id,
    MessageRoute.kind,
    MessageRoute.staff_id,
    MessageRoute.rcpt,
    MessageRoute.outcome,
    MessageRoute.activity_id.label("route_activity_id"),
)
# The claimed messages with their routes, locked: the row lock keeps a node whose lease lapsed
# from racing the new owner (PostgreSQL; SQLite has one writer at a time anyway).
_CLAIMED = Statement(
    select(*_MESSAGE_COLUMNS, *_ROUTE_COLUMNS)
    .join_from(ReceivedMessage, MessageRoute, isouter=True)
    .where(ReceivedMessage.id.in_(bindparam("ids", expanding=True)))
    .order_by(ReceivedMessage.id, MessageRoute.id)
    .with_for_update(of=ReceivedMessage)
)
_UPDATE_MESSAGE = Statement(
    update(ReceivedMessage).where(ReceivedMessage.id == bindparam("message_key"))
)
_UPDATE_ROUTE = Statement(update(MessageRoute).where(MessageRoute.id == bindparam("route_key")))


def load_claimed(sql: Cursor, ids: list[int]) -> list[ClaimedMessage]:
    """The messages of ``ids`` with their routes, in id order, locked for this transaction."""
    messages: dict[int, ClaimedMessage] = {}
    facts = len(_MESSAGE_COLUMNS)
    for row in sql.rows(_CLAIMED, {"ids": ids}):
        message = messages.get(row[0])
        if message is None:
            message = messages[row[0]] = ClaimedMessage(
                *row[: len(_MESSAGE_FACTS)],
                **dict(zip(MESSAGE_OUTCOME, row[len(_MESSAGE_FACTS) : facts], strict=True)),
            )
        if row[facts] is not None:
            message.routes.append(ClaimedRoute(*row[facts:]))
    return list(messages.values())


def write_outcomes(sql: Cursor, messages: list[ClaimedMessage]) -> None:
    """Write what processing set on the messages and their routes: one statement per table."""
    sql.many(
        _UPDATE_MESSAGE,
        [
            {"message_key": m.id} | {name: getattr(m, name) for name in MESSAGE_OUTCOME}
            for m in messages
        ],
    )
    sql.many(
        _UPDATE_ROUTE,
        [
            {"route_key": r.id, "outcome": r.outcome, "activity_id": r.activity_id}
            for m in messages
            for r in m.routes
        ],
    )
