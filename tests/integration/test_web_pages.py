"""The web pages in headless Chromium against the real HTTP server: sign-in, integrations, 404s.

Debian's chromium drives the pages through Playwright (never `playwright install`); .ci/run
installs it. Every page's screenshot is kept under the test's tmp dir.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store import directory, websessions
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    OutboundKind,
    OutboundMessage,
    SigninToken,
    Staff,
    Tenant,
    utcnow,
)
from mailledger.testing.api import insert_activity
from mailledger.testing.webpages import CHROMIUM, Browser, RunningPages, chromium_page

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)
sync_api = pytest.importorskip("playwright.sync_api")


@dataclass
class World:
    pages: RunningPages
    sessions: sessionmaker[Session]
    blobs: BlobStore
    demo: DemoAddresses
    richard: int
    own_activity: int
    other_activity: int


@pytest.fixture
def world(
    sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings, demo: DemoAddresses
) -> Iterator[World]:
    """The demo tenant with one activity of Richard's, and another tenant with one of its own."""
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        richard = session.scalars(select(Staff).where(Staff.tenant_id == acme.id)).one()
        own = insert_activity(
            session, acme.id, staff_id=richard.id, subject="Quote for the new office"
        )
        other = directory.add_tenant(session, "globex", "globex.capture.example", ["globex.test"])
        directory.add_staff(session, other, "olga", ["olga@globex.test"])
        foreign = insert_activity(session, other.id, subject="Globex secret plans")
        richard_id = richard.id
    with RunningPages(sessions, blobs, settings) as pages:
        yield World(pages, sessions, blobs, demo, richard_id, own, foreign)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Headless Debian Chromium; console messages and page errors are collected."""
    with chromium_page(tmp_path / "screenshots") as found:
        yield found


def _queued_link(world: World, address: str) -> str:
    """The sign-in link from the mail the relay queued to ``address``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with world.sessions() as session:
            row = session.scalars(
                select(OutboundMessage).where(OutboundMessage.kind == OutboundKind.SYSTEM)
            ).first()
            if row is not None:
                assert row.rcpt_to == [address]
                raw = world.blobs.get(row.blob)
                break
        time.sleep(0.05)
    else:
        raise AssertionError("no sign-in mail was queued")
    mail = message_from_bytes(raw, policy=policy.default)
    assert mail["Auto-Submitted"] == "auto-generated"
    body = mail.get_body(("plain",))
    assert body is not None
    found = re.search(r"(http://\S+/signin/\S+)", body.get_content())
    assert found, body.get_content()
    return found.group(1)


def _link(world: World) -> str:
    with world.sessions.begin() as session:
        token = websessions.create_link(session, session.get_one(Staff, world.richard))
    return f"{world.pages.url}/signin/{token}"


def _sign_in(browser: Browser, link: str) -> None:
    browser.page.goto(link)
    browser.page.click("#continue")
    browser.page.wait_for_url("**/integrations")


def _assert_page_is_strict(response: Any) -> None:
    headers = response.headers
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"


def test_signin_from_the_mailed_link_shows_the_integrations_page(
    world: World, browser: Browser
) -> None:
    """The mailed link signs Richard in, and the page shows his capture and log@ addresses."""
    page = browser.page
    response = page.goto(f"{world.pages.url}/signin")
    _assert_page_is_strict(response)
    browser.shot("signin")
    page.fill("#address", world.demo.staff_address)
    page.click("button[type=submit]")
    page.wait_for_selector("#sent")
    browser.shot("signin-sent")
    link = _queued_link(world, world.demo.staff_address)
    assert link.startswith(world.pages.url)

    response = page.goto(link)
    _assert_page_is_strict(response)
    browser.shot("signin-link")
    with page.expect_response(lambda r: r.url.endswith("/integrations")) as answer:
        page.click("#continue")
    _assert_page_is_strict(answer.value)
    assert page.text_content("#capture-address") == world.demo.user_capture
    assert page.text_content("#log-address") == world.demo.log_capture
    assert page.text_content("#forwarding-state").strip() == "Never checked."
    assert "Quote for the new office" in page.text_content("#activities")
    assert "5.7.520" in page.content()
    browser.shot("integrations")

    (cookie,) = [c for c in page.context.cookies() if c["name"] == "mailledger_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    # No inline script: every script has a src, and nothing failed or was blocked.
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    assert browser.errors == []
    assert [m for m in browser.console if m.startswith("error")] == []


def test_an_unknown_address_gets_the_same_answer_and_no_mail(
    world: World, browser: Browser
) -> None:
    """Nobody learns from the sign-in form whether an address has an account."""
    page = browser.page
    page.goto(f"{world.pages.url}/signin")
    page.fill("#address", "stranger@nowhere.test")
    page.click("button[type=submit]")
    page.wait_for_selector("#sent")
    time.sleep(0.5)
    with world.sessions() as session:
        assert session.scalars(select(OutboundMessage)).first() is None


def test_a_reused_or_expired_link_is_refused(world: World, browser: Browser) -> None:
    """A link works once, and not after its 15 minutes."""
    page = browser.page
    link = _link(world)
    _sign_in(browser, link)
    page.context.clear_cookies()
    response = page.goto(link)
    assert response.status == 400
    assert "expired or was used" in page.text_content("#refused")
    browser.shot("refused")

    expired = _link(world)
    with world.sessions.begin() as session:
        session.execute(
            update(SigninToken)
            .where(SigninToken.used_at.is_(None))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert page.goto(expired).status == 400
    assert page.goto(f"{world.pages.url}/integrations").url.endswith("/signin")


def test_another_tenants_activity_is_not_found(world: World, browser: Browser) -> None:
    """A URL naming another tenant's activity answers 404, like one that does not exist."""
    page = browser.page
    _sign_in(browser, _link(world))
    own = page.goto(f"{world.pages.url}/activities/{world.own_activity}")
    assert own.status == 200
    _assert_page_is_strict(own)
    assert page.text_content("h1") == "Quote for the new office"
    browser.shot("activity")
    foreign = page.goto(f"{world.pages.url}/activities/{world.other_activity}")
    assert foreign.status == 404
    assert "Globex" not in page.content()
    browser.shot("notfound")
    assert page.goto(f"{world.pages.url}/activities/999999").status == 404


def test_a_post_without_the_csrf_token_is_refused(world: World, browser: Browser) -> None:
    """Sign-out and sign-in forms posted without their token change nothing."""
    page = browser.page
    _sign_in(browser, _link(world))
    answer = page.request.post(f"{world.pages.url}/signout", form={"other": "x"})
    assert answer.status == 403
    # Still signed in: the session was not ended.
    assert page.goto(f"{world.pages.url}/integrations").url.endswith("/integrations")
    forged = page.request.post(
        f"{world.pages.url}/signin", form={"address": world.demo.staff_address, "csrf": "guess"}
    )
    assert forged.status == 403
    with world.sessions() as session:
        assert session.scalars(select(OutboundMessage)).first() is None
    # With its token, sign-out works and the cookie stops working.
    page.click("button.link")
    page.wait_for_url("**/signin")
    assert page.goto(f"{world.pages.url}/integrations").url.endswith("/signin")
