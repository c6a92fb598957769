"""What the pages show of mailbox accounts: who sees which, who may act, statuses in words.

Reads go through ``store.mailaccounts`` (``account_dicts``, ``account_errors``: what ``account
list`` and ``account errors`` print), scoped by the session's tenant first. A staff member
sees their own accounts and the shared ones that name them; they act on their own accounts
only. Shared accounts are the admins': a viewer sees them, an admin acts on them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailledger.store import mailaccounts
from mailledger.store.models import AccountStatus, MailboxAccount, MailboxViewer
from mailledger.store.queries import NotFoundError
from mailledger.store.websessions import WebIdentity
from mailledger.web.pages.admin.times import when

# Each status as a person reads it: a name, and what it means for their mail.
STATUS_WORDS: Final = {
    AccountStatus.PENDING: (
        "Pending",
        "waiting for its next pass (the first one, or the next day when today's limit was "
        "reached); nothing is lost meanwhile",
    ),
    AccountStatus.SYNCING: ("Syncing", "a pass is reading the mailbox now"),
    AccountStatus.ENABLED: ("Enabled", "working: the last pass read the mailbox"),
    AccountStatus.ERROR: (
        "Error",
        "the last pass failed; it is tried again by itself, less often the longer it fails",
    ),
    AccountStatus.CONNECTION: (
        "Connection",
        "failing for two days, so it is no longer tried: fix the cause below, then press Sync now",
    ),
    AccountStatus.RECONNECT: (
        "Re-connect",
        "the login or sign-in was refused; it is not tried again until it is re-connected "
        "(more tries would only get the mailbox locked)",
    ),
}
KIND_WORDS: Final = {"imap": "IMAP", "google": "Google", "microsoft": "Microsoft 365"}
MODE_WORDS: Final = {
    "sweep": "sweep (INBOX and Sent, read-only)",
    "folder": "folder (what you drop into one folder)",
}
# The notice after a button's redirect (``?done=``): fixed words, nothing from the URL shown.
DONE: Final = {
    "added": "Connected. The first pass starts within a few seconds; it shows as Pending "
    "until then.",
    "connected": "Signed in and connected. The first pass starts within a few seconds.",
    "sync": "Sync requested: the pass starts within a few seconds. Reload this page to see "
    "how it ended.",
    "reconnected": "Re-connected: the account is tried again within a few seconds.",
    "authserv": "Saved: mail processed from now on is judged on that server's "
    "Authentication-Results; mail already recorded keeps its verdicts.",
}
CARD_ERRORS: Final = 3  # the latest errors shown on the card; the account page shows more
PAGE_ERRORS: Final = 100


def visible_to(identity: WebIdentity) -> Any:
    """Accounts the integrations page shows: own, shared ones naming them, shared for admins."""
    named = select(MailboxViewer.account_id).where(MailboxViewer.staff_id == identity.staff_id)
    mine = MailboxAccount.staff_id == identity.staff_id
    shown = mine | MailboxAccount.id.in_(named)
    if identity.admin:
        shown = shown | MailboxAccount.shared.is_(True)
    return (MailboxAccount.tenant_id == identity.tenant_id) & shown


def may_act(identity: WebIdentity, account: MailboxAccount) -> bool:
    """Whether the session may sync, re-connect or disconnect ``account`` from its own pages."""
    if account.tenant_id != identity.tenant_id:
        return False
    if account.shared:
        return identity.admin
    return account.staff_id == identity.staff_id


def visible_account(session: Session, identity: WebIdentity, account_id: int) -> MailboxAccount:
    """One account the session may see; anything else (another tenant's too) is not found."""
    account = session.scalars(
        select(MailboxAccount).where(MailboxAccount.id == account_id, visible_to(identity))
    ).one_or_none()
    if account is None:
        raise NotFoundError(f"no mailbox account {account_id}")
    return account


def _time(value: str | datetime | None) -> str:
    return when(value) or "never"


def in_words(row: dict[str, Any]) -> dict[str, Any]:
    """An ``account_dicts`` row with what the page says of it: status, times, kind, mode."""
    status = AccountStatus(row["status"])
    label, meaning = STATUS_WORDS[status]
    retry = when(row["retry_at"])
    if status is AccountStatus.ERROR and retry:
        meaning = f"{meaning}; next try {retry}"
    elif status is AccountStatus.PENDING and retry:
        meaning = f"{meaning}; next pass {retry}"
    return row | {
        "status_label": label,
        "status_meaning": meaning,
        "status_since": _time(row["status_changed_at"]),
        "last_sync_text": _time(row["last_sync"]),
        "kind_text": KIND_WORDS.get(row["kind"], row["kind"]),
        "mode_text": MODE_WORDS.get(row["mode"], row["mode"]),
        "since_text": _time(row["since"]),
        "oauth": row["kind"] != "imap",
    }


def errors_in_words(session: Session, account: MailboxAccount, limit: int) -> list[dict[str, Any]]:
    """The account's error log, newest first, with times as the pages show them."""
    return [
        row | {"at_text": _time(row["at"])}
        for row in mailaccounts.account_errors(session, account, limit=limit)
    ]


def described(
    session: Session, accounts: list[MailboxAccount], identity: WebIdentity, errors: int
) -> list[dict[str, Any]]:
    """Accounts in words, each with its latest ``errors`` log rows and whether one may act."""
    by_id = {account.id: account for account in accounts}
    rows = []
    for row in mailaccounts.account_dicts(session, accounts):
        account = by_id[row["id"]]
        rows.append(
            in_words(row)
            | {
                "recent_errors": errors_in_words(session, account, errors) if errors else [],
                "may_act": may_act(identity, account),
            }
        )
    return rows


def mailbox_card(session: Session, identity: WebIdentity) -> list[dict[str, Any]]:
    """The integrations page's mailbox card: own accounts first, then the shared ones."""
    accounts = list(
        session.scalars(
            select(MailboxAccount)
            .where(visible_to(identity))
            .order_by(MailboxAccount.shared, MailboxAccount.id)
        )
    )
    return described(session, accounts, identity, CARD_ERRORS)
