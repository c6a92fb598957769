"""Processing stored messages: matching, policies, dedupe, threads, content, and the trace.

Sender authentication is covered with a real DNS server in test_trust.py; here loopback is
trusted (the demo setting) so each test looks at one processing rule.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture import processor
from mailledger.capture.processor import process_message
from mailledger.capture.worker import Worker
from mailledger.cli.demo import DemoAddresses
from mailledger.config import DNSSettings, Settings, VerifySettings
from mailledger.dnsauth.resolver import Resolver
from mailledger.store import directory
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    Activity,
    ActivitySource,
    Attachment,
    Contact,
    ContactAddress,
    Direction,
    MessageState,
    NeverLog,
    Participant,
    PartyKind,
    ReceivedMessage,
    Tenant,
    TraceEntry,
    utcnow,
)
from mailledger.testing.mail import make_email, store_received
from mailledger.verify.authenticate import Authenticator

# Every processing rule holds on both stores (DESIGN §9).
pytestmark = pytest.mark.postgres

RICHARD = "richard@acme.capture.example"
LOG = "log@acme.capture.example"

Process = Callable[..., ReceivedMessage]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The test settings with loopback trusted, as in the demo."""
    return settings.model_copy(update={"verify": VerifySettings(demo_trust_loopback=True)})


@pytest.fixture
def authenticator(settings: Settings) -> Authenticator:
    """An authenticator that is never asked: loopback trust answers first."""
    unreachable = DNSSettings(nameservers=["127.0.0.1:9"], timeout_seconds=0.2)
    return Authenticator(Resolver(unreachable), settings)


@pytest.fixture
def process(
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    authenticator: Authenticator,
    demo: DemoAddresses,
) -> Process:
    """Store raw bytes for the given capture addresses, process them, return the message."""

    def run(raw: bytes, rcpts: list[str] | None = None, mail_from: str = "x@client.example"):
        message_id = store_received(sessions, blobs, raw, rcpts or [RICHARD], mail_from=mail_from)
        with sessions.begin() as session:
            message = session.get_one(ReceivedMessage, message_id)
            process_message(session, blobs, message, settings, authenticator)
        with sessions() as session:
            message = session.get_one(ReceivedMessage, message_id)
            _ = message.routes, message.trace
            return message

    return run


