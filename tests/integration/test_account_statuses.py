"""Account statuses against a real Dovecot: reconnect without hammering, back-off, two days,
the daily limit, and every settled change announced (webhook event, mail to the people)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.store import directory, webhooks
from mailledger.store.blobs import BlobStore
from mailledger.store.mailaccounts import AccountRequest, add_account, reconnect_password
from mailledger.store.models import (
    AccountStatus,
    MailboxAccount,
    MailboxDailyCount,
    MailboxError,
    OutboundKind,
    OutboundMessage,
    Tenant,
    WebhookEvent,
)
from mailledger.store.secretbox import SecretBox
from mailledger.sync import limits, statuses
from mailledger.sync.notices import mail_notices
from mailledger.sync.problems import SyncProblem
from mailledger.testing.dovecot import Dovecot, running_dovecot
from mailledger.testing.mail import make_email
from mailledger.testing.syncing import syncer

USER = "richard.smith@mail.test.example"
T0 = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    for server in running_dovecot():
        server.add_user(USER, "correct horse")
        yield server


def _add(
    sessions: sessionmaker[Session],
    settings: Settings,
    server: Dovecot | None,
    password: str,
    *,
    shared: bool = False,
) -> int:
    box = SecretBox.from_file(settings.secrets.key_file)
    imap = f"{server.host}:{server.port}" if server else "imap.example.com"
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        webhooks.add_endpoint(session, tenant, "https://crm.example/hooks", [], box=box)
        account = add_account(
            session,
            box,
            AccountRequest(
                tenant=tenant,
                username="richard",
                login=USER,
                imap=imap,
                password=password,
                security="none",
                since="1m",
                shared=shared,
            ),
            now=T0,
        )
        return account.id


def _events(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with sessions() as session:
        bodies = session.scalars(
            select(WebhookEvent.body)
            .where(WebhookEvent.type == webhooks.ACCOUNT_STATUS_CHANGED)
            .order_by(WebhookEvent.id)
        )
        return [
            (json.loads(b)["data"]["previous_status"], json.loads(b)["data"]["status"])
            for b in bodies
        ]


def _refused_logins(server: Dovecot) -> int:
    """Logins Dovecot refused (its login process logs each with "auth failed")."""
    return len(re.findall(r"imap-login: .*auth failed", server.log_text()))


def _mails(sessions: sessionmaker[Session]) -> list[OutboundMessage]:
    with sessions() as session:
        return list(
            session.scalars(
                select(OutboundMessage).where(OutboundMessage.kind == OutboundKind.SYSTEM)
            )
        )


def test_wrong_password_is_reconnect_after_one_try_and_no_more_logins(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """One refused login, then the account waits for a person: never due, never tried."""
    dovecot.append(USER, "INBOX", [make_email(subject="Spring order")])
    account_id = _add(sessions, settings, dovecot, "wrong horse")
    engine = syncer(sessions, blobs, settings, dovecot)

    result = engine.run(account_id)
    assert result.status is AccountStatus.RECONNECT
    assert result.problem is not None
    assert "refused the login" in result.problem.what
    assert _refused_logins(dovecot) == 1

    far = datetime.now(UTC) + timedelta(days=30)
    with sessions() as session:
        assert statuses.due_accounts(session, far, 100) == []
        errors = session.scalars(select(MailboxError)).all()
    assert [(e.status, "current password" in e.fix) for e in errors] == [("reconnect", True)]
    for _ in range(3):  # what the worker's loop does: nothing is due
        with sessions() as session:
            for due in statuses.due_accounts(session, far, 100):
                engine.run(due)
    assert _refused_logins(dovecot) == 1

    # The staff member is mailed once; the CRM hears of each settled change.
    resolver = Resolver(settings.dns)
    assert asyncio.run(mail_notices(sessions, resolver, blobs, settings)) == 1
    assert asyncio.run(mail_notices(sessions, resolver, blobs, settings)) == 0
    mails = _mails(sessions)
    assert [m.rcpt_to for m in mails] == [[demo.staff_address]]
    raw = blobs.get(mails[0].blob).decode()
    assert "needs re-connecting" in raw
    assert f"mailledger account reconnect {account_id}" in raw

    box = SecretBox.from_file(settings.secrets.key_file)
    with sessions.begin() as session:
        account = session.get_one(MailboxAccount, account_id)
        reconnect_password(session, box, account, "correct horse", datetime.now(UTC))
    with sessions() as session:
        assert statuses.due_accounts(session, datetime.now(UTC), 100) == [account_id]
    assert engine.run(account_id).status is AccountStatus.ENABLED
    assert _events(sessions) == [
        ("pending", "reconnect"),
        ("reconnect", "pending"),
        ("pending", "enabled"),
    ]


def test_failures_back_off_honour_hints_and_stop_after_two_days(
    sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings, demo: DemoAddresses
) -> None:
    """error with a growing wait (a server's "try again in N" when longer); two days of
    failures is connection: no longer tried, and the owner (and admins: shared) mailed."""
    with sessions.begin() as session:
        acme = directory.find_tenant(session, "acme")
        directory.add_staff(session, acme, "alice", ["alice@acme.example"])
        directory.set_admin(session, directory.find_staff(session, acme, "alice"), True)
    account_id = _add(sessions, settings, None, "secret", shared=True)
    down = SyncProblem(AccountStatus.ERROR, "imap.example.com did not answer in time", "check")
    slow = replace(down, retry_after_seconds=900.0)

    def fail(problem: SyncProblem, now: datetime) -> MailboxAccount:
        with sessions.begin() as session:
            account = session.get_one(MailboxAccount, account_id)
            statuses.pass_failed(session, account, problem, now)
            session.flush()
            session.expunge(account)
            return account

    def due(now: datetime) -> list[int]:
        with sessions() as session:
            return statuses.due_accounts(session, now, 10)

    first = fail(down, T0)
    assert first.status is AccountStatus.ERROR
    assert first.retry_at == T0 + timedelta(seconds=60)
    assert due(T0 + timedelta(seconds=59)) == []
    assert due(T0 + timedelta(seconds=60)) == [account_id]
    second = fail(down, T0 + timedelta(minutes=1))
    assert second.retry_at == T0 + timedelta(minutes=6)  # 5 minutes after the second
    hinted = fail(slow, T0 + timedelta(minutes=6))
    assert hinted.retry_at == T0 + timedelta(minutes=21)  # 15 minutes: the hint asks as long
    longer = fail(replace(down, retry_after_seconds=7200.0), T0 + timedelta(minutes=21))
    assert longer.retry_at == T0 + timedelta(minutes=21, hours=2)  # the hint beats 30 minutes
    assert hinted.failures == 3
    assert longer.failures == 4
    almost = fail(down, T0 + timedelta(days=2) - timedelta(seconds=1))
    assert almost.status is AccountStatus.ERROR
    gone = fail(down, T0 + timedelta(days=2))
    assert gone.status is AccountStatus.CONNECTION
    assert gone.retry_at is None
    assert due(T0 + timedelta(days=365)) == []
    assert _events(sessions) == [("pending", "error"), ("error", "connection")]

    resolver = Resolver(settings.dns)
    assert asyncio.run(mail_notices(sessions, resolver, blobs, settings)) == 2
    recipients = sorted(r for m in _mails(sessions) for r in m.rcpt_to)
    assert recipients == sorted(["alice@acme.example", demo.staff_address])
    raw = blobs.get(_mails(sessions)[0].blob).decode()
    assert "stopped syncing" in raw
    assert "could not sync the shared mailbox" in raw


def test_a_good_pass_forgets_the_failures(
    sessions: sessionmaker[Session], settings: Settings, demo: DemoAddresses
) -> None:
    account_id = _add(sessions, settings, None, "secret")
    with sessions.begin() as session:
        account = session.get_one(MailboxAccount, account_id)
        statuses.pass_failed(session, account, SyncProblem(AccountStatus.ERROR, "down", "wait"), T0)
        statuses.pass_started(session, account, T0 + timedelta(minutes=2))
        assert account.status.value == "syncing"
        statuses.pass_succeeded(
            session, account, T0 + timedelta(minutes=3), 4, next_pass_at=T0 + timedelta(hours=1)
        )
        assert account.status is AccountStatus.ENABLED
        assert (account.failures, account.failing_since) == (0, None)
        assert account.retry_at == T0 + timedelta(hours=1)
        assert account.messages_synced == 4
    # syncing comes and goes unannounced
    assert _events(sessions) == [("pending", "error"), ("error", "enabled")]


def test_the_daily_limit_counts_per_staff_member_per_utc_day(
    sessions: sessionmaker[Session], settings: Settings, demo: DemoAddresses
) -> None:
    """allowance and count with now= passed in: deferred to the next UTC day, then free."""
    sync = settings.sync.model_copy(update={"daily_limit_per_user": 100})
    account_id = _add(sessions, settings, None, "secret")
    evening = datetime(2026, 3, 10, 23, 30, tzinfo=UTC)
    with sessions.begin() as session:
        account = session.get_one(MailboxAccount, account_id)
        statuses.pass_started(session, account, evening)
        assert limits.allowance(session, account, evening, sync) == 100
        limits.count(session, account, evening, 60)
        limits.count(session, account, evening, 40)
        assert limits.allowance(session, account, evening, sync) == 0
        statuses.pass_succeeded(session, account, evening, 100)
        assert account.status is AccountStatus.PENDING
        assert account.retry_at == datetime(2026, 3, 11, tzinfo=UTC)
    with sessions() as session:
        assert statuses.due_accounts(session, evening + timedelta(minutes=29), 5) == []
        assert statuses.due_accounts(session, datetime(2026, 3, 11, tzinfo=UTC), 5) == [account_id]
        account = session.get_one(MailboxAccount, account_id)
        morning = datetime(2026, 3, 11, 0, 0, 1, tzinfo=UTC)
        assert limits.allowance(session, account, morning, sync) == 100
        unlimited = settings.sync.model_copy(update={"daily_limit_per_user": None})
        assert limits.allowance(session, account, morning, unlimited) is None
        counts = session.execute(select(MailboxDailyCount.day, MailboxDailyCount.count)).all()
    assert [tuple(c) for c in counts] == [("2026-03-10", 100)]


def test_the_daily_limit_defers_the_rest_of_a_mailbox_and_then_catches_up(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """Five messages, a limit of three: three today, the account pending, two the next day,
    none dropped."""
    dovecot.append(USER, "INBOX", [make_email(subject=f"order {n}") for n in range(5)])
    limited = settings.model_copy(
        update={"sync": settings.sync.model_copy(update={"daily_limit_per_user": 3})}
    )
    account_id = _add(sessions, settings, dovecot, "correct horse")
    engine = syncer(sessions, blobs, limited, dovecot)

    first = engine.run(account_id)
    assert first.fetched == 3
    assert first.status is AccountStatus.PENDING
    with sessions() as session:
        account = session.get_one(MailboxAccount, account_id)
        tomorrow = statuses.next_utc_day(datetime.now(UTC))
        assert account.retry_at == tomorrow
        assert statuses.due_accounts(session, datetime.now(UTC), 5) == []
        assert statuses.due_accounts(session, tomorrow, 5) == [account_id]
    assert engine.run(account_id).fetched == 0  # asked early: still over today's limit

    # Midnight passes: today's count becomes yesterday's, and the account is due.
    with sessions.begin() as session:
        for row in session.scalars(select(MailboxDailyCount)):
            row.day = "2000-01-01"
        session.get_one(MailboxAccount, account_id).retry_at = None
    second = engine.run(account_id)
    assert second.fetched == 2
    assert second.status is AccountStatus.ENABLED
    with sessions() as session:
        assert session.get_one(MailboxAccount, account_id).messages_synced == 5


def test_tenant_account_limit(
    sessions: sessionmaker[Session], settings: Settings, demo: DemoAddresses
) -> None:
    box = SecretBox.from_file(settings.secrets.key_file)
    with sessions.begin() as session:
        tenant = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        request = AccountRequest(
            tenant=tenant, username="richard", login="a@acme.example", imap="imap.acme.example",
            password="x",
        )  # fmt: skip
        add_account(session, box, request, now=T0, max_accounts_per_tenant=1)
        with pytest.raises(directory.DirectoryError, match="max_accounts_per_tenant allows"):
            add_account(
                session,
                box,
                replace(request, login="b@acme.example"),
                now=T0,
                max_accounts_per_tenant=1,
            )
