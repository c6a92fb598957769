"""Timelines, the activity page and the integrations page's buttons, in headless Chromium.

The real HTTP server on a loopback port and Debian's chromium (mailledger.testing.webpages,
the harness test_web_pages.py uses). Richard (acme) sees his own activities with Carol and
the ones he took part in; Bob's private mail with Carol stays Bob's; another tenant's
contact is a 404.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.relay.credentials import verify_password
from mailledger.store import directory
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    ActivitySource,
    Attachment,
    Contact,
    Direction,
    ForwardingCheck,
    MessageRoute,
    OutboundKind,
    OutboundMessage,
    Participant,
    PartyKind,
    ReceivedMessage,
    RouteKind,
    Staff,
    Tenant,
)
from mailledger.store.timelines import PAGE_SIZE
from mailledger.testing.api import insert_activity
from mailledger.testing.webpages import (
    CHROMIUM,
    Browser,
    RunningPages,
    chromium_page,
    sign_in,
    signin_link,
)
from mailledger.web.pages.limits import SIGNIN_PER_ADDRESS

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)
pytest.importorskip("playwright.sync_api")

EVIL_HTML = (
    "<html><body><h2>Spring offer</h2><p>Dear Richard, here is our offer.</p>"
    "<script>alert(1)</script>"
    '<img src="x" onerror="alert(2)">'
    '<a href="javascript:alert(3)">click here</a>'
    '<p style="color:#a00">Kind regards, Carol</p></body></html>'
)
# The verdicts the trust step stores for Richard's Gmail forward of Carol's signed mail
# (tests/integration/test_trust.py proves these from real signatures).
GMAIL_FORWARD_AUTH = {
    "spf": "pass",
    "spf_domain": "gmail.com",
    "dkim": "pass",
    "dkim_signatures": [
        {"result": "pass", "domain": "client.example", "selector": "s1", "reason": ""}
    ],
    "arc": "pass",
    "arc_sealers": ["google.com"],
    "dmarc": "pass",
    "from_domain": "client.example",
    "trust": "forwarder-authenticated",
    "trust_reason": "spf=pass for gmail.com and richardsmith@gmail.com is the staff "
    "member's own address",
    "original": {"result": "pass", "via": "dkim", "detail": "dkim pass d=client.example"},
}
GMAIL_ENVELOPE = "richard.smith+caf_=richard=acme.capture.example@gmail.com"
QUOTE_PDF = b"%PDF-1.4 the quote\n"


@dataclass
class Timeline:
    """The world of these tests: who and what, by id."""

    pages: RunningPages
    sessions: sessionmaker[Session]
    blobs: BlobStore
    demo: DemoAddresses
    richard: int
    bob: int
    carol: int
    company: int
    quote: int
    html_mail: int
    bobs_private: int
    foreign_contact: int


def _party(
    session: Session,
    activity: int,
    role: str,
    address: str,
    *,
    staff: int | None = None,
    contact: int | None = None,
    company: int | None = None,
) -> None:
    kind = PartyKind.STAFF if staff else PartyKind.CONTACT if contact else PartyKind.UNMATCHED
    session.add(
        Participant(
            activity_id=activity,
            role=role,
            address=address,
            kind=kind,
            staff_id=staff,
            contact_id=contact,
            company_id=company,
        )
    )


def _with_carol(
    session: Session,
    owner: Staff,
    carol: Contact,
    subject: str,
    at: datetime,
    *,
    outbound: bool = False,
    **values: Any,
) -> int:
    """An activity between a staff member and Carol, with its participants."""
    activity = insert_activity(
        session,
        owner.tenant_id,
        staff_id=owner.id,
        subject=subject,
        occurred_at=at,
        direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
        from_address=owner.primary_address if outbound else "carol@client.example",
        **values,
    )
    carol_role, staff_role = ("to", "from") if outbound else ("from", "to")
    _party(
        session, activity, carol_role, "carol@client.example",
        contact=carol.id, company=carol.company_id,
    )  # fmt: skip
    _party(session, activity, staff_role, owner.primary_address, staff=owner.id)
    return activity


def _gmail_source(
    session: Session, blobs: BlobStore, tenant: int, staff: int, activity: int
) -> None:
    """The received message Richard's Gmail forwarded, recorded as the activity's source."""
    raw = b"Subject: Quote for the new office\r\n\r\nthe quote\r\n"
    message = ReceivedMessage(
        queue_id="A1B2C3D4E5F600000001",
        trace_id="t1",
        blob=blobs.put(raw),
        size=len(raw),
        peer="127.0.0.10",
        mail_from=GMAIL_ENVELOPE,
        rcpt_to=["richard@acme.capture.example"],
        auth=GMAIL_FORWARD_AUTH,
    )
    session.add(message)
    session.flush()
    route = MessageRoute(
        message_id=message.id,
        tenant_id=tenant,
        kind=RouteKind.USER,
        staff_id=staff,
        rcpt="richard@acme.capture.example",
        outcome="recorded",
        activity_id=activity,
    )
    session.add(route)
    session.flush()
    session.add(
        ActivitySource(
            activity_id=activity,
            message_id=message.id,
            route_id=route.id,
            kind=RouteKind.USER,
            staff_id=staff,
        )
    )


@pytest.fixture
def timeline_world(
    sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings, demo: DemoAddresses
) -> Iterator[Timeline]:
    """Acme: Richard and Bob, Carol of Client Co; Globex with a contact of its own."""
    start = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        richard = session.scalars(select(Staff).where(Staff.username == "richard")).one()
        bob = directory.add_staff(session, acme, "bob", ["bob@acme.example"], name="Bob Jones")
        carol = session.scalars(select(Contact).where(Contact.tenant_id == acme.id)).one()
        assert carol.company_id is not None
        # Older mail first, so the newest-first order is the reverse of this list.
        for n in range(PAGE_SIZE):
            _with_carol(
                session, richard, carol,
                f"Newsletter {n}", start - timedelta(days=30 - n),
            )  # fmt: skip
        quote = _with_carol(
            session, richard, carol,
            "Quote for the new office", start, auth=GMAIL_FORWARD_AUTH,
            text_body="Here is the quote you asked for.",
            regarding="Office move", regarding_type="opportunity", regarding_ref="4711",
        )  # fmt: skip
        _gmail_source(session, blobs, acme.id, richard.id, quote)
        session.add(
            Attachment(
                activity_id=quote,
                filename="quote.pdf",
                content_type="application/pdf",
                size=len(QUOTE_PDF),
                blob=blobs.put(QUOTE_PDF),
            )
        )
        _with_carol(
            session, richard, carol,
            "Re: Quote for the new office", start + timedelta(hours=2), outbound=True,
        )  # fmt: skip
        site_visit = _with_carol(
            session, bob, carol,
            "Site visit on Friday", start + timedelta(hours=3),
        )  # fmt: skip
        _party(session, site_visit, "cc", richard.primary_address, staff=richard.id)
        bobs_private = _with_carol(
            session, bob, carol,
            "[private] Bob's salary talk", start + timedelta(hours=4), private=True,
        )  # fmt: skip
        html_mail = _with_carol(
            session, richard, carol,
            "Spring offer", start + timedelta(hours=5),
            text_body="Dear Richard, here is our offer.", html_body=EVIL_HTML,
        )  # fmt: skip
        globex = directory.add_tenant(session, "globex", "globex.capture.example", ["globex.test"])
        directory.add_staff(session, globex, "olga", ["olga@globex.test"])
        foreign = directory.add_contact(session, globex, ["gina@globex-client.test"], name="Gina")
        insert_activity(session, globex.id, subject="Globex secret plans")
        world_ids = (richard.id, bob.id, carol.id, carol.company_id, quote, html_mail,
                     bobs_private, foreign.id)  # fmt: skip
    with RunningPages(sessions, blobs, settings) as pages:
        yield Timeline(pages, sessions, blobs, demo, *world_ids)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Headless Debian Chromium; console messages and page errors are collected."""
    with chromium_page(tmp_path / "screenshots") as found:
        yield found


