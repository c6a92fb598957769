"""`mailledger account …` in-process against a real Dovecot: add, list, show, errors, test,
sync, reconnect, and remove keeping or removing what the account brought in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store.blobs import BlobStore
from mailledger.store.models import MailboxAccount, ReceivedMessage, Staff, utcnow
from mailledger.store.secretbox import SecretBox
from mailledger.testing.cli import InProcessCli as Cli
from mailledger.testing.dovecot import Dovecot, running_dovecot
from mailledger.testing.mail import make_email, store_received
from mailledger.testing.syncing import activity_count, process_received, sources_by_activity

USER = "richard.smith@mail.test.example"
PASSWORD = "correct horse battery"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    for server in running_dovecot():
        server.add_user(USER, PASSWORD)
        yield server


def _password_file(tmp_path: Path, password: str, name: str = "password") -> str:
    path = tmp_path / name
    path.write_text(password + "\n", encoding="utf-8")
    return str(path)


def _add(cli: Cli, dovecot: Dovecot, password_file: str, *more: str) -> int:
    out = cli(
        "account", "add", "acme", "richard", "--imap", f"{dovecot.host}:{dovecot.port}",
        "--security", "none", "--login", USER, "--password-file", password_file,
        "--since", "1m", *more,
    )  # fmt: skip
    return int(out.strip())


def test_add_list_show_and_what_is_refused(
    cli: Cli, sessions: sessionmaker[Session], settings: Settings, tmp_path: Path
) -> None:
    """The id is printed; list and show say everything but the password, which is sealed."""
    secret = _password_file(tmp_path, "s3cret app password")
    out = cli(
        "account", "add", "acme", "richard", "--imap", "imap.acme.example",
        "--login", "richard@acme.example", "--password-file", secret, "--since", "3m",
        "--folder", "Projects", "Clients/2026",
    )  # fmt: skip
    account_id = int(out.strip())
    listed = json.loads(cli("account", "list", "--tenant", "acme", "--json"))
    assert [(a["id"], a["staff"], a["kind"], a["mode"], a["status"]) for a in listed] == [
        (account_id, "richard", "imap", "sweep", "pending")
    ]
    account = listed[0]
    assert (account["host"], account["port"], account["security"]) == (
        "imap.acme.example",
        993,
        "tls",
    )
    assert account["folders"] == ["Projects", "Clients/2026"]
    table = cli("account", "list")
    assert "richard@acme.example" in table
    shown = cli("account", "show", str(account_id))
    assert "pending" in shown
    assert "recent_errors:" in shown
    assert cli("account", "errors", str(account_id)).strip() == "no errors"
    for output in (json.dumps(listed), table, shown):
        assert "s3cret" not in output
    with sessions() as session:
        stored = session.get_one(MailboxAccount, account_id)
        assert stored.secret.startswith("fernet:")
        assert "s3cret" not in stored.secret
        box = SecretBox.from_file(settings.secrets.key_file)
        assert box.open(stored.secret) == "s3cret app password"

    refusals = [
        (["--imap", "imap.acme.example", "--folder", "Trash"], "never synced"),
        (["--imap", "imap.acme.example", "--visible-to", "richard"], "add --shared"),
        (["--imap", "imap.acme.example:99999"], "port must be a number"),
        (["--imap", "bad host!"], "not an IMAP server name"),
        (["--imap", "imap.acme.example"], "already account"),
    ]
    for extra, words in refusals:
        cli(
            "account", "add", "acme", "richard", "--login", "richard@acme.example",
            "--password-file", secret, *extra, expect=1,
        )  # fmt: skip
        assert words in cli.err, (extra, cli.err)
    cli("account", "add", "acme", "nobody", "--imap", "h.example", "--login", "x",
        "--password-file", secret, expect=1)  # fmt: skip
    assert "no staff member 'nobody'" in cli.err
    cli("account", "add", "acme", "richard", "--imap", "h.example", "--login", "x",
        "--password-file", str(tmp_path / "missing"), expect=1)  # fmt: skip
    assert "--password-file" in cli.err
    cli("account", "add", "acme", "richard", "--imap", "h.example", "--login", "x", expect=2)
    assert "--password-file FILE, or --oauth" in cli.err
    with pytest.raises(SystemExit) as usage:
        cli("account", "add", "acme", "richard", "--imap", "h.example", "--login", "x",
            "--password-file", secret, "--since", "2y")  # fmt: skip
    assert usage.value.code == 2
    cli("account", "show", "999", expect=1)
    assert "no mailbox account 999" in cli.err
    cli("account", "remove", str(account_id), expect=2)
    assert "--keep-history" in cli.err


def test_test_sync_and_reconnect_against_dovecot(
    cli: Cli, dovecot: Dovecot, tmp_path: Path
) -> None:
    """test lists the folders; a wrong password is said in words and waits for reconnect."""
    dovecot.append(USER, "INBOX", [make_email(subject="Spring order")])
    account_id = _add(cli, dovecot, _password_file(tmp_path, "wrong"))

    cli("account", "test", str(account_id), expect=1)
    assert f"refused the login {USER}" in cli.err
    assert "fix: re-connect the account with the current password" in cli.err
    out = cli("account", "sync", str(account_id), expect=1)
    assert "reconnect, 0 message(s) fetched" in out
    assert "what: " in out
    cli("account", "sync", str(account_id), expect=1)
    assert "needs re-connecting first" in cli.err
    errors = json.loads(cli("account", "errors", str(account_id), "--json"))
    assert [e["status"] for e in errors] == ["reconnect"]
    assert errors[0]["fix"]

    cli("account", "reconnect", str(account_id), expect=2)
    assert "--password-file" in cli.err
    out = cli(
        "account",
        "reconnect",
        str(account_id),
        "--password-file",
        _password_file(tmp_path, PASSWORD),
    )
    assert "re-connected" in out
    out = cli("account", "test", str(account_id))
    assert f"logged in to {dovecot.host} as {USER}" in out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert lines["INBOX"].rstrip().endswith("inbox")
    assert lines["Sent"].rstrip().endswith("sent")
    assert "never" in lines["Trash"]
    assert "never (trash, junk, drafts" in lines["Drafts"]
    out = cli("account", "sync", str(account_id))
    assert "enabled, 1 message(s) fetched" in out
    listed = json.loads(cli("account", "list", "--json"))
    assert (listed[0]["status"], listed[0]["messages_synced"]) == ("enabled", 1)


def test_remove_keeps_or_removes_what_the_account_brought_in(
    *,
    cli: Cli,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
    tmp_path: Path,
) -> None:
    """--remove-history deletes what only the account brought in; an email that was also
    forwarded stays, losing only the sync source. --keep-history keeps everything."""
    trusting = settings.model_copy(
        update={"verify": settings.verify.model_copy(update={"demo_trust_loopback": True})}
    )
    both = make_email(subject="Forwarded and synced", message_id="both@client.example")
    store_received(sessions, blobs, both, [demo.user_capture])
    process_received(sessions, blobs, trusting)
    dovecot.append(USER, "INBOX", [both, make_email(subject="Only synced")])
    password = _password_file(tmp_path, PASSWORD)
    account_id = _add(cli, dovecot, password)
    cli("account", "sync", str(account_id))
    process_received(sessions, blobs, settings)
    assert activity_count(sessions) == 2
    assert sorted(sources_by_activity(sessions).values()) == [["sync"], ["user", "sync"]]

    report = json.loads(cli("account", "remove", str(account_id), "--remove-history", "--json"))
    assert report[0]["activities_deleted"] == 1
    assert report[0]["activities_trimmed"] == 1
    assert activity_count(sessions) == 1
    assert list(sources_by_activity(sessions).values()) == [["user"]]
    with sessions() as session:
        assert session.scalar(select(func.count(MailboxAccount.id))) == 0
        assert (
            session.scalar(
                select(func.count(ReceivedMessage.id)).where(
                    ReceivedMessage.mailbox_account_id.is_not(None)
                )
            )
            == 0
        )

    # Connected again and removed keeping history: every activity stays.
    again = _add(cli, dovecot, password)
    cli("account", "sync", str(again))
    process_received(sessions, blobs, settings)
    kept_before = activity_count(sessions)
    assert kept_before == 2
    with sessions() as session:
        messages_before = session.scalar(select(func.count(ReceivedMessage.id)))
        assert (
            session.scalar(
                select(func.count(ReceivedMessage.id)).where(
                    ReceivedMessage.mailbox_account_id == again
                )
            )
            == 2
        )
    out = cli("account", "remove", str(again), "--keep-history")
    assert "history kept: 2 activity(ies) stay" in out
    assert activity_count(sessions) == kept_before
    with sessions() as session:
        assert session.scalar(select(func.count(Staff.id))) == 1
        assert session.scalar(select(func.count(ReceivedMessage.id))) == messages_before
        assert (
            session.scalar(
                select(func.count(ReceivedMessage.id)).where(
                    ReceivedMessage.mailbox_account_id.is_not(None)
                )
            )
            == 0
        )


def test_sync_by_hand_waits_for_the_servers_own_pass(
    cli: Cli, dovecot: Dovecot, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """While a node holds the account's lease, `account sync` refuses instead of racing it."""
    dovecot.append(USER, "INBOX", [make_email(subject="Spring order")])
    account_id = _add(cli, dovecot, _password_file(tmp_path, PASSWORD))
    with sessions.begin() as session:
        account = session.get_one(MailboxAccount, account_id)
        account.claimed_by = "mx2"
        account.claim_expires_at = utcnow() + timedelta(minutes=5)
    cli("account", "sync", str(account_id), expect=1)
    assert "being synced by mx2" in cli.err
    with sessions() as session:
        assert session.get_one(MailboxAccount, account_id).messages_synced == 0

    with sessions.begin() as session:
        session.get_one(MailboxAccount, account_id).claim_expires_at = utcnow()
    assert "enabled, 1 message(s) fetched" in cli("account", "sync", str(account_id))
    with sessions() as session:
        assert session.get_one(MailboxAccount, account_id).claimed_by is None
