"""A mailbox account's status through its passes (DESIGN §12): the shared rules, applied.

The rules are written once for mailbox and calendar accounts in ``accounts.statuses``
(``pending`` → ``syncing`` → ``enabled``; ``error`` with back-off; ``connection`` after two
days; ``reconnect`` on an authentication failure; every failure a row of the error log; a
settled change an ``account.status_changed`` webhook event). What is a mailbox's own is
here: the daily limit (``sync.limits``) that leaves an account ``pending`` until the next
UTC day, and the count of messages synced. The mail to the staff member is
``sync.notices``' job, after the commit.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from mailledger.accounts import statuses as shared
from mailledger.accounts.statuses import (
    BACKOFF_SECONDS,
    GIVE_UP_AFTER,
    NEEDS_PEOPLE,
    RUNNABLE,
    backoff,
    next_utc_day,
    pass_failed,
    pass_started,
    reset,
    set_status,
)
from mailledger.store.models import AccountStatus, MailboxAccount


def pass_succeeded(
    session: Session,
    account: MailboxAccount,
    now: datetime,
    fetched: int,
    *,
    next_pass_at: datetime | None = None,
) -> None:
    """A pass ended well: ``enabled`` (or ``pending`` when the daily limit deferred the rest).

    ``next_pass_at`` is when the next full pass is due (the engine's interval); the daily
    limit's deferral (``sync.limits``), when later, wins.
    """
    # sync.limits moved it to `pending` mid-pass, or deferred it to the next UTC day.
    deferred = account.status is AccountStatus.PENDING or (
        account.retry_at is not None and account.retry_at == next_utc_day(now)
    )
    account.messages_synced += fetched
    shared.pass_succeeded(session, account, now, next_pass_at=next_pass_at, deferred=deferred)


def due_accounts(session: Session, now: datetime, limit: int) -> list[int]:
    """Ids of mailbox accounts a pass may start for now, longest waiting first."""
    return shared.due_accounts(session, now, limit, MailboxAccount)


__all__ = [
    "BACKOFF_SECONDS",
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