def _sign_in(world: Timeline, browser: Browser, staff_id: int) -> None:
    sign_in(browser, signin_link(world.sessions, world.pages.url, staff_id))


def _subjects(browser: Browser) -> list[str]:
    links = browser.page.locator("#timeline td:nth-child(2) a")
    return [text.strip() for text in links.all_text_contents()]


def _shot(browser: Browser, name: str) -> None:
    browser.shot(name)


def test_contact_timeline_is_newest_first_searchable_and_filtered_by_staff(
    timeline_world: Timeline, browser: Browser
) -> None:
    """Carol's timeline: Richard's activities and the one he was cc'd on, newest first;
    search narrows by subject, the staff filter to one colleague, Older pages on."""
    world, page = timeline_world, browser.page
    _sign_in(world, browser, world.richard)
    response = page.goto(f"{world.pages.url}/contacts/{world.carol}")
    assert response.status == 200
    assert response.headers["cache-control"] == "no-store"
    assert page.text_content("#timeline-name") == "Carol Client"
    first = _subjects(browser)
    assert first[:4] == [
        "Spring offer",
        "Site visit on Friday",
        "Re: Quote for the new office",
        "Quote for the new office",
    ]
    # Bob's private mail is Bob's: Richard neither sees it listed nor can open it.
    assert not any("salary" in s for s in first)
    assert len(first) == PAGE_SIZE
    _shot(browser, "timeline")

    page.click("#older")
    rest = _subjects(browser)
    assert rest == ["Newsletter 3", "Newsletter 2", "Newsletter 1", "Newsletter 0"]
    page.click("#newest")
    assert _subjects(browser)[0] == "Spring offer"

    page.fill("#q", "quote")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**q=quote**")
    assert _subjects(browser) == ["Re: Quote for the new office", "Quote for the new office"]

    page.goto(f"{world.pages.url}/contacts/{world.carol}")
    page.select_option("#staff", "bob")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**staff=bob**")
    assert _subjects(browser) == ["Site visit on Friday"]
    page.select_option("#direction", "outbound")
    page.select_option("#staff", "")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**direction=outbound**")
    assert _subjects(browser) == ["Re: Quote for the new office"]
    assert browser.errors == []
    assert page.goto(f"{world.pages.url}/activities/{world.bobs_private}").status == 404


