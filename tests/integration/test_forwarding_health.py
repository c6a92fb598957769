"""Forwarding health: rechecks, silence, the breakage mail, recovery, and the periodic pass.

The rules run against a real database with the pass's clock given as ``now=``: rows are
written with the times a week of mail would have left, and the pass is asked about a moment in
that story. Mail the pass sends is read from the outbound queue. The last tests run ``serve``
with a short interval: the periodic task sends a recheck through the relay to a recording MX,
the test forwards it back through a Gmail-shaped forward, and forwarding is proven again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.pipeline import decisions
from mailledger.cli import forwarding as forwarding_commands
from mailledger.cli import staff as staff_commands
from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.dnsauth.resolver import Resolver
from mailledger.forwarding import handback, health
from mailledger.forwarding.fixes import GMAIL, MICROSOFT, OTHER, provider_of
from mailledger.service.server import serve
from mailledger.store import directory, periodic
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    Direction,
    ForwardingCheck,
    ForwardingHealth,
    MessageRoute,
    MessageState,
    OutboundKind,
    OutboundMessage,
    PeriodicRun,
    ReceivedMessage,
    RouteKind,
    Staff,
    Tenant,
    utcnow,
)
from mailledger.testing.api import bearer, insert_activity, make_token
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.forwarding import gmail_forward, make_key
from mailledger.testing.recorder import Recorder, start_recorders
from mailledger.testing.smtp import send_raw_async
from mailledger.testing.webpages import CHROMIUM, RunningPages, chromium_page, sign_in, signin_link

T = TypeVar("T")

CAPTURE = "richard@acme.capture.example"
PRIMARY = "richard@acme.example"
GMAIL_OBSERVED = {
    "envelope_pattern": "gmail +caf_ tag (own address, names the capture address)",
    "arc_sealers": ["google.com"],
    "dkim_signers": [],
}
MICROSOFT_OBSERVED = {
    "envelope_pattern": "SRS rewrite by acme.example",
    "arc_sealers": ["microsoft.com"],
    "dkim_signers": ["acme.onmicrosoft.com (pass)"],
}
MAILBOX_MX = "127.0.0.52"
GMAIL_IP = "127.0.0.10"
GOOGLE_KEY = make_key("google.com", "20230601")


# --- the story's rows -------------------------------------------------------------------------


def richard(session: Session) -> Staff:
    """The demo tenant's staff member."""
    return directory.find_staff(session, directory.find_tenant(session, "acme"), "richard")


def prove(
    sessions: sessionmaker[Session], at: datetime, observed: dict[str, Any] | None = None
) -> None:
    """Richard's forwarding proven by a check sent at ``at`` that came back a minute later."""
    with sessions.begin() as session:
        session.add(
            ForwardingCheck(
                staff_id=richard(session).id,
                token=secrets.token_urlsafe(24),
                sent_at=at,
                expires_at=at + handback.CHECK_LIFETIME,
                proven_at=at + timedelta(minutes=1),
                observed=dict(observed or GMAIL_OBSERVED),
            )
        )


def forwarded_mail(
    sessions: sessionmaker[Session], at: datetime, outcome: str = "recorded"
) -> None:
    """Client mail that came through Richard's forward at ``at``."""
    queue_id = secrets.token_hex(10).upper()
    with sessions.begin() as session:
        staff = richard(session)
        message = ReceivedMessage(
            queue_id=queue_id,
            trace_id=f"T{queue_id}",
            blob="0" * 64,
            size=100,
            peer=f"{GMAIL_IP}:40000",
            mail_from="richard.smith+caf_=richard=acme.capture.example@gmail.com",
            rcpt_to=[CAPTURE],
            received_at=at,
            state=MessageState.PROCESSED,
        )
        message.routes.append(
            MessageRoute(
                tenant_id=staff.tenant_id,
                kind=RouteKind.USER,
                staff_id=staff.id,
                rcpt=CAPTURE,
                outcome=outcome,
            )
        )
        session.add(message)


def sent_mail(sessions: sessionmaker[Session], at: datetime) -> None:
    """An outbound activity: Richard wrote to a client at ``at`` (BCC to log@, or the relay)."""
    with sessions.begin() as session:
        staff = richard(session)
        insert_activity(
            session,
            staff.tenant_id,
            direction=Direction.OUTBOUND,
            staff_id=staff.id,
            from_address=PRIMARY,
            occurred_at=at,
            created_at=at,
        )


