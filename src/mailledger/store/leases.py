"""Leases on queue rows: claim, renew and release, one implementation for every queue.

A row is taken for work by writing its owner (the node id), when the lease lapses, and one
more attempt, in one transaction. A row whose owner died is claimable again once its lease
lapses, so no work is lost, and attempts are counted when claimed, so work that crashes the
process every time ends instead of looping. On PostgreSQL several nodes share a queue through
``SELECT … FOR UPDATE SKIP LOCKED``: a row another node is claiming right now is skipped, not
waited for (DESIGN §9). On SQLite, ``store.engine`` begins every write transaction with
``BEGIN IMMEDIATE``, one writer at a time, so a pass looks first as a reader and takes the
write lock only when there is something to claim.

The queues differ only in their table, which rows wait for work, and the order they are taken
in: those are a :class:`LeasedQueue`: ``PROCESSING``, ``DELIVERY`` and ``WEBHOOKS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import BindParameter, ColumnElement, Row, Select, bindparam, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailledger.store.engine import finds_any, is_postgres
from mailledger.store.models import (
    MessageState,
    OutboundMessage,
    OutboundState,
    ReceivedMessage,
    UTCDateTime,
    WebhookDelivery,
    WebhookDeliveryState,
    utcnow,
)
from mailledger.store.precompiled import Cursor, Statement

# A time, or the placeholder of one in a statement compiled once (``claim_on``).
Moment = datetime | BindParameter[datetime]


def _no_more(_now: Moment) -> Sequence[ColumnElement[bool]]:
    return ()


@dataclass(frozen=True, slots=True)
class LeasedQueue:
    """A table whose rows are claimed for work, and which of its rows wait for it."""

    model: type[ReceivedMessage] | type[OutboundMessage] | type[WebhookDelivery]
    # Rows whose work is not finished: the only ones claimed, renewed or handed back.
    unfinished: ColumnElement[bool]
    # The order rows are claimed in.
    order: tuple[ColumnElement[Any], ...]
    # Further conditions for a row to be due at ``now`` (a retry time, say).
    due: Callable[[Moment], Sequence[ColumnElement[bool]]] = field(default=_no_more)

    def waiting(self, now: Moment) -> list[ColumnElement[bool]]:
        """Conditions of a row waiting for work at ``now``: unfinished, due, and not leased."""
        expires = self.model.claim_expires_at
        return [self.unfinished, *self.due(now), or_(expires.is_(None), expires < now)]

    def claimable(self, now: datetime) -> Select[int]:
        """The ids of rows waiting for work at ``now``."""
        return select(self.model.id).where(*self.waiting(now))


# Received messages waiting for the processing worker, oldest first.
PROCESSING: Final = LeasedQueue(
    model=ReceivedMessage,
    unfinished=ReceivedMessage.state == MessageState.RECEIVED,
    order=(ReceivedMessage.id.asc(),),
)
# Outbound rows waiting for delivery: queued, and their retry time has come.
DELIVERY: Final = LeasedQueue(
    model=OutboundMessage,
    unfinished=OutboundMessage.state == OutboundState.QUEUED,
    order=(OutboundMessage.retry_after.asc(), OutboundMessage.id.asc()),
    due=lambda now: (OutboundMessage.retry_after <= now,),
)
# Webhook deliveries (one event for one endpoint) waiting for their next attempt.
WEBHOOKS: Final = LeasedQueue(
    model=WebhookDelivery,
    unfinished=WebhookDelivery.state == WebhookDeliveryState.PENDING,
    order=(WebhookDelivery.retry_after.asc(), WebhookDelivery.id.asc()),
    due=lambda now: (WebhookDelivery.retry_after <= now,),
)


@dataclass(frozen=True, slots=True)
class Lease:
    """One row claimed: its id, its attempts including this claim, and the columns asked for."""

    id: int
    attempts: int
    row: Row[Any]  # as read in the claiming transaction, before the claim was written


def any_waiting(
    sessions: sessionmaker[Session], queue: LeasedQueue, now: datetime | None = None
) -> bool:
    """Whether ``queue`` has a row to claim, asked as a reader (no write lock on SQLite)."""
    return finds_any(sessions, queue.claimable(now or utcnow()))


def claim(
    session: Session,
    queue: LeasedQueue,
    *,
    owner: str,
    lease_seconds: float,
    limit: int,
    now: datetime | None = None,
    columns: Sequence[Any] = (),
    candidates: int | None = None,
    take: Callable[[Row[Any]], bool] | None = None,
) -> list[Lease]:
    """Claim up to ``limit`` waiting rows for ``owner``, in the caller's transaction.

    Reads ``candidates`` rows (``limit`` by default) in the queue's order with ``columns``
    beside the id and attempts; ``take``, if given, is asked about each in turn until
    ``limit`` are taken, and every row it accepts is claimed, so it may count what it accepts.
    Each claimed row gets the owner, a lease of ``lease_seconds`` and one more attempt.
    """
    if limit <= 0:
        return []
    now = now or utcnow()
    model = queue.model
    query = (
        select(model.id, model.attempts, *columns)
        .where(*queue.waiting(now))
        .order_by(*queue.order)
        .limit(candidates or limit)
    )
    if is_postgres(session.get_bind().engine):
        query = query.with_for_update(skip_locked=True)
    taken: list[Row[Any]] = []
    for row in session.execute(query).all():
        if len(taken) >= limit:
            break
        if take is None or take(row):
            taken.append(row)
    if not taken:
        return []
    expires = now + timedelta(seconds=lease_seconds)
    session.execute(
        update(model)
        .where(model.id.in_([row.id for row in taken]))
        .values(claimed_by=owner, claim_expires_at=expires, attempts=model.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    return [Lease(row.id, row.attempts + 1, row) for row in taken]


# Per queue (by identity; the queues are this module's constants): claim's two statements,
# compiled once per dialect and run on the driver's cursor (``store.precompiled``).
_ON_CURSOR: dict[int, tuple[Statement, Statement]] = {}


def _cursor_statements(queue: LeasedQueue) -> tuple[Statement, Statement]:
    found = _ON_CURSOR.get(id(queue))
    if found is None:
        model = queue.model
        waiting = (
            select(model.id, model.attempts)
            .where(*queue.waiting(bindparam("now", type_=UTCDateTime())))
            .order_by(*queue.order)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)  # PostgreSQL; nothing on SQLite (one writer)
        )
        take = update(model).where(model.id == bindparam("row_key"))
        found = _ON_CURSOR[id(queue)] = (
            Statement(waiting),
            Statement(take.values(attempts=model.attempts + 1)),
        )
    return found


def claim_on(
    sql: Cursor,
    queue: LeasedQueue,
    *,
    owner: str,
    lease_seconds: float,
    limit: int,
    now: datetime | None = None,
) -> list[int]:
    """:func:`claim` on the driver's cursor of the caller's transaction; the ids claimed.

    Processing claims its next batch in the transaction that records the last one, while
    it holds SQLite's write lock: SQLAlchemy's building and execution of :func:`claim`'s two
    statements cost more there than the database's work.
    """
    if limit <= 0:
        return []
    now = now or utcnow()
    waiting, take = _cursor_statements(queue)
    ids = [row[0] for row in sql.rows(waiting, {"now": now, "limit": limit})]
    expires = now + timedelta(seconds=lease_seconds)
    sql.many(
        take,
        [{"row_key": id_, "claimed_by": owner, "claim_expires_at": expires} for id_ in ids],
    )
    return ids


def claim_waiting(
    sessions: sessionmaker[Session],
    queue: LeasedQueue,
    *,
    owner: str,
    lease_seconds: float,
    limit: int,
    now: datetime | None = None,
) -> list[Lease]:
    """Look as a reader first, then claim in a transaction of its own (see :func:`claim`).

    An idle poll of every node finds nothing without taking SQLite's write lock, which
    intake's commits would otherwise wait behind.
    """
    now = now or utcnow()
    if not any_waiting(sessions, queue, now):
        return []
    with sessions.begin() as session:
        return claim(session, queue, owner=owner, lease_seconds=lease_seconds, limit=limit, now=now)


def renew(
    session: Session, queue: LeasedQueue, ids: Iterable[int], *, owner: str, lease_seconds: float
) -> int:
    """Extend this owner's leases on those of ``ids`` still unfinished; how many it kept."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    return _update_own(session, queue, ids, owner, {"claim_expires_at": expires})


def release(
    session: Session,
    queue: LeasedQueue,
    ids: Iterable[int] | None = None,
    *,
    owner: str,
    not_before: datetime | None = None,
    refund_attempt: bool = False,
) -> int:
    """Hand back this owner's unfinished rows (``ids``, or all it holds); how many there were.

    A released row is claimable again at once, or from ``not_before`` on (a back-off).
    ``refund_attempt`` takes back the attempt its claim counted, for work never started.
    """
    values: dict[str, Any] = {"claimed_by": None, "claim_expires_at": not_before}
    if refund_attempt:
        values["attempts"] = queue.model.attempts - 1
    return _update_own(session, queue, ids, owner, values)


def _update_own(
    session: Session,
    queue: LeasedQueue,
    ids: Iterable[int] | None,
    owner: str,
    values: dict[str, Any],
) -> int:
    """Set ``values`` on the unfinished rows this owner holds (those of ``ids``, if given)."""
    model = queue.model
    conditions = [model.claimed_by == owner, queue.unfinished]
    if ids is not None:
        wanted = list(ids)
        if not wanted:
            return 0
        conditions.append(model.id.in_(wanted))
    result = session.execute(
        update(model)
        .where(*conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