def test_company_timeline_and_an_admin_see_the_whole_tenant(
    timeline_world: Timeline, browser: Browser
) -> None:
    """An admin sees Bob's private activity on Client Co's timeline, and may open it."""
    world, page = timeline_world, browser.page
    with world.sessions.begin() as session:
        directory.set_admin(session, session.get_one(Staff, world.richard), True)
    _sign_in(world, browser, world.richard)
    assert page.goto(f"{world.pages.url}/companies/{world.company}").status == 200
    assert page.text_content("#timeline-name") == "Client Co"
    subjects = _subjects(browser)
    assert "[private] Bob's salary talk" in subjects
    page.click("text=[private] Bob's salary talk")
    assert page.text_content("h1") == "[private] Bob's salary talk"


def test_another_tenants_contact_and_company_are_not_found(
    timeline_world: Timeline, browser: Browser
) -> None:
    """A contact id of Globex answers 404 to Richard, as an id that does not exist does."""
    world, page = timeline_world, browser.page
    _sign_in(world, browser, world.richard)
    foreign = page.goto(f"{world.pages.url}/contacts/{world.foreign_contact}")
    assert foreign.status == 404
    assert "Gina" not in page.content()
    assert page.goto(f"{world.pages.url}/contacts/999999").status == 404
    assert page.goto(f"{world.pages.url}/companies/999999").status == 404
    assert page.goto(f"{world.pages.url}/contacts/not-a-number").status == 404
    page.context.clear_cookies()
    assert page.goto(f"{world.pages.url}/contacts/{world.carol}").url.endswith("/signin")