def broken_and_mailed_about(sessions: sessionmaker[Session], now: datetime) -> None:
    """Richard's forward proven 8 days ago, then a silence alarm mailed about yesterday."""
    prove(sessions, now - timedelta(days=8))
    with sessions.begin() as session:
        session.add(
            ForwardingHealth(
                staff_id=richard(session).id,
                state=health.BROKEN,
                since=now - timedelta(days=8) + timedelta(minutes=1),  # the last proof
                reason=health.SILENCE,
                detail="no forwarded mail since last week",
                notified_at=now - timedelta(days=1),
            )
        )


def queued(sessions: sessionmaker[Session], kind: OutboundKind) -> list[OutboundMessage]:
    """The outbound rows of one kind, oldest first."""
    with sessions() as session:
        return list(
            session.scalars(
                select(OutboundMessage)
                .where(OutboundMessage.kind == kind)
                .order_by(OutboundMessage.id)
            )
        )


def text_of(blobs: BlobStore, row: OutboundMessage) -> tuple[EmailMessage, str]:
    """A queued message and its plain text."""
    parsed = message_from_bytes(blobs.get(row.blob), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_body(("plain",))
    assert body is not None
    return parsed, body.get_content()


def health_row(sessions: sessionmaker[Session]) -> ForwardingHealth | None:
    """Richard's health row, if a pass wrote one."""
    with sessions() as session:
        return session.scalars(
            select(ForwardingHealth).where(ForwardingHealth.staff_id == richard(session).id)
        ).first()


def status(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """What ``forwarding_status`` shows for Richard (staff show, the pages)."""
    with sessions() as session:
        return handback.forwarding_status(session, richard(session))


def configured(settings: Settings, **forwarding: Any) -> Settings:
    """Settings with ``[forwarding]`` changed."""
    return settings.model_copy(
        update={"forwarding": settings.forwarding.model_copy(update=forwarding)}
    )


Run = Callable[..., Awaitable[list[health.Change]]]


@pytest.fixture
def run(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    demo: DemoAddresses,
    resolver: Resolver,
) -> Run:
    """One pass at ``now`` over the demo tenant, under the lease as ``serve`` runs it."""

    async def one_pass(now: datetime, configured: Settings | None = None) -> list[health.Change]:
        report = await health.run_pass(
            sessions, blobs, configured or settings, resolver, owner="test", now=now
        )
        assert report.ran
        return report.changes

    return one_pass


# --- the rules --------------------------------------------------------------------------------


async def test_due_recheck_sends_a_check_and_a_fresh_proof_does_not(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    run: Run,
) -> None:
    """A forward proven 8 days ago is rechecked (recheck_days = 7); one proven 2 days ago is not."""
    now = utcnow()
    prove(sessions, now - timedelta(days=2))
    assert await run(now) == []
    assert queued(sessions, OutboundKind.CHALLENGE) == []

    later = now + timedelta(days=6)  # the proof is 8 days old now
    (change,) = await run(later)
    assert change.check_sent_to == PRIMARY
    assert change.before == change.after == health.PROVEN
    (challenge,) = queued(sessions, OutboundKind.CHALLENGE)
    assert challenge.rcpt_to == [PRIMARY]
    parsed, _ = text_of(blobs, challenge)
    assert parsed[handback.CHECK_HEADER]
    with sessions() as session:
        latest = session.scalars(
            select(ForwardingCheck).order_by(ForwardingCheck.id.desc())
        ).first()
        assert latest is not None and latest.sent_at == later and latest.proven_at is None
    # While it is out, forwarding still shows as proven: a routine check is no alarm.
    assert status(sessions)["state"] == "proven"


async def test_no_return_breaks_it_and_mails_the_gmail_fix_once(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    run: Run,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No return within 24 h: broken since the check went out, one mail with Gmail's fix."""
    now = utcnow()
    prove(sessions, now - timedelta(days=8))
    await run(now)  # the recheck goes out
    assert len(queued(sessions, OutboundKind.CHALLENGE)) == 1

    # Still inside the deadline: nothing is said yet.
    assert await run(now + timedelta(hours=23)) == []
    (change,) = await run(now + timedelta(hours=25))
    assert (change.before, change.after, change.reason) == ("proven", "broken", health.NO_RETURN)
    assert change.since == now
    assert change.mailed_to == PRIMARY

    (mail,) = queued(sessions, OutboundKind.SYSTEM)
    assert mail.rcpt_to == [PRIMARY]
    assert mail.mail_from == settings.service.system_sender
    parsed, text = text_of(blobs, mail)
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert CAPTURE in str(parsed["Subject"])
    assert "Broken since" in text and "did not come back" in text
    assert "password changes" in text and "Forwarding and POP/IMAP" in text
    assert "5.7.520" not in text

    # The next passes find it still broken and stay quiet: one mail per breakage.
    assert await run(now + timedelta(hours=26)) == []
    assert await run(now + timedelta(hours=30)) == []
    assert len(queued(sessions, OutboundKind.SYSTEM)) == 1

    shown = status(sessions)
    assert shown["state"] == "broken"
    assert shown["broken_since"] == now.isoformat()
    assert shown["broken_reason"] == health.NO_RETURN
    assert shown["provider"] == "Gmail"
    assert any("Forwarding and POP/IMAP" in step for step in shown["fix"])

    capsys.readouterr()
    args = argparse.Namespace(tenant="acme", json=False)
    assert staff_commands.cmd_staff_list(args, settings) == 0
    assert f"broken since {now.isoformat()} (no-return)" in capsys.readouterr().out
    args = argparse.Namespace(tenant="acme", username="richard", json=True)
    assert staff_commands.cmd_staff_show(args, settings) == 0
    (shown_record,) = json.loads(capsys.readouterr().out)
    assert shown_record["forwarding"] == "broken"
    assert shown_record["forwarding_broken_since"] == now.isoformat()
    assert "did not come back" in shown_record["forwarding_broken_because"]


async def test_microsoft_forward_gets_the_exchange_admin_fix(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    run: Run,
) -> None:
    """A forward that came back sealed by Microsoft is mended by the outbound spam policy."""
    now = utcnow()
    prove(sessions, now - timedelta(days=8), MICROSOFT_OBSERVED)
    await run(now)
    await run(now + timedelta(hours=25))
    (mail,) = queued(sessions, OutboundKind.SYSTEM)
    _, text = text_of(blobs, mail)
    assert "550 5.7.520" in text
    assert "Anti-spam outbound policy" in text and "Automatic forwarding rules to On" in text
    assert "Remote domains" in text
    assert status(sessions)["provider"] == "Microsoft 365"


async def test_forwarded_mail_proves_it_again_and_a_new_breakage_mails_again(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    run: Run,
) -> None:
    """Mail through the forward after the breakage turns it proven; the next breakage is news."""
    now = utcnow()
    prove(sessions, now - timedelta(days=8))
    await run(now)
    await run(now + timedelta(hours=25))
    assert len(queued(sessions, OutboundKind.SYSTEM)) == 1

    forwarded_mail(sessions, now + timedelta(hours=30))
    (change,) = await run(now + timedelta(hours=31))
    assert (change.before, change.after) == ("broken", "proven")
    assert status(sessions)["state"] == "proven"
    row = health_row(sessions)
    assert row is not None and row.notified_at is None

    # A week on the next recheck goes out and is lost too: a second breakage, a second mail.
    week = now + timedelta(days=8)
    (change,) = await run(week)
    assert change.check_sent_to == PRIMARY
    (change,) = await run(week + timedelta(hours=25))
    assert change.after == "broken" and change.since == week
    assert len(queued(sessions, OutboundKind.SYSTEM)) == 2


async def test_silence_while_sending_mail_is_broken(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    run: Run,
) -> None:
    """Nothing forwarded for 7 days while Richard writes to clients: broken since the last one."""
    now = utcnow()
    settings = configured(settings, recheck_days=30)
    prove(sessions, now - timedelta(days=20))
    last = now - timedelta(days=9)
    forwarded_mail(sessions, last)
    sent_mail(sessions, now - timedelta(days=2))
    sent_mail(sessions, now - timedelta(days=1))

    (change,) = await run(now, settings)
    assert (change.after, change.reason, change.since) == ("broken", health.SILENCE, last)
    assert "sent 2 message(s) in the last 7 day(s)" in change.detail
    assert change.mailed_to == PRIMARY
    # A check goes out at once: if the forward works after all, its return ends the alarm.
    assert change.check_sent_to == PRIMARY
    (mail,) = queued(sessions, OutboundKind.SYSTEM)
    _, text = text_of(blobs, mail)
    assert "no forwarded mail since" in text
    shown = status(sessions)
    assert (shown["state"], shown["broken_reason"]) == ("broken", health.SILENCE)

    assert await run(now + timedelta(hours=1), settings) == []
    assert len(queued(sessions, OutboundKind.SYSTEM)) == 1
    assert len(queued(sessions, OutboundKind.CHALLENGE)) == 1


async def test_a_return_recorded_while_a_pass_decides_is_not_undone(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    run: Run,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A check comes back (processing marks the forward proven) after a pass read the facts
    and before it wrote its verdict: the pass must not write the stale breakage back and
    mail about it again. The next pass decides on fresh facts."""
    now = utcnow()
    broken_and_mailed_about(sessions, now)
    real_assess = health.assess

    def assess_while_a_check_returns(*args: Any, **kwargs: Any) -> health.Assessment:
        verdict = real_assess(*args, **kwargs)
        # What handback does when the check comes back, committed by processing meanwhile.
        prove(sessions, now)
        with sessions.begin() as session:
            row = session.scalars(select(ForwardingHealth)).one()
            row.state, row.since, row.reason, row.detail = health.PROVEN, now, "", ""
            row.notified_at = None
        return verdict

    monkeypatch.setattr(health, "assess", assess_while_a_check_returns)
    await run(now)
    assert queued(sessions, OutboundKind.SYSTEM) == []
    assert health_row(sessions).state == health.PROVEN  # type: ignore[union-attr]
    monkeypatch.setattr(health, "assess", real_assess)
    await run(now + timedelta(minutes=1))
    assert health_row(sessions).state == health.PROVEN  # type: ignore[union-attr]
    assert queued(sessions, OutboundKind.SYSTEM) == []


async def test_silence_without_any_sending_is_not_broken(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    run: Run,
) -> None:
    """Quiet in and quiet out is a holiday, not a broken forward; old sent mail does not count."""
    now = utcnow()
    settings = configured(settings, recheck_days=30)
    prove(sessions, now - timedelta(days=20))
    forwarded_mail(sessions, now - timedelta(days=12))
    sent_mail(sessions, now - timedelta(days=11))  # before the silence window
    assert await run(now, settings) == []
    assert status(sessions)["state"] == "proven"
    assert queued(sessions, OutboundKind.SYSTEM) == []


async def test_untrusted_mail_to_the_capture_address_does_not_end_silence(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    run: Run,
) -> None:
    """Anyone can mail a capture address: only mail that passed the trust step counts."""
    now = utcnow()
    settings = configured(settings, recheck_days=30)
    prove(sessions, now - timedelta(days=20))
    forwarded_mail(sessions, now - timedelta(days=1), outcome="untrusted: spf=fail for gmail.com")
    sent_mail(sessions, now - timedelta(days=1))
    (change,) = await run(now, settings)
    assert change.reason == health.SILENCE


async def test_recheck_days_zero_turns_rechecks_off(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    run: Run,
) -> None:
    """With recheck_days = 0 (and silence_days = 0) a month-old proof is left alone."""
    now = utcnow()
    settings = configured(settings, recheck_days=0, silence_days=0)
    prove(sessions, now - timedelta(days=30))
    sent_mail(sessions, now - timedelta(days=1))
    assert await run(now, settings) == []
    assert queued(sessions, OutboundKind.CHALLENGE) == []
    assert status(sessions)["state"] == "proven"


async def test_unproven_staff_are_not_watched(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    run: Run,
) -> None:
    """Someone whose forwarding was never proven gets no rechecks and no alarms."""
    now = utcnow()
    sent_mail(sessions, now - timedelta(days=1))
    assert await run(now + timedelta(days=30)) == []
    assert queued(sessions, OutboundKind.CHALLENGE) == []
    assert health_row(sessions) is None


def test_forwarded_outcomes_name_the_pipeline_decisions() -> None:
    """The outcomes counted as forwarded mail are the ones processing writes."""
    assert decisions.RECORDED in health.FORWARDED_OUTCOMES
    assert decisions.FORWARDING_CHECK in health.FORWARDED_OUTCOMES


@pytest.mark.parametrize(
    ("observed", "primary", "provider"),
    [
        (GMAIL_OBSERVED, "richard@acme.example", GMAIL),
        (MICROSOFT_OBSERVED, "richard@acme.example", MICROSOFT),
        ({}, "someone@gmail.com", GMAIL),
        ({}, "someone@outlook.com", MICROSOFT),
        ({"envelope_pattern": "own address"}, "richard@acme.example", OTHER),
    ],
)
def test_provider_is_read_from_how_the_proof_came_back(
    observed: dict[str, Any], primary: str, provider: str
) -> None:
    """Gmail's envelope or seal, Microsoft's seal or signature, else the primary's domain."""
    assert provider_of(observed, primary) == provider


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
async def test_integrations_page_shows_broken_since_and_the_fix(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    run: Run,
    tmp_path: Path,
) -> None:
    """The forwarding block says since when it is broken, why, and the steps that mend it."""
    pytest.importorskip("playwright.sync_api")
    now = utcnow()
    prove(sessions, now - timedelta(days=8))
    await run(now)
    await run(now + timedelta(hours=25))
    with sessions() as session:
        staff_id = richard(session).id

    def look() -> tuple[str, list[str]]:
        with (
            RunningPages(sessions, blobs, settings) as pages,
            chromium_page(tmp_path / "screenshots") as browser,
        ):
            sign_in(browser, signin_link(sessions, pages.url, staff_id))
            browser.shot("integrations-broken")
            state = browser.page.inner_text("#forwarding-state")
            steps = browser.page.locator("#forwarding-fix li").all_inner_texts()
            return state, steps

    state, steps = await asyncio.to_thread(look)
    assert state.startswith(f"Broken since {now:%Y-%m-%d %H:%M} UTC")
    assert "did not come back through your forward within 24 hours" in state
    assert any("Forwarding and POP/IMAP" in step for step in steps)
    assert any(CAPTURE in step for step in steps)


# --- one node at a time -----------------------------------------------------------------------


@pytest.mark.postgres
def test_one_node_runs_the_pass_per_interval(engine: Any, sessions: sessionmaker[Session]) -> None:
    """While one node holds the pass nobody else starts it, nor again within the interval."""
    now = utcnow()
    lease, every = timedelta(minutes=15), timedelta(hours=1)
    assert periodic.try_start(sessions, "job", owner="a", now=now, lease=lease, every=every)
    assert not periodic.try_start(sessions, "job", owner="b", now=now, lease=lease, every=every)
    periodic.finish(sessions, "job", owner="a", now=now)
    soon = now + timedelta(minutes=5)
    assert not periodic.try_start(sessions, "job", owner="b", now=soon, lease=lease, every=every)
    # By hand (no interval) it runs as soon as no lease holds it.
    assert periodic.try_start(sessions, "job", owner="b", now=soon, lease=lease)
    # b dies mid-pass: its lease holds the job until it lapses, then the next tick takes over.
    held = soon + lease - timedelta(seconds=1)
    assert not periodic.try_start(sessions, "job", owner="c", now=held, lease=lease)
    late = now + every + timedelta(seconds=1)
    assert periodic.try_start(sessions, "job", owner="c", now=late, lease=lease, every=every)
    with sessions() as session:
        assert session.get_one(PeriodicRun, "job").holder == "c"


def test_cli_check_health_prints_what_changed(
    settings: Settings,
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`forwarding check-health` runs one pass now and says whom it rechecked."""
    prove(sessions, utcnow() - timedelta(days=8))
    args = argparse.Namespace(tenant="acme", json=False)
    assert forwarding_commands.cmd_forwarding_check_health(args, settings) == 0
    shown = capsys.readouterr().out
    assert f"acme/richard: check sent to {PRIMARY}" in shown
    assert forwarding_commands.cmd_forwarding_check_health(args, settings) == 0
    assert "no changes" in capsys.readouterr().out


# --- the periodic task in the running service -------------------------------------------------


async def eventually(probe: Callable[[], T | None], seconds: float = 15.0) -> T:
    """Poll ``probe`` (in a thread) until it returns something."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(probe)
        if value is not None:
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met")


@pytest.fixture
def mailbox() -> Iterator[tuple[DNSServer, int, Recorder]]:
    """acme.example's mailbox provider as a recorder; Gmail's SPF and ARC key published."""
    port, started = start_recorders([MAILBOX_MX])
    with DNSServer() as server:
        server.add("acme.example", "MX", "10 mx.acme.example.")
        server.add("mx.acme.example", "A", MAILBOX_MX)
        server.add("gmail.com", "TXT", f"v=spf1 ip4:{GMAIL_IP} -all")
        server.add("google.com", "TXT", f"v=spf1 ip4:{GMAIL_IP} -all")
        server.add(GOOGLE_KEY.record_name, "TXT", GOOGLE_KEY.txt)
        yield server, port, started[0]
    for recorder in started:
        recorder.close()


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[int, str]]:
    """``serve`` in this loop; yields the capture port and the API's base URL."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    smtp: asyncio.Future[list[tuple[str, int]]] = loop.create_future()
    api: asyncio.Future[tuple[str, int]] = loop.create_future()
    task = asyncio.create_task(
        serve(settings, ready=smtp.set_result, http_ready=api.set_result, stop=stop)
    )
    ready = asyncio.gather(smtp, api)
    waiters: set[asyncio.Future[Any]] = {task, ready}
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()
        raise RuntimeError("the server stopped before it was ready")
    host, port = api.result()
    try:
        yield smtp.result()[0][1], f"http://{host}:{port}"
    finally:
        stop.set()
        await task


async def test_serve_rechecks_on_its_own_and_a_return_proves_it_again(
    settings: Settings,
    sessions: sessionmaker[Session],
    demo: DemoAddresses,
    mailbox: tuple[DNSServer, int, Recorder],
    tmp_path: Path,
) -> None:
    """The periodic pass mails a due recheck; its return through Gmail ends a breakage."""
    dns, smtp_port, mx = mailbox
    now = utcnow()
    broken_and_mailed_about(sessions, now)
    with sessions.begin() as session:
        token = make_token(session, session.scalars(select(Tenant)).one())
    running = settings.model_copy(
        update={
            "dns": dns.settings(timeout_seconds=1.0),
            "submission": settings.submission.model_copy(update={"listen": [], "listen_tls": []}),
            "relay": settings.relay.model_copy(
                update={
                    "smtp_port": smtp_port,
                    "poll_interval_seconds": 0.05,
                    "retry_schedule_seconds": [0.2],
                    "connect_timeout_seconds": 2.0,
                    "dkim_key_dir": str(tmp_path / "dkim"),
                }
            ),
            "forwarding": settings.forwarding.model_copy(update={"interval_seconds": 0.2}),
        }
    )
    async with serving(running) as (capture_port, base_url):
        delivered = await mx.wait_for_async(lambda ts: any(t.accepted for t in ts), 15.0)
        challenge = delivered[0]
        assert challenge.rcpt_tos == [PRIMARY]
        assert handback.CHECK_HEADER.encode() in challenge.data

        async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
            listed = (await client.get("/v1/staff", headers=bearer(token))).json()["data"]
        assert listed[0]["forwarding"]["state"] == "broken"
        assert listed[0]["forwarding"]["reason"] == health.SILENCE

        envelope, forwarded = gmail_forward(
            challenge.data, "richard.smith@gmail.com", CAPTURE, GOOGLE_KEY
        )
        back = await send_raw_async(
            capture_port, envelope, [CAPTURE], forwarded, source_address=GMAIL_IP
        )
        assert back.accepted

        def proven_again() -> ForwardingHealth | None:
            row = health_row(sessions)
            return row if row is not None and row.state == health.PROVEN else None

        restored = await eventually(proven_again)
        assert restored.notified_at is None

        def pass_after(at: datetime) -> ForwardingHealth | None:
            row = health_row(sessions)
            return row if row is not None and row.checked_at > at else None

        # The periodic pass keeps running, and agrees.
        seen = await eventually(lambda: pass_after(restored.since))
        assert seen.state == health.PROVEN
    assert status(sessions)["state"] == "proven"
    # It was mailed about before; a return ends it without another mail.
    assert queued(sessions, OutboundKind.SYSTEM) == []
