"""The mail that tells a staff member (and admins, for a shared account) their mailbox needs them.

Sent when an account settles in ``reconnect`` (its sign-in no longer works) or
``connection`` (failing for two days, no longer tried): the statuses nothing but a person
fixes. Once per status: ``mailed_status`` is set in the transaction that queues the mail
(``domains.systemmail``), after the pass that changed the status has committed, so a failed
queueing is tried again by the next call and a second node never mails twice. Re-connecting
clears it, so the next time the account needs them they hear of it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.domains.systemmail import queue_system_mail
from mailledger.logs import get_logger
from mailledger.store.blobbackend import BlobBackend
from mailledger.store.engine import reading
from mailledger.store.mailaccounts import PROVIDER_NAMES
from mailledger.store.models import AccountKind, AccountStatus, MailboxAccount, MailboxError, Staff
from mailledger.sync.statuses import NEEDS_PEOPLE

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Notice:
    """One mail owed: for which account and status, to whom, and what it says."""

    account_id: int
    tenant_id: int
    status: str
    recipients: tuple[tuple[int, str], ...]
    subject: str
    body: str


def owed(session: Session, public_url: str) -> list[Notice]:
    """The mails owed now: accounts needing a person that were not yet mailed about it."""
    accounts = session.scalars(
        select(MailboxAccount).where(
            MailboxAccount.status.in_(NEEDS_PEOPLE),
            MailboxAccount.mailed_status != MailboxAccount.status,
        )
    ).all()
    notices = []
    for account in accounts:
        owner = session.get_one(Staff, account.staff_id)
        people = [owner]
        if account.shared:
            people += session.scalars(
                select(Staff).where(Staff.tenant_id == account.tenant_id, Staff.admin.is_(True))
            ).all()
        recipients = tuple(
            dict.fromkeys(
                (s.id, s.primary_address)
                for s in people
                if s.removed_at is None and s.disabled_at is None and s.primary_address
            )
        )
        latest = session.scalars(
            select(MailboxError)
            .where(MailboxError.account_id == account.id)
            .order_by(MailboxError.id.desc())
            .limit(1)
        ).first()
        subject, body = _words(account, owner, latest, public_url)
        notices.append(
            Notice(account.id, account.tenant_id, account.status.value, recipients, subject, body)
        )
    return notices


def _words(
    account: MailboxAccount, owner: Staff, latest: MailboxError | None, public_url: str
) -> tuple[str, str]:
    what = latest.what if latest is not None else account.last_error
    fix = latest.fix if latest is not None else ""
    whose = f"the shared mailbox {account.login}" if account.shared else f"{account.login}"
    page = f"{public_url.rstrip('/')}/integrations"
    if account.status is AccountStatus.RECONNECT:
        how = (
            f"sign in again with {PROVIDER_NAMES[account.kind]}"
            if account.kind is not AccountKind.IMAP
            else "enter the mailbox's current password (or an app password)"
        )
        subject = f"Mailbox {account.login} needs re-connecting"
        opening = (
            f"mailledger stopped syncing {whose} because its sign-in no longer works, and will\n"
            f"not try again until it is re-connected (more tries with a refused password only\n"
            f"get a mailbox locked)."
        )
    else:
        how = "check the server settings, then ask for a new pass"
        subject = f"Mailbox {account.login} stopped syncing"
        opening = (
            f"mailledger could not sync {whose} for two days and stopped trying. Mail that\n"
            f"arrived meanwhile is still in the mailbox and is fetched once the account works."
        )
    body = (
        f"{opening}\n\n"
        f"  account:     {account.id} ({account.login} on {account.host})\n"
        f"  owner:       {owner.username}\n"
        f"  what:        {what}\n"
        f"  how to fix:  {fix or how}\n\n"
        f"To put it right, {how}:\n"
        f"  on the integrations page: {page}\n"
        f"  or ask your administrator to run `mailledger account reconnect {account.id}`\n\n"
        f"You get this mail once each time the account needs you.\n"
    )
    return subject, body


async def mail_notices(
    sessions: sessionmaker[Session],
    resolver: Resolver,
    blobs: BlobBackend,
    settings: Settings,
) -> int:
    """Queue every mail owed now; how many mails were queued."""

    def find() -> list[Notice]:
        with reading(sessions) as session:
            return owed(session, settings.http.public_url)

    queued = 0
    for notice in await asyncio.to_thread(find):

        def claim(session: Session, notice: Notice = notice) -> bool:
            account = session.get(MailboxAccount, notice.account_id)
            if account is None or account.status.value != notice.status:
                return False
            if account.mailed_status == notice.status:
                return False
            account.mailed_status = notice.status
            return True

        sent = await queue_system_mail(
            sessions,
            resolver,
            blobs,
            settings,
            tenant_id=notice.tenant_id,
            recipients=notice.recipients,
            subject=notice.subject,
            body=notice.body,
            claim=claim,
        )
        if not notice.recipients:
            # Nobody to tell (the owner left): mark it told, or it is looked at forever.
            await asyncio.to_thread(_mark, sessions, claim)
        queued += sent
        log.info("mailbox account notice queued", account_id=notice.account_id, mails=sent)
    return queued


def _mark(sessions: sessionmaker[Session], claim: Callable[[Session], bool]) -> None:
    with sessions.begin() as session:
        claim(session)