def test_activity_page_shows_verdicts_regarding_and_downloads_attachments(
    timeline_world: Timeline, browser: Browser
) -> None:
    """The quote: its verdicts in words, what it is about, and its PDF as a download."""
    world, page = timeline_world, browser.page
    _sign_in(world, browser, world.richard)
    page.goto(f"{world.pages.url}/contacts/{world.carol}")
    page.click(f"#timeline a[href='/activities/{world.quote}']")
    page.wait_for_url(f"**/activities/{world.quote}")
    verdicts = page.text_content("#verdicts")
    assert "Signed by client.example; forwarded by Richard's Gmail, verified by SPF." in verdicts
    assert "opportunity" in page.text_content("#regarding")
    assert "4711" in page.text_content("#regarding")
    browser.shot("activity")
    row = page.text_content("#attachments")
    assert "quote.pdf" in row and "application/pdf" in row
    with page.expect_download() as download:
        page.click("#attachments a")
    assert download.value.suggested_filename == "quote.pdf"
    assert Path(download.value.path()).read_bytes() == QUOTE_PDF
    answer = page.request.get(f"{world.pages.url}/activities/{world.quote}/attachments/1")
    assert answer.status == 200
    assert answer.headers["content-disposition"].startswith('attachment; filename="quote.pdf"')
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["content-type"] == "application/pdf"
    missing = page.request.get(f"{world.pages.url}/activities/{world.quote}/attachments/2")
    assert missing.status == 404
    # Bob's private activity's attachments are as unreachable as the activity.
    hidden = page.request.get(f"{world.pages.url}/activities/{world.bobs_private}/attachments/1")
    assert hidden.status == 404
    # The participant links back to Carol's timeline.
    page.click("#participants a[href^='/contacts/']")
    assert page.text_content("#timeline-name") == "Carol Client"


def test_html_mail_shows_its_text_and_runs_nothing(
    timeline_world: Timeline, browser: Browser
) -> None:
    """A script, an onerror image and a javascript: link: shown as text, nothing runs."""
    world, page = timeline_world, browser.page
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    _sign_in(world, browser, world.richard)
    response = page.goto(f"{world.pages.url}/activities/{world.html_mail}")
    assert response.status == 200
    browser.shot("activity-html")
    frame_element = page.locator("#message-html")
    assert frame_element.get_attribute("sandbox") == ""
    frame = page.frame_locator("#message-html")
    assert "Dear Richard, here is our offer." in frame.locator("body").text_content()
    assert "Kind regards, Carol" in frame.locator("body").text_content()
    assert frame.locator("script").count() == 0
    assert frame.locator("[onerror]").count() == 0
    assert frame.locator("a[href^='javascript']").count() == 0
    # Clicking what was the javascript: link runs nothing either.
    frame.locator("text=click here").click()

    direct = page.request.get(f"{world.pages.url}/activities/{world.html_mail}/html")
    csp = direct.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp and "script-src" not in csp
    assert "alert" not in direct.text()
    assert dialogs == []
    assert browser.errors == []
    assert browser.console == []


def _queued(world: Timeline, kind: OutboundKind, rcpt: str, count: int) -> None:
    """Wait until ``count`` mails of ``kind`` to ``rcpt`` are queued (mail goes after the page)."""
    deadline = time.monotonic() + 10
    found = -1
    while time.monotonic() < deadline:
        with world.sessions() as session:
            rows = session.scalars(select(OutboundMessage).where(OutboundMessage.kind == kind))
            found = sum(1 for r in rows if r.rcpt_to == [rcpt])
        if found >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{found} {kind} mails to {rcpt}, not {count}")


