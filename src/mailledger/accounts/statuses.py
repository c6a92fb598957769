"""An account's status through its passes: the rules, written once for both kinds.

``pending`` → ``syncing`` → ``enabled``; a failed pass is ``error`` and is retried with a
back-off that honours a server's "try again in N"; failing for two days is ``connection``
and no longer tried; an authentication failure is ``reconnect`` and no longer tried until
the user re-connects (one more login with a known-bad password only gets it locked). Every
failure is a row of the account's error log. Mailbox accounts (``sync``) and calendar
accounts (``calendar``) both pass through these functions; a settled change is announced by
``store.accountstatus.set_status``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from mailledger.accounts.problems import SyncProblem
from mailledger.store.accountstatus import SyncedAccount, log_error, reset, set_status
from mailledger.store.models import AccountStatus, CalendarAccount, MailboxAccount

# Failing this long without one good pass: `connection`, no more tries.
GIVE_UP_AFTER: Final = timedelta(days=2)
# The wait after the n-th failure in a row (the last one repeats).
BACKOFF_SECONDS: Final = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
# Statuses whose accounts passes are run for (when their retry time has come).
RUNNABLE: Final = (AccountStatus.PENDING, AccountStatus.ENABLED, AccountStatus.ERROR)
# Statuses that wait for a person: the staff member (and admins for a shared account) is told.
NEEDS_PEOPLE: Final = (AccountStatus.RECONNECT, AccountStatus.CONNECTION)


def backoff(failures: int) -> timedelta:
    """How long to wait after ``failures`` failed passes in a row."""
    index = min(max(failures, 1), len(BACKOFF_SECONDS)) - 1
    return timedelta(seconds=BACKOFF_SECONDS[index])


def next_utc_day(now: datetime) -> datetime:
    """The start of the UTC day after ``now``'s: when a daily limit starts afresh."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=1)


def pass_started(session: Session, account: SyncedAccount, now: datetime) -> None:
    """A pass of ``account`` begins."""
    set_status(session, account, AccountStatus.SYNCING, now)


def pass_succeeded(
    session: Session,
    account: SyncedAccount,
    now: datetime,
    *,
    next_pass_at: datetime | None = None,
    deferred: bool = False,
) -> None:
    """A pass ended well: ``enabled`` (or ``pending`` when a limit ``deferred`` the rest).

    ``next_pass_at`` is when the next full pass is due (the interval); a limit's deferral
    (already in ``retry_at``), when later, wins.
    """
    account.failures = 0
    account.failing_since = None
    account.last_sync_at = now
    if deferred:
        set_status(session, account, AccountStatus.PENDING, now)
        if next_pass_at is not None and account.retry_at is not None:
            account.retry_at = max(account.retry_at, next_pass_at)
        return
    account.retry_at = next_pass_at
    set_status(session, account, AccountStatus.ENABLED, now)


def pass_failed(
    session: Session, account: SyncedAccount, problem: SyncProblem, now: datetime
) -> AccountStatus:
    """A pass failed with ``problem``: log it, and choose the status and the next try."""
    log_error(session, account, status=problem.status, what=problem.what, fix=problem.fix, now=now)
    account.last_error = problem.what
    account.failures += 1
    if account.failing_since is None:
        account.failing_since = now
    if problem.status is AccountStatus.RECONNECT:
        status = AccountStatus.RECONNECT
        account.retry_at = None
    elif now - account.failing_since >= GIVE_UP_AFTER:
        status = AccountStatus.CONNECTION
        account.retry_at = None
    else:
        status = AccountStatus.ERROR
        wait = backoff(account.failures)
        if problem.retry_after_seconds is not None:
            wait = max(wait, timedelta(seconds=problem.retry_after_seconds))
        account.retry_at = now + wait
    set_status(session, account, status, now)
    return status


def due_accounts(
    session: Session,
    now: datetime,
    limit: int,
    model: type[MailboxAccount] | type[CalendarAccount] = MailboxAccount,
) -> list[int]:
    """Ids of accounts of ``model`` a pass may start for now, longest waiting first.

    Runnable statuses whose retry time has come, and not leased by a node; a ``syncing``
    account whose lease lapsed (its node died mid-pass) is due again too, so a pass must hold
    the account's lease while it runs.
    """
    expires = model.claim_expires_at
    free = or_(expires.is_(None), expires < now)
    statement = (
        select(model.id)
        .where(
            model.status.in_((*RUNNABLE, AccountStatus.SYNCING)),
            or_(model.retry_at.is_(None), model.retry_at <= now),
            free,
        )
        .order_by(model.last_sync_at.is_not(None), model.last_sync_at, model.id)
        .limit(limit)
    )
    return list(session.scalars(statement))


__all__ = [
    "GIVE_UP_AFTER",
    "NEEDS_PEOPLE",
    "RUNNABLE",
    "backoff",
    "due_accounts",
    "next_utc_day",
    "pass_failed",
    "pass_started",
    "pass_succeeded",
    "reset",
    "set_status",
]
