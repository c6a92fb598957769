"""The calendar page in headless Chromium: a private calendar's appointments are busy blocks
to a colleague it is not shared with, and in full to its owner and those it is shared with."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings
from mailledger.store import calendars, directory
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    CalendarEvent,
    CalendarPrivacy,
    EventOrigin,
    Staff,
    Tenant,
    utcnow,
)
from mailledger.store.secretbox import SecretBox
from mailledger.testing.webpages import (
    CHROMIUM,
    Browser,
    RunningPages,
    chromium_page,
    sign_in,
    signin_link,
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
)
pytest.importorskip("playwright.sync_api")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with chromium_page(tmp_path / "screenshots") as found:
        yield found


def test_a_private_calendar_is_busy_blocks_to_colleagues_it_is_not_shared_with(
    settings: Settings,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    demo: DemoAddresses,
    browser: Browser,
) -> None:
    start = (utcnow() + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        bob = directory.add_staff(session, acme, "bob", ["bob@acme.example"]).id
        cleo = directory.add_staff(session, acme, "cleo", ["cleo@acme.example"]).id
        account = calendars.add_account(
            session,
            SecretBox.from_file(settings.secrets.key_file),
            calendars.CalendarRequest(
                tenant=acme,
                username="richard",
                url="http://127.0.0.1:9/",
                login="richard",
                password="x",
                privacy=CalendarPrivacy.PRIVATE,
                share_with=["bob"],
            ),
            calendar_url="http://127.0.0.1:9/richard/work/",
            calendar_name="Work",
            now=utcnow(),
        )
        session.add(
            CalendarEvent(
                account_id=account.id,
                tenant_id=acme.id,
                href="/richard/work/salary.ics",
                etag='"1"',
                uid="salary-1",
                origin=EventOrigin.CALENDAR,
                summary="Salary talk with Carol",
                start_at=start,
                end_at=start + timedelta(hours=1),
                attendees=[{"address": "carol@client.example", "name": "", "status": ""}],
            )
        )
        richard = session.scalars(select(Staff.id).where(Staff.username == "richard")).one()
    with RunningPages(sessions, blobs, settings) as pages:
        sign_in(browser, signin_link(sessions, pages.url, cleo))
        browser.page.goto(f"{pages.url}/calendar")
        row = browser.page.locator("#events tbody tr")
        assert row.count() == 1
        assert row.first.get_attribute("class") == "busy"
        text = row.first.inner_text()
        assert "Busy" in text and "richard" in text
        assert "Salary" not in browser.page.content()
        assert "carol@client.example" not in browser.page.content()
        browser.shot("calendar-busy")
        for who in (bob, richard):
            browser.page.context.clear_cookies()
            sign_in(browser, signin_link(sessions, pages.url, who))
            browser.page.goto(f"{pages.url}/calendar")
            row = browser.page.locator("#events tbody tr")
            assert row.first.get_attribute("class") == "event"
            assert "Salary talk with Carol" in row.first.inner_text()
            assert "carol@client.example" in row.first.inner_text()
    assert browser.errors == []
