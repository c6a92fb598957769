"""Status changes of synced accounts, mailbox and calendar alike, written once.

Mailbox accounts (DESIGN §12) and calendar accounts (§13) carry the same status columns and
follow the same rules; this module holds the part those rules need from the store: moving
an account to a status and announcing a settled change as an ``account.status_changed``
webhook event in the caller's transaction, and writing a row of the account's error log.
``mailledger.accounts`` applies them to passes; a re-connect from the CLI or a web page goes
through :func:`set_status` too, so every change is announced the same way.

The two kinds keep their error logs in two tables of one shape (``mailbox_errors``,
``calendar_errors``): each log is read by its own account's pages and removed with it by a
plain foreign-key cascade, and neither table needs a "which kind" column every query must
remember to filter on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from mailledger.store import webhooks
from mailledger.store.models import (
    AccountStatus,
    CalendarAccount,
    CalendarError,
    MailboxAccount,
    MailboxError,
    Staff,
)

SyncedAccount = MailboxAccount | CalendarAccount


def account_type(account: SyncedAccount) -> str:
    """``mailbox`` or ``calendar``: what the account syncs."""
    return "calendar" if isinstance(account, CalendarAccount) else "mailbox"


def status_data(session: Session, account: SyncedAccount, previous: str) -> dict[str, Any]:
    """The ``account.status_changed`` payload: which account, its status now, and why."""
    staff = session.get_one(Staff, account.staff_id)
    data: dict[str, Any] = {
        "id": account.id,
        "type": account_type(account),
        "staff": staff.username,
        "kind": account.kind.value,
        "login": account.login,
        "status": account.status.value,
        "previous_status": previous,
        "last_error": account.last_error,
        "changed_at": account.status_changed_at.isoformat(),
    }
    if isinstance(account, MailboxAccount):
        data["shared"] = account.shared
    else:
        data["calendar_url"] = account.calendar_url
    return data


def set_status(
    session: Session, account: SyncedAccount, status: AccountStatus, now: datetime
) -> bool:
    """Move ``account`` to ``status``; a settled change is announced. Returns whether it was.

    ``syncing`` comes and goes with every pass and is not announced; every other change is an
    ``account.status_changed`` event in the caller's transaction.
    """
    if account.status is not status:
        account.status = status
        account.status_changed_at = now
    if status is AccountStatus.SYNCING or account.announced_status == status.value:
        return False
    previous = account.announced_status
    account.announced_status = status.value
    session.flush()
    webhooks.emit(
        session,
        account.tenant_id,
        webhooks.ACCOUNT_STATUS_CHANGED,
        data_of=lambda: status_data(session, account, previous),
        now=now,
    )
    return True


def reset(session: Session, account: SyncedAccount, now: datetime) -> None:
    """Re-connected: ``pending`` and due now, its failures forgotten."""
    account.failures = 0
    account.failing_since = None
    account.retry_at = None
    account.last_error = ""
    account.mailed_status = ""
    set_status(session, account, AccountStatus.PENDING, now)


def log_error(
    session: Session,
    account: SyncedAccount,
    *,
    status: AccountStatus,
    what: str,
    fix: str,
    now: datetime,
) -> None:
    """One row of the account's error log: when, the status it led to, what, and the fix."""
    if isinstance(account, CalendarAccount):
        session.add(
            CalendarError(account_id=account.id, at=now, status=status.value, what=what, fix=fix)
        )
    else:
        session.add(
            MailboxError(account_id=account.id, at=now, status=status.value, what=what, fix=fix)
        )
