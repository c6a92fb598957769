"""The outbound queue's rules without a network: enqueue, claims and leases, DSNs, the CLI."""

from __future__ import annotations

import email
import email.policy
import json
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.main import main
from mailledger.config import Settings
from mailledger.relay.dsn import FailedRecipient, build_dsn, enhanced_status
from mailledger.store import outbox
from mailledger.store.blobs import BlobStore
from mailledger.store.models import OutboundKind, OutboundMessage, OutboundState, utcnow
from mailledger.testing.mail import make_email

RAW = make_email(sender="Richard <richard@acme.example>", to="Bob <bob@example.net>")


def queue(
    sessions: sessionmaker[Session], blobs: BlobStore, rcpts: list[str], raw: bytes = RAW
) -> list[OutboundMessage]:
    with sessions.begin() as session:
        return outbox.enqueue(
            session,
            blobs,
            raw=raw,
            mail_from="richard@acme.example",
            rcpt_to=rcpts,
            kind=OutboundKind.RELAY,
        )


# --- enqueue ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "what"),
    [
        (b"Subject: x\r\n\r\nbare\nLF\r\n", "bare LF"),
        (b"Subject: x\r\n\r\nbare\rCR\r\n", "bare CR"),
        (b"Subject: x\n\nunix\n", "bare LF"),
        (b"Subject: x\r\n\r\nnul\x00\r\n", "NUL"),
        (b"Subject: x\r\n\r\nends in CR\r", "bare CR"),
    ],
)
def test_enqueue_refuses_bare_line_ends_and_nul(
    sessions: sessionmaker[Session], blobs: BlobStore, raw: bytes, what: str
) -> None:
    """Nothing with a bare CR or LF (or a NUL) can enter the outbound queue."""
    with pytest.raises(ValueError, match=what):
        queue(sessions, blobs, ["bob@example.net"], raw)
    with sessions() as session:
        assert session.scalars(select(OutboundMessage)).first() is None


def test_enqueue_splits_by_domain_and_stores_bytes_once(
    sessions: sessionmaker[Session], blobs: BlobStore
) -> None:
    """One row per recipient domain (case-insensitive), one queue id, one blob."""
    rows = queue(
        sessions,
        blobs,
        ["bob@example.net", "eve@other.example", "Carol@EXAMPLE.net", "bob@example.net"],
    )
    assert [(r.domain, r.rcpt_to) for r in rows] == [
        ("example.net", ["bob@example.net", "Carol@EXAMPLE.net"]),
        ("other.example", ["eve@other.example"]),
    ]
    assert len({r.queue_id for r in rows}) == 1
    assert len({r.blob for r in rows}) == 1
    assert blobs.get(rows[0].blob) == RAW
    assert all(r.state is OutboundState.QUEUED and r.attempts == 0 for r in rows)


def test_enqueue_adds_a_final_crlf_and_holds(
    sessions: sessionmaker[Session], blobs: BlobStore
) -> None:
    """A message without a final CRLF gets one (SMTP needs it); ``held`` rows are not due."""
    with sessions.begin() as session:
        (row,) = outbox.enqueue(
            session,
            blobs,
            raw=b"Subject: x\r\n\r\nno final line end",
            mail_from="richard@acme.example",
            rcpt_to=["bob@example.net"],
            kind=OutboundKind.RELAY,
            held=True,
        )
    assert blobs.get(row.blob).endswith(b"no final line end\r\n")
    assert row.state is OutboundState.HELD
    with sessions.begin() as session:
        assert outbox.claim_due(session, owner="a", lease_seconds=60, slots=10) == []


@pytest.mark.parametrize("bad", ["no-at-sign", "@example.net", "a b@example.net", "x@"])
def test_enqueue_refuses_bad_recipients(
    sessions: sessionmaker[Session], blobs: BlobStore, bad: str
) -> None:
    """A recipient that is not an address is refused before anything is stored."""
    with pytest.raises(ValueError, match="recipient"):
        queue(sessions, blobs, [bad])


# --- claims -------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_claims_take_due_rows_once_and_recover_stale_leases(
    sessions: sessionmaker[Session], blobs: BlobStore
) -> None:
    """A claimed row is not claimed again until its lease lapses; then another owner takes it."""
    queue(sessions, blobs, ["bob@example.net"])
    with sessions.begin() as session:
        (claim,) = outbox.claim_due(session, owner="a", lease_seconds=60, slots=5)
    assert claim.attempts == 1 and claim.pending == ("bob@example.net",)
    with sessions.begin() as session:
        assert outbox.claim_due(session, owner="b", lease_seconds=60, slots=5) == []
    later = utcnow() + timedelta(seconds=61)
    with sessions.begin() as session:
        (again,) = outbox.claim_due(session, owner="b", lease_seconds=60, slots=5, now=later)
    assert again.id == claim.id and again.attempts == 2
    with sessions.begin() as session:
        # The old owner lost the row: its release and renewal touch nothing.
        assert outbox.release(session, [claim.id], owner="a") == 0
        assert outbox.renew(session, [claim.id], owner="a", lease_seconds=60) == 0
        assert outbox.release(session, [claim.id], owner="b") == 1