def test_check_my_forwarding_sends_a_check_and_shows_waiting(
    timeline_world: Timeline, browser: Browser
) -> None:
    """The button queues the round-trip challenge to Richard's mailbox; the page says waiting."""
    world, page = timeline_world, browser.page
    _sign_in(world, browser, world.richard)
    assert page.text_content("#forwarding-state").strip() == "Never checked."
    page.click("#check-forwarding")
    page.wait_for_url("**/integrations#forwarding-check")
    assert page.text_content("#forwarding-state").strip().startswith("Waiting")
    _queued(world, OutboundKind.CHALLENGE, world.demo.staff_address, 1)
    with world.sessions() as session:
        checks = session.scalars(
            select(ForwardingCheck).where(ForwardingCheck.staff_id == world.richard)
        ).all()
        assert len(checks) == 1 and checks[0].proven_at is None
    # Without the session's token nothing is sent.
    forged = page.request.post(
        f"{world.pages.url}/integrations/forwarding-check", form={"csrf": "guess"}
    )
    assert forged.status == 403
    with world.sessions() as session:
        count = select(func.count()).select_from(ForwardingCheck)
        assert session.scalar(count) == 1


def test_make_a_new_password_shows_it_once_and_it_authenticates(
    timeline_world: Timeline, browser: Browser
) -> None:
    """The new relay password is on the POST's answer only, and the relay's check accepts it."""
    world, page = timeline_world, browser.page
    _sign_in(world, browser, world.richard)
    assert page.text_content("#password-state").strip() == "not set yet"
    with page.expect_response(lambda r: r.url.endswith("/integrations/password")) as answer:
        page.click("#make-password")
    assert answer.value.headers["cache-control"] == "no-store"
    password = page.text_content("#new-password").strip()
    assert len(password) == 29 and password not in page.url
    _shot(browser, "integrations")
    with world.sessions() as session:
        stored = session.get_one(Staff, world.richard).password_hash
    assert verify_password(password, stored)
    assert not verify_password(password + "x", stored)

    page.goto(f"{world.pages.url}/integrations")
    assert page.locator("#new-password").count() == 0
    assert password not in page.content()
    assert page.text_content("#password-state").strip().startswith("set")
    # A second one replaces the first.
    page.click("#make-password")
    second = page.text_content("#new-password").strip()
    with world.sessions() as session:
        stored = session.get_one(Staff, world.richard).password_hash
    assert verify_password(second, stored) and not verify_password(password, stored)
    forged = page.request.post(f"{world.pages.url}/integrations/password", form={"csrf": "x"})
    assert forged.status == 403
    assert browser.errors == []


def test_signin_is_rate_limited_per_address_without_telling(
    timeline_world: Timeline, browser: Browser
) -> None:
    """The sixth request for one address gets the same page and no sixth mail."""
    world, page = timeline_world, browser.page
    richard = world.demo.staff_address
    for n in range(SIGNIN_PER_ADDRESS):
        page.goto(f"{world.pages.url}/signin")
        page.fill("#address", richard)
        page.click("button[type=submit]")
        page.wait_for_selector("#sent")
        _queued(world, OutboundKind.SYSTEM, richard, n + 1)
    page.goto(f"{world.pages.url}/signin")
    page.fill("#address", richard.upper())
    page.click("button[type=submit]")
    assert "If RICHARD@ACME.EXAMPLE is known to mailledger" in page.text_content("#sent")
    # Bob asks after the sixth request; once his link is queued, Richard still has five.
    page.goto(f"{world.pages.url}/signin")
    page.fill("#address", "bob@acme.example")
    page.click("button[type=submit]")
    page.wait_for_selector("#sent")
    _queued(world, OutboundKind.SYSTEM, "bob@acme.example", 1)
    with world.sessions() as session:
        rows = session.scalars(
            select(OutboundMessage).where(OutboundMessage.kind == OutboundKind.SYSTEM)
        ).all()
        assert sum(1 for r in rows if r.rcpt_to == [richard]) == SIGNIN_PER_ADDRESS
