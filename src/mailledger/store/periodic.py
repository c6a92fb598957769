"""Periodic jobs that one node runs at a time: a named lease with a last-run time.

Queue rows are shared through ``store.leases`` (each row claimed by one node); a periodic job
such as the forwarding health pass is one piece of work for the whole cluster, so it is claimed
as a whole. :func:`try_start` takes the job's row with one conditional ``UPDATE`` (the same
statement is atomic on SQLite and PostgreSQL, so exactly one node sees a row changed) when no
live lease holds it and, if ``every`` is given, when it last finished at least that long ago:
several nodes polling at the same interval run the pass once per interval between them, not
once each. A node that dies mid-pass leaves a lease that lapses, and another node takes over.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mailledger.store.models import PeriodicRun


def try_start(
    sessions: sessionmaker[Session],
    name: str,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    every: timedelta | None = None,
) -> bool:
    """Claim job ``name`` for ``owner`` until ``now + lease``; whether it was claimed."""
    _ensure_row(sessions, name)
    conditions = [
        PeriodicRun.name == name,
        or_(PeriodicRun.lease_expires_at.is_(None), PeriodicRun.lease_expires_at < now),
    ]
    if every is not None:
        conditions.append(
            or_(PeriodicRun.last_finished_at.is_(None), PeriodicRun.last_finished_at <= now - every)
        )
    with sessions.begin() as session:
        result = session.execute(
            update(PeriodicRun)
            .where(*conditions)
            .values(holder=owner, lease_expires_at=now + lease, last_started_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0) == 1


def finish(sessions: sessionmaker[Session], name: str, *, owner: str, now: datetime) -> None:
    """Give up the lease ``owner`` holds on ``name`` and note when the run finished."""
    with sessions.begin() as session:
        session.execute(
            update(PeriodicRun)
            .where(PeriodicRun.name == name, PeriodicRun.holder == owner)
            .values(holder=None, lease_expires_at=None, last_finished_at=now)
            .execution_options(synchronize_session=False)
        )


def _ensure_row(sessions: sessionmaker[Session], name: str) -> None:
    """Create the job's row the first time; another node creating it at once is fine."""
    with sessions() as session:
        if session.get(PeriodicRun, name) is not None:
            return
    try:
        with sessions.begin() as session:
            session.add(PeriodicRun(name=name))
    except IntegrityError:
        pass  # another node made it first: the row is there, which is all we need
