"""The web pages in headless Chromium against the real HTTP server: sign-in, integrations, 404s.

Debian's chromium drives the pages through Playwright (never `playwright install`); .ci/run
installs it. Every page's screenshot is kept under the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
from mailledger.web.app import build_app
from mailledger.web.serving import HTTPServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)
sync_api = pytest.importorskip("playwright.sync_api")


class RunningPages:
    """The HTTP server with the pages, on its own event loop in a thread, on a loopback port."""

    def __init__(self, sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings):
        self.app = build_app(sessions, blobs, settings.http, site=settings)
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = HTTPServer(self.app, "127.0.0.1:0", trusted_proxies=[], grace_seconds=1)
        self.url = ""

    def __enter__(self) -> RunningPages:
        self.thread.start()
        host, port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.url = f"http://{host}:{port}"
        # Mailed links must point at this server: its port is known only now.
        http = self.settings.http.model_copy(update={"public_url": self.url})
        self.app.state.pages.settings = self.settings.model_copy(update={"http": http})
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Browser:
    """One Chromium page, with what it said on the console and what it threw."""

    page: Any
    shots: Path
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


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
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = chromium.new_context(viewport={"width": 1000, "height": 900})
        page = context.new_page()
        found = Browser(page, shots)
        page.on("console", lambda m: found.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: found.errors.append(str(e)))
        try:
            yield found
        finally:
            context.close()
            chromium.close()


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