@pytest.mark.postgres
def test_concurrent_claims_never_share_a_row(
    sessions: sessionmaker[Session], blobs: BlobStore
) -> None:
    """Eight claimers at once (SKIP LOCKED on PostgreSQL) split forty rows without overlap."""
    for n in range(40):
        queue(sessions, blobs, [f"u{n}@d{n}.example"])
    taken: list[list[int]] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claimer(name: str) -> None:
        start.wait()
        mine: list[int] = []
        while True:
            with sessions.begin() as session:
                claims = outbox.claim_due(session, owner=name, lease_seconds=60, slots=3)
            if not claims:
                break
            mine.extend(c.id for c in claims)
        with lock:
            taken.append(mine)

    threads = [threading.Thread(target=claimer, args=(f"n{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [row_id for mine in taken for row_id in mine]
    assert sorted(every) == sorted(set(every))
    assert len(every) == 40


def test_claims_respect_the_per_domain_limit(
    sessions: sessionmaker[Session], blobs: BlobStore
) -> None:
    """Rows of a domain already at its limit are skipped, other domains' rows are taken."""
    for _ in range(3):
        queue(sessions, blobs, ["bob@busy.example"])
    queue(sessions, blobs, ["eve@quiet.example"])
    with sessions.begin() as session:
        claims = outbox.claim_due(
            session,
            owner="a",
            lease_seconds=60,
            slots=10,
            busy={"busy.example": 1},
            max_per_domain=2,
        )
    assert sorted(c.domain for c in claims) == ["busy.example", "quiet.example"]


def test_retry_now_and_delete(sessions: sessionmaker[Session], blobs: BlobStore) -> None:
    """retry makes a waiting row due; delete removes its rows and then its unshared bytes."""
    rows = queue(sessions, blobs, ["bob@example.net", "eve@other.example"])
    queue_id = rows[0].queue_id
    with sessions.begin() as session:
        for row in session.scalars(select(OutboundMessage)):
            row.retry_after = utcnow() + timedelta(hours=1)
    with sessions.begin() as session:
        assert outbox.claim_due(session, owner="a", lease_seconds=60, slots=5) == []
        assert len(outbox.retry_now(session, queue_id.lower())) == 2
    with sessions.begin() as session:
        assert len(outbox.claim_due(session, owner="a", lease_seconds=60, slots=5)) == 2
    other = queue(sessions, blobs, ["x@example.net"])  # the same bytes, queued again
    with sessions.begin() as session:
        removed, blob_gone = outbox.delete(session, blobs, queue_id)
    assert len(removed) == 2 and not blob_gone  # still referenced by the other message
    with sessions.begin() as session:
        _, blob_gone = outbox.delete(session, blobs, str(other[0].id))
    assert blob_gone
    assert not blobs.path(rows[0].blob).exists()
    with sessions.begin() as session, pytest.raises(outbox.OutboxError):
        outbox.find_rows(session, queue_id)


# --- DSN ----------------------------------------------------------------------------------------


def test_dsn_structure() -> None:
    """A DSN is multipart/report with the RFC 3464 fields and the original headers, CRLF only."""
    arrival = utcnow()
    data = build_dsn(
        hostname="relay.example",
        sender="richard@acme.example",
        original=RAW,
        recipients=[
            FailedRecipient(
                "bob@example.net",
                550,
                "5.1.1 no such\nuser",
                remote_mta="mx1.example.net",
                last_attempt=arrival,
            ),
            FailedRecipient("eve@example.net", 451, "temporary trouble"),
        ],
        arrival=arrival,
    )
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    report = email.message_from_bytes(data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    human, status, headers = report.iter_parts()
    assert human.get_content_type() == "text/plain"
    groups = [dict(block.items()) for block in status.get_payload()]
    assert groups[0]["Reporting-MTA"] == "dns; relay.example"
    assert groups[1]["Status"] == "5.1.1"
    assert groups[1]["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert groups[2]["Status"] == "4.0.0"
    assert "Remote-MTA" not in groups[2]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert RAW.split(b"\r\n\r\n", 1)[0] in data


@pytest.mark.parametrize(
    ("code", "text", "status"),
    [
        (550, "5.1.1 user unknown", "5.1.1"),
        (550, "4.1.1 class does not match the code", "5.0.0"),
        (452, "4.2.2 mailbox full", "4.2.2"),
        (554, "no enhanced code", "5.0.0"),
    ],
)
def test_enhanced_status(code: int, text: str, status: str) -> None:
    """The Status field comes from the reply's enhanced code only when its class matches."""
    assert enhanced_status(code, text) == status


# --- CLI ----------------------------------------------------------------------------------------


def test_queue_commands(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """queue list/show/retry/delete through the real command line, text and JSON."""
    config = Path(settings.storage.blob_dir).parent / "cli.toml"
    config.write_text(
        f'[database]\nurl = "{settings.database.url}"\n'
        f'[storage]\nblob_dir = "{settings.storage.blob_dir}"\n',
        encoding="utf-8",
    )
    rows = queue(sessions, blobs, ["bob@example.net"])
    row_id, queue_id = rows[0].id, rows[0].queue_id

    assert main(["--config", str(config), "queue", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["queue_id"] == queue_id and listed["state"] == "queued"
    assert listed["results"] == [
        {
            "rcpt": "bob@example.net",
            "status": "pending",
            "code": None,
            "reply": "",
            "at": None,
            "attempt": None,
        }
    ]

    assert main(["--config", str(config), "queue", "list"]) == 0
    assert queue_id in capsys.readouterr().out
    assert main(["--config", str(config), "queue", "show", queue_id]) == 0
    assert "bob@example.net" in capsys.readouterr().out
    assert main(["--config", str(config), "queue", "show", str(row_id), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == row_id
    assert main(["--config", str(config), "queue", "retry", queue_id]) == 0
    assert "due now" in capsys.readouterr().out
    assert main(["--config", str(config), "queue", "delete", queue_id]) == 0
    assert "deleted" in capsys.readouterr().out
    assert main(["--config", str(config), "queue", "show", queue_id]) == 1
    assert "no queued message" in capsys.readouterr().err
    assert main(["--config", str(config), "queue", "list"]) == 0
    assert "empty" in capsys.readouterr().out
