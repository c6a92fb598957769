"""Forged Authentication-Results in a synced mailbox never become a trusted verdict.

A plain IMAP server (here Debian's Dovecot, which stamps no Authentication-Results) leaves in
place whatever the sender wrote. The messages are APPENDed to a real mailbox, fetched by the
real sync engine and processed by the real capture worker; only the account's configured
authserv-id on top of the header section is read (``account add --authserv-id``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.cli.main import main
from mailledger.config import Settings
from mailledger.store.blobs import BlobStore
from mailledger.store.models import Activity, MailboxAccount, Tenant
from mailledger.testing.api import bearer, make_token, running_api
from mailledger.testing.cli import InProcessCli as Cli
from mailledger.testing.dovecot import Dovecot, running_dovecot
from mailledger.testing.mail import make_email
from mailledger.testing.syncing import add_account, process_received, syncer

USER = "richard.smith@mail.test.example"
PASSWORD = "correct horse battery"
OWN_ID = "mail.test.example"
FORGED = (
    b"Authentication-Results: mx.google.com;\r\n"
    b" dkim=pass header.d=client.example header.s=s1;\r\n"
    b" spf=pass smtp.mailfrom=carol@client.example;\r\n"
    b" dmarc=pass header.from=client.example\r\n"
)
OWN_FAIL = (
    b"Authentication-Results: mail.test.example; spf=fail smtp.mailfrom=carol@client.example;\r\n"
    b" dmarc=fail header.from=client.example\r\n"
)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    """Dovecot with Richard's mailbox."""
    for server in running_dovecot():
        server.add_user(USER, PASSWORD)
        yield server


def _activity(sessions: sessionmaker[Session]) -> Activity:
    with sessions() as session:
        (activity,) = session.scalars(select(Activity)).all()
        return activity


def _sync_and_process(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    dovecot: Dovecot,
    id_: int,
) -> None:
    result = syncer(sessions, blobs, settings, dovecot).run(id_)
    assert result.problem is None, result.problem
    assert process_received(sessions, blobs, settings) == 1


def test_a_forged_provider_verdict_in_a_dovecot_mailbox_is_recorded_as_none(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """An outsider's "mx.google.com: dkim=pass" is recorded, but with every verdict none."""
    dovecot.append(USER, "INBOX", [FORGED + make_email(subject="Pay this invoice")])
    account_id = add_account(sessions, settings, dovecot, USER)
    _sync_and_process(sessions, blobs, settings, dovecot, account_id)

    auth = _activity(sessions).auth
    assert auth["trust"] == "mailbox"
    assert (auth["spf"], auth["dkim"], auth["dmarc"], auth["arc"]) == ("none",) * 4
    assert auth["original"]["result"] == "none"
    assert "--authserv-id" in auth["original"]["detail"]
    assert "gateway" not in auth


def test_a_configured_id_reads_only_its_own_header_on_top(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """The server's own failing verdict on top stands over the sender's forged pass below."""
    dovecot.append(USER, "INBOX", [OWN_FAIL + FORGED + make_email(subject="Pay this invoice")])
    account_id = add_account(sessions, settings, dovecot, USER, authserv_id=OWN_ID)
    _sync_and_process(sessions, blobs, settings, dovecot, account_id)

    auth = _activity(sessions).auth
    assert (auth["spf"], auth["dmarc"], auth["dkim"]) == ("fail", "fail", "none")
    assert auth["gateway"] == OWN_ID
    assert auth["original"]["result"] == "fail"


def test_a_configured_id_with_a_forged_header_on_top_is_none(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
) -> None:
    """The server stamped nothing; a forged header claiming its id lower down is not looked for."""
    forged_own = OWN_FAIL.replace(b"=fail", b"=pass")
    dovecot.append(USER, "INBOX", [FORGED + forged_own + make_email(subject="Pay this invoice")])
    account_id = add_account(sessions, settings, dovecot, USER, authserv_id=OWN_ID)
    _sync_and_process(sessions, blobs, settings, dovecot, account_id)

    auth = _activity(sessions).auth
    assert (auth["spf"], auth["dkim"], auth["dmarc"]) == ("none",) * 3
    assert OWN_ID in auth["original"]["detail"]


def test_account_add_and_set_authserv_id(
    cli: Cli, sessions: sessionmaker[Session], dovecot: Dovecot, tmp_path: Path
) -> None:
    """`--authserv-id` is stored, shown, changed and cleared; bad ids and OAuth are refused."""
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n", encoding="utf-8")
    add = (
        "account", "add", "acme", "richard", "--imap", f"{dovecot.host}:{dovecot.port}",
        "--security", "none", "--login", USER, "--password-file", str(password),
    )  # fmt: skip
    cli(*add, "--authserv-id", "mail.test.example; dkim=pass", expect=1)
    assert "--authserv-id" in cli.err
    account_id = int(cli(*add, "--authserv-id", "Mail.Test.Example").strip())
    (shown,) = json.loads(cli("account", "show", str(account_id), "--json"))
    assert shown["authserv_id"] == "mail.test.example"

    changed = cli("account", "set", str(account_id), "--authserv-id", "mx.acme.example")
    assert "mx.acme.example" in changed
    assert "not trusted" in cli("account", "set", str(account_id), "--authserv-id", "")
    with sessions() as session:
        assert session.get_one(MailboxAccount, account_id).authserv_id == ""
    cli("account", "set", str(account_id), "--authserv-id", "two words", expect=1)
    assert "--authserv-id" in cli.err
    with pytest.raises(SystemExit) as usage:
        main(["account", "set", str(account_id)])
    assert usage.value.code == 2


def test_account_add_without_an_id_says_what_its_mail_gets(
    cli: Cli, dovecot: Dovecot, tmp_path: Path
) -> None:
    """A plain IMAP account added without --authserv-id is told, on stderr, what to set."""
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n", encoding="utf-8")
    out = cli(
        "account", "add", "acme", "richard", "--imap", f"{dovecot.host}:{dovecot.port}",
        "--security", "none", "--login", USER, "--password-file", str(password),
    )  # fmt: skip
    assert out.strip().isdigit()
    assert "not trusted to report the sender's checks" in cli.err
    assert "--authserv-id" in cli.err


async def test_the_api_takes_and_shows_the_authserv_id(
    settings: Settings, sessions: sessionmaker[Session], demo: DemoAddresses
) -> None:
    """POST /v1/accounts stores ``authserv_id`` lowercase; a malformed one is a 422 naming it."""
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        token = make_token(session, acme)
    body = {
        "staff": "richard",
        "login": "richard@acme.example",
        "imap": "127.0.0.1:9",  # nothing listens: the server's sync worker fails fast
        "password": "app-password-1",
        "security": "none",
    }
    async with (
        running_api(settings) as api,
        httpx.AsyncClient(base_url=api.base_url, timeout=20, headers=bearer(token)) as client,
    ):
        bad = await client.post("/v1/accounts", json=body | {"authserv_id": "a; b=c"})
        assert (bad.status_code, bad.json()["field"]) == (422, "authserv_id")
        created = await client.post(
            "/v1/accounts", json=body | {"authserv_id": "Mail.Acme.Example"}
        )
        assert created.status_code == 201, created.text
        assert created.json()["authserv_id"] == "mail.acme.example"
        shown = await client.get(f"/v1/accounts/{created.json()['id']}")
        assert shown.json()["authserv_id"] == "mail.acme.example"
