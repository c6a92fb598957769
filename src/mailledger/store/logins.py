"""Failed-login counts in the database, so every node on one PostgreSQL sees the same counts.

A row counts the failures of one key (``ip:ADDRESS``, or ``user:LOGIN from:NETWORK``) since
the first failure of its window, and holds the lock they earned. Each call is one or two
statements on the primary key: the check is a read (on SQLite it takes no write lock), a
failure is one upsert per key (``INSERT … ON CONFLICT DO UPDATE … RETURNING``, atomic on both
backends, so two nodes counting the same key at once both count), and the window, the lock and
the reset are decided inside that statement from the row as it is, never from a value read
earlier. The rule itself (which keys, how long, the back-off) is ``relay.lockout``'s.

Stale rows go three ways: a failure on a row whose window has passed starts it over; a
successful login deletes its key's row; and ``prune`` deletes rows idle for longer than both
the window and the lockout (the guard runs it from the failure path, at most once a minute).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from mailledger.store.engine import finds_any, is_postgres, reading
from mailledger.store.models import LoginFailure, UTCDateTime

# The longest key column holds: what keys are cut to before they are stored (store.models).
MAX_KEY_CHARS = 400
# Rows one prune deletes at most, so a pass never holds a long transaction.
PRUNE_BATCH = 1000


@dataclass(frozen=True, slots=True)
class Counted:
    """One key after a failure was counted: failures in its window, and any lock."""

    key: str
    failures: int
    locked_until: datetime | None
    # This failure earned the lock (its count went back to 0 as the lock began).
    just_locked: bool


def _when(name: str) -> Any:
    return bindparam(name, type_=UTCDateTime())


def _count_failure(insert_for: Callable[[Any], Any]) -> Any:
    """One statement that counts a failure for a key, starting, restarting or locking it."""
    statement = insert_for(LoginFailure).values(
        key=bindparam("key"),
        failures=bindparam("first_failures"),
        window_started_at=_when("now"),
        locked_until=_when("first_locked_until"),
        updated_at=_when("now"),
    )
    # The row as it is when the statement runs (ON CONFLICT locks it on PostgreSQL, SQLite has
    # one writer): a window that began at or before the cutoff has passed, so this is its first.
    window_passed = LoginFailure.window_started_at <= _when("window_cutoff")
    failures = case((window_passed, 1), else_=LoginFailure.failures + 1)
    locks = failures >= bindparam("max_failures")
    return statement.on_conflict_do_update(
        index_elements=["key"],
        set_={
            "failures": case((locks, 0), else_=failures),
            # A lock starts a new window too: its failures are spent on it.
            "window_started_at": case(
                (or_(window_passed, locks), _when("now")), else_=LoginFailure.window_started_at
            ),
            "locked_until": case((locks, _when("lock_until")), else_=LoginFailure.locked_until),
            "updated_at": _when("now"),
        },
    ).returning(LoginFailure.failures, LoginFailure.locked_until)


# Statements built once: building one costs more than running it on SQLite.
_COUNT_FAILURE_SQLITE = _count_failure(sqlite.insert)
_COUNT_FAILURE_POSTGRES = _count_failure(postgresql.insert)

_LOCKS = select(LoginFailure.key, LoginFailure.locked_until).where(
    LoginFailure.key.in_(bindparam("keys", expanding=True)),
    LoginFailure.locked_until > _when("now"),
)


def stored_key(key: str) -> str:
    """The key as the column holds it (cut to its width; real keys are far shorter)."""
    return key[:MAX_KEY_CHARS]


def locks(
    sessions: sessionmaker[Session], keys: Sequence[str], now: datetime
) -> dict[str, datetime]:
    """The keys among ``keys`` locked at ``now``, with the end of each lock; a read only."""
    with reading(sessions) as session:
        rows = session.execute(_LOCKS, {"keys": [stored_key(k) for k in keys], "now": now})
        return {key: until for key, until in rows if until is not None}


def count_failure(
    sessions: sessionmaker[Session],
    keys: Sequence[str],
    *,
    now: datetime,
    window_cutoff: datetime,
    max_failures: int,
    lock_until: datetime,
) -> list[Counted]:
    """Count one failure for each key, in one transaction; a key reaching ``max_failures``
    within its window (one that began after ``window_cutoff``) is locked until ``lock_until``.

    Keys are counted in the order given; callers give them in one fixed order, so two nodes
    counting overlapping keys never wait on each other in a cycle.
    """
    first_locks = max_failures <= 1
    with sessions.begin() as session:
        connection = session.connection()
        upsert = (
            _COUNT_FAILURE_POSTGRES if is_postgres(connection.engine) else _COUNT_FAILURE_SQLITE
        )
        counted = []
        for key in keys:
            row = connection.execute(
                upsert,
                {
                    "key": stored_key(key),
                    "now": now,
                    "window_cutoff": window_cutoff,
                    "max_failures": max_failures,
                    "lock_until": lock_until,
                    "first_failures": 0 if first_locks else 1,
                    "first_locked_until": lock_until if first_locks else None,
                },
            ).one()
            counted.append(Counted(key, row.failures, row.locked_until, row.failures == 0))
        return counted


def forget(sessions: sessionmaker[Session], key: str, now: datetime) -> None:
    """Forget a key's failures (a right password): its row goes, unless it is locked.

    A lock another node set a moment ago stays until it ends; only its count is cleared. The
    look comes first as a reader, so a login with nothing to forget writes nothing.
    """
    key = stored_key(key)
    if not finds_any(
        sessions, select(LoginFailure.key).where(LoginFailure.key == key, LoginFailure.failures > 0)
    ):
        return
    unlocked = or_(LoginFailure.locked_until.is_(None), LoginFailure.locked_until <= now)
    with sessions.begin() as session:
        session.execute(delete(LoginFailure).where(LoginFailure.key == key, unlocked))
        session.execute(
            update(LoginFailure).where(LoginFailure.key == key, ~unlocked).values(failures=0)
        )


def prune(sessions: sessionmaker[Session], *, idle_before: datetime, now: datetime) -> int:
    """Delete rows with no failure since ``idle_before`` and no lock at ``now``; how many.

    At most ``PRUNE_BATCH`` rows a call. On PostgreSQL rows another node holds are skipped
    (SKIP LOCKED), so two nodes pruning at once never wait on each other.
    """
    stale = select(LoginFailure.key).where(
        LoginFailure.updated_at < idle_before,
        or_(LoginFailure.locked_until.is_(None), LoginFailure.locked_until <= now),
    )
    if not finds_any(sessions, stale):
        return 0
    batch = stale.limit(PRUNE_BATCH).with_for_update(skip_locked=True)
    with sessions.begin() as session:
        result = session.execute(delete(LoginFailure).where(LoginFailure.key.in_(batch)))
        return int(getattr(result, "rowcount", 0) or 0)