def _add_colleague(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        tenant = directory.find_tenant(session, "acme")
        directory.add_staff(session, tenant, "bob", ["bob@acme.example"], name="Bob")


def _activities(sessions: sessionmaker[Session]) -> list[Activity]:
    with sessions() as session:
        rows = list(session.scalars(select(Activity).order_by(Activity.id)))
        for row in rows:
            _ = row.participants, row.sources, row.attachments
        return rows


def test_forward_from_contact_becomes_inbound_activity(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """A client's email forwarded by Richard is recorded on Carol's timeline, traced."""
    message = process(make_email(message_id="m1@client.example"))
    assert message.state is MessageState.PROCESSED, message.reason
    assert message.message_id == "m1@client.example"
    steps = [t.step for t in message.trace]
    assert steps[:5] == ["intake", "parse", "automated", "match", "trust"]
    assert message.trace[-1].decision == "captured"
    [activity] = _activities(sessions)
    assert activity.direction is Direction.INBOUND
    assert activity.subject == "Quote for the spring order"
    assert activity.auth["trust"] == "demo-loopback"
    assert "please send the quote" in activity.text_body
    kinds = {(p.role, p.address, p.kind) for p in activity.participants}
    assert ("from", "carol@client.example", PartyKind.CONTACT) in kinds
    assert ("to", "richard@acme.example", PartyKind.STAFF) in kinds
    with sessions() as session:
        assert (
            activity.staff_id
            == directory.find_staff(session, activity_tenant(session), "richard").id
        )


def activity_tenant(session: Session) -> Tenant:
    """The demo tenant."""
    return directory.find_tenant(session, "acme")


def test_same_email_by_three_paths_is_one_activity_with_three_sources(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """Richard's forward, his BCC to log@, and Bob's forward of the same email merge into one."""
    _add_colleague(sessions)
    raw = make_email(
        sender="Richard Smith <richard@acme.example>",
        to="carol@client.example",
        cc="bob@acme.example",
        message_id="sent-1@acme.example",
    )
    first = process(raw, [RICHARD, LOG], mail_from="richard@acme.example")
    assert first.state is MessageState.PROCESSED, first.reason
    forwarded = b"X-Forwarded-For: bob@acme.example\r\n" + raw
    second = process(forwarded, ["bob@acme.capture.example"], mail_from="bob@acme.example")
    assert second.state is MessageState.PROCESSED, second.reason
    [activity] = _activities(sessions)
    assert activity.direction is Direction.OUTBOUND
    assert len(activity.sources) == 3
    assert {s.kind.value for s in activity.sources} == {"user", "log"}
    assert second.trace[-1].decision == "merged"
    assert {(p.role, p.address) for p in activity.participants} == {
        ("from", "richard@acme.example"),
        ("to", "carol@client.example"),
        ("cc", "bob@acme.example"),
    }


def test_email_without_message_id_merges_on_content_checksum(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """Without a Message-ID the same email is still recognised by its content."""
    raw = make_email(sender="richard@acme.example", to="carol@client.example", message_id="")
    process(raw, [LOG], mail_from="richard@acme.example")
    process(b"Received: from elsewhere\r\n" + raw, [RICHARD], mail_from="richard@acme.example")
    [activity] = _activities(sessions)
    assert activity.dedupe_key.startswith("sum:")
    assert len(activity.sources) == 2


def test_unknown_sender_is_quarantined_with_reason(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """Mail from someone who is not a contact is kept aside, not recorded, not dropped."""
    message = process(make_email(sender="stranger@elsewhere.example"))
    assert message.state is MessageState.QUARANTINED
    assert message.reason.startswith("unknown-sender: stranger@elsewhere.example")
    assert _activities(sessions) == []


def test_unknown_sender_becomes_contact_in_the_one_company_owning_the_domain(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """With the tenant policy on, a new contact joins Client Co, which owns client.example."""
    with sessions.begin() as session:
        activity_tenant(session).create_unknown_contacts = True
    message = process(make_email(sender="Dan New <dan@client.example>"))
    assert message.state is MessageState.PROCESSED, message.reason
    with sessions() as session:
        contact = session.scalars(
            select(Contact)
            .join(ContactAddress)
            .where(ContactAddress.address == "dan@client.example")
        ).one()
        assert contact.name == "Dan New"
        assert contact.company is not None and contact.company.name == "Client Co"


def test_sender_known_only_by_company_domain_is_recorded(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """A colleague of Carol's at client.example matches the company even without a contact."""
    message = process(make_email(sender="eve@client.example"))
    assert message.state is MessageState.PROCESSED, message.reason
    [activity] = _activities(sessions)
    assert activity.participants[0].kind is PartyKind.COMPANY


def test_free_mail_domain_never_matches_a_company(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """A company that lists gmail.com does not swallow every Gmail sender."""
    with sessions.begin() as session:
        directory.add_company(session, activity_tenant(session), "Oops Inc", ["gmail.com"])
    message = process(make_email(sender="someone@gmail.com"))
    assert message.state is MessageState.QUARANTINED
    assert message.reason.startswith("unknown-sender")


@pytest.mark.parametrize(
    ("header", "value", "reason"),
    [
        ("Auto-Submitted", "auto-replied", "auto-reply"),
        ("X-Autoreply", "yes", "auto-reply"),
        ("Precedence", "bulk", "bulk"),
        ("List-Id", "<news.client.example>", "bulk"),
        ("List-Unsubscribe", "<mailto:u@client.example>", "bulk"),
        ("X-Failed-Recipients", "a@b.example", "bounce"),
        ("X-Auto-Response-Suppress", "All", "auto-reply"),
    ],
)
def test_automated_mail_is_not_client_correspondence(
    process: Process, header: str, value: str, reason: str
) -> None:
    """Auto-replies, bulk mail and bounces are quarantined with the marker that gave them away."""
    message = process(make_email(headers={header: value}))
    assert message.state is MessageState.QUARANTINED
    assert message.reason.startswith(reason)


def test_auto_submitted_no_is_a_person(process: Process) -> None:
    """``Auto-Submitted: no`` is how a person's mail says it is not automatic (RFC 3834)."""
    message = process(make_email(headers={"Auto-Submitted": "no"}))
    assert message.state is MessageState.PROCESSED, message.reason


def test_null_sender_and_own_message_id_are_loops(process: Process) -> None:
    """A bounce (null return path) and mail carrying our own Message-ID domain are not recorded."""
    bounce = process(make_email(), mail_from="")
    assert bounce.reason == "bounce: null return path"
    loop = process(make_email(message_id="abc@mx.capture.example"))
    assert loop.reason.startswith("loop: Message-ID")


def test_forced_release_records_what_policy_quarantined(
    process: Process,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    authenticator: Authenticator,
) -> None:
    """An operator's forced release records an auto-reply the policy had set aside."""
    message = process(make_email(headers={"Precedence": "bulk"}))
    with sessions.begin() as session:
        row = session.get_one(ReceivedMessage, message.id)
        row.state, row.force_record = MessageState.RECEIVED, True
    with sessions.begin() as session:
        row = session.get_one(ReceivedMessage, message.id)
        process_message(session, blobs, row, settings, authenticator)
    assert len(_activities(sessions)) == 1


def test_internal_mail_is_not_recorded(process: Process, sessions: sessionmaker[Session]) -> None:
    """Mail between staff only is internal and stays out of the CRM record."""
    _add_colleague(sessions)
    message = process(
        make_email(sender="richard@acme.example", to="bob@acme.example"),
        mail_from="richard@acme.example",
    )
    assert message.reason == "internal: every party is staff"


def test_log_capture_requires_a_staff_from(process: Process) -> None:
    """log@ records what staff send; a client's mail sent to log@ is kept aside."""
    message = process(make_email(), [LOG])
    assert message.state is MessageState.QUARANTINED
    assert message.reason.startswith("log-not-staff")


@pytest.mark.parametrize(
    ("prefix", "reason"),
    [
        (b"From: other@client.example\r\n", "ambiguous-from: 2 From headers"),
        (None, "ambiguous-from: no From header"),
    ],
)
def test_missing_or_repeated_from_is_ambiguous(
    process: Process, prefix: bytes | None, reason: str
) -> None:
    """A message with no From or several From headers is quarantined as ambiguous."""
    raw = make_email()
    raw = (
        prefix + raw
        if prefix
        else raw.replace(b"From: Carol Client <carol@client.example>\r\n", b"")
    )
    message = process(raw)
    assert message.state is MessageState.QUARANTINED
    assert message.reason == reason


def test_from_with_two_mailboxes_is_ambiguous(process: Process) -> None:
    """Two mailboxes in one From would let DMARC and matching look at different senders."""
    message = process(make_email(sender="carol@client.example, richard@acme.example"))
    assert message.reason == "ambiguous-from: From holds 2 mailboxes"


def test_garbage_is_quarantined_not_failed(process: Process) -> None:
    """Bytes that are no email at all end quarantined with a reason, never lost or failed."""
    message = process(b"\xff\xfe garbage without headers\r\n\r\n--\r\n")
    assert message.state is MessageState.QUARANTINED
    assert message.reason.startswith("ambiguous-from")


def test_mime_nested_too_deep_is_quarantined_before_parsing(
    process: Process, settings: Settings
) -> None:
    """Deep multipart nesting is measured and refused before the recursive parser runs."""
    depth = settings.capture.max_mime_depth + 5
    head = b"From: carol@client.example\r\nTo: richard@acme.example\r\nSubject: deep\r\n"
    body = b""
    for level in range(depth):
        body += f"Content-Type: multipart/mixed; boundary=b{level}\r\n\r\n--b{level}\r\n".encode()
    message = process(head + body + b"Content-Type: text/plain\r\n\r\nhi\r\n")
    assert message.state is MessageState.QUARANTINED
    assert message.reason.startswith("mime-too-deep")


def test_threads_follow_references_then_subject_with_same_parties(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """Replies join the thread by In-Reply-To, then by Re: subject with the same client."""
    process(make_email(message_id="t1@client.example", subject="Spring order"))
    process(
        make_email(
            sender="richard@acme.example",
            to="carol@client.example",
            subject="Re: Spring order",
            message_id="t2@acme.example",
            headers={"In-Reply-To": "<t1@client.example>"},
        ),
        [LOG],
        mail_from="richard@acme.example",
    )
    process(make_email(subject="AW: RE: Spring order", message_id="t3@client.example"))
    with sessions.begin() as session:
        directory.add_contact(session, activity_tenant(session), ["zed@other.example"])
    process(make_email(sender="zed@other.example", subject="Re: Spring order"))
    activities = _activities(sessions)
    assert len(activities) == 4
    threads = [a.thread_id for a in activities]
    assert threads[0] == threads[1] == threads[2]
    assert threads[3] != threads[0]


def test_content_keeps_text_sanitized_html_and_attachments(
    process: Process, sessions: sessionmaker[Session], blobs: BlobStore
) -> None:
    """HTML is sanitized, an inline cid: image is body, a PDF is an attachment."""
    raw = make_email(
        html='<p onclick="steal()">Hi <script>alert(1)</script><img src="cid:logo@x"></p>',
        attachments=[("quote.pdf", "application/pdf", b"%PDF-1.4 quote")],
    )
    message = process(raw)
    assert message.state is MessageState.PROCESSED, message.reason
    [activity] = _activities(sessions)
    assert "<script>" not in activity.html_body
    assert "onclick" not in activity.html_body
    assert 'src="cid:logo@x"' in activity.html_body
    [pdf] = activity.attachments
    assert (pdf.filename, pdf.content_type, pdf.inline) == ("quote.pdf", "application/pdf", False)
    assert blobs.get(pdf.blob) == b"%PDF-1.4 quote"


def test_inline_cid_image_is_not_an_attachment(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """An image the HTML shows by cid: is part of the body (DESIGN §5)."""
    raw = (
        b"From: carol@client.example\r\nTo: richard@acme.example\r\nSubject: logo\r\n"
        b"Message-ID: <cid-test@client.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/related; boundary="r"\r\n\r\n'
        b'--r\r\nContent-Type: text/html\r\n\r\n<p>see <img src="cid:logo@x"></p>\r\n'
        b"--r\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--r--\r\n"
    )
    process(raw)
    [activity] = _activities(sessions)
    [image] = activity.attachments
    assert image.inline and image.content_id == "logo@x"
    assert "see" in activity.text_body


def test_privacy_keyword_marks_activity_private(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """A subject with [private] records the activity as private."""
    process(make_email(subject="[Private] salary question"))
    [activity] = _activities(sessions)
    assert activity.private


def test_never_log_list_applies_before_recording(
    process: Process, sessions: sessionmaker[Session]
) -> None:
    """A domain on the tenant's never-log list is never recorded."""
    with sessions.begin() as session:
        session.add(NeverLog(tenant_id=activity_tenant(session).id, pattern="client.example"))
    message = process(make_email())
    assert message.reason == "never-log: carol@client.example"


def test_utf8_headers_are_decoded(process: Process, sessions: sessionmaker[Session]) -> None:
    """8-bit UTF-8 headers (RFC 6532) and encoded words read as text."""
    raw = make_email(subject="placeholder").replace(
        b"Subject: placeholder", "Subject: Angebot für René".encode()
    )
    process(raw)
    [activity] = _activities(sessions)
    assert activity.subject == "Angebot für René"


def test_sender_flood_trips_the_volume_brake(
    process: Process, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """More messages from one unauthenticated sender than the window allows are held for volume.

    Each message is a different email: the same content again and again is loop evidence,
    which the loop guard stops in its first rounds (test_loop_guard.py).
    """
    limit = settings.processing.loop_threshold
    messages = [process(make_email(subject=f"Order {n}")) for n in range(limit + 1)]
    states = [m.state for m in messages]
    assert states[:limit] == [MessageState.PROCESSED] * limit
    assert states[-1] is MessageState.QUARANTINED
    assert messages[-1].reason.startswith("volume: ")


async def test_worker_processes_and_resumes_lapsed_claims(
    sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings, demo: DemoAddresses
) -> None:
    """A message claimed by a dead node is taken over after its lease lapses; new mail is woken."""
    orphan = store_received(sessions, blobs, make_email(subject="one"), [RICHARD])
    with sessions.begin() as session:
        row = session.get_one(ReceivedMessage, orphan)
        row.claimed_by, row.attempts = "dead-node", 1
        row.claim_expires_at = utcnow() - timedelta(seconds=1)
    worker = Worker(sessions, blobs, settings)
    task = asyncio.create_task(worker.run())
    fresh = store_received(sessions, blobs, make_email(subject="two"), [RICHARD])
    worker.wake()
    for _ in range(100):
        with sessions() as session:
            states = session.scalars(
                select(ReceivedMessage.state).where(ReceivedMessage.id.in_([orphan, fresh]))
            ).all()
        if all(s is MessageState.PROCESSED for s in states):
            break
        await asyncio.sleep(0.05)
    await worker.stop()
    await task
    assert states == [MessageState.PROCESSED, MessageState.PROCESSED]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ActivitySource)) == 2
        assert session.scalar(select(func.count()).select_from(Participant)) >= 4
        assert session.scalar(select(func.count()).select_from(Attachment)) == 0
        assert session.scalar(select(func.count()).select_from(TraceEntry)) > 6


async def test_worker_fails_a_message_that_keeps_crashing(
    sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings, demo: DemoAddresses
) -> None:
    """A message that faults on its last attempt ends failed with the reason in the trace."""
    message_id = store_received(sessions, blobs, make_email(), [RICHARD])
    with sessions.begin() as session:
        row = session.get_one(ReceivedMessage, message_id)
        row.attempts = settings.processing.max_attempts - 1
    worker = Worker(sessions, blobs, settings)
    worker.claim_batch()
    with sessions.begin() as session:
        session.get_one(ReceivedMessage, message_id).blob = "not-a-digest"
    worker.process_one(message_id)
    with sessions() as session:
        row = session.get_one(ReceivedMessage, message_id)
        assert row.state is MessageState.FAILED
        assert "processing error: ValueError" in row.reason


@pytest.mark.parametrize("local", ["postmaster", "abuse", "PostMaster"])
def test_role_addresses_are_accepted_and_kept_for_the_operator(
    process: Process, sessions: sessionmaker[Session], local: str
) -> None:
    """postmaster@ must be accepted (RFC 5321 §4.5.1); it is kept aside, never recorded."""
    message = process(make_email(), [f"{local}@acme.capture.example"])
    assert message.state is MessageState.QUARANTINED
    assert message.reason.startswith("operator: mail for ")
    assert _activities(sessions) == []


def test_mail_from_a_capture_address_is_a_loop(process: Process) -> None:
    """A From in our own capture domain is a loop or a forgery, not a client's mail."""
    message = process(make_email(sender="richard@acme.capture.example"))
    assert message.reason == "loop: From richard@acme.capture.example is a capture address"


def test_large_messages_are_parsed_from_their_file(
    process: Process,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above the size where the file is parsed: the same activity, files and quarantines."""
    monkeypatch.setattr(processor, "PARSE_FROM_FILE_BYTES", 0)
    data = os.urandom(300_000)
    message = process(make_email(attachments=[("quote.pdf", "application/pdf", data)]))
    assert message.state is MessageState.PROCESSED, message.reason
    [activity] = _activities(sessions)
    [pdf] = activity.attachments
    assert (pdf.size, blobs.get(pdf.blob)) == (len(data), data)
    garbage = process(b"\xff\xfe garbage without headers\r\n\r\n--\r\n")
    assert garbage.state is MessageState.QUARANTINED
    assert garbage.reason.startswith("ambiguous-from")
