"""The tenant admin's pages for staff, contacts and companies, never-log and quarantine, in
headless Chromium against the real HTTP server.

Every page's screenshot is kept under the test's tmp dir. The processing worker is the real
one, run step by step: a released message is processed as ``serve`` would process it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.capture.worker import Worker
from mailledger.cli.demo import DemoAddresses
from mailledger.config import Settings, VerifySettings
from mailledger.store import directory
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    Activity,
    Company,
    Contact,
    ContactAddress,
    MessageState,
    NeverLog,
    Participant,
    ReceivedMessage,
    Staff,
    Tenant,
)
from mailledger.testing.mail import make_email, store_received
from mailledger.testing.received import insert_quarantined
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

FORM = {"content-type": "application/x-www-form-urlencoded"}


@dataclass
class World:
    pages: RunningPages
    sessions: sessionmaker[Session]
    blobs: BlobStore
    settings: Settings
    demo: DemoAddresses
    acme: int
    richard: int  # acme's admin
    nora: int  # acme staff, not an admin
    other: dict[str, int]  # globex's rows of every kind

    @property
    def url(self) -> str:
        return self.pages.url


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback senders count as authenticated forwarders, as in the demo."""
    return settings.model_copy(update={"verify": VerifySettings(demo_trust_loopback=True)})


@pytest.fixture
def world(
    sessions: sessionmaker[Session], blobs: BlobStore, settings: Settings, demo: DemoAddresses
) -> Iterator[World]:
    """acme (the demo) with Richard as its admin and Nora as plain staff; globex with one row
    of every kind an admin page names by id."""
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        richard = directory.find_staff(session, acme, "richard")
        directory.set_admin(session, richard, True)
        nora = directory.add_staff(session, acme, "nora", ["nora@acme.example"], name="Nora")
        globex = directory.add_tenant(session, "globex", "globex.capture.example")
        olga = directory.add_staff(session, globex, "olga", ["olga@globex.example"])
        directory.set_admin(session, olga, True)
        other = {
            "staff": olga.id,
            "contact": directory.add_contact(session, globex, ["road@runner.example"]).id,
            "company": directory.create_company(session, globex, "Acme Rockets", []).id,
            "never_log": directory.add_never_log(session, globex, "secret.example").id,
            "message": insert_quarantined(session, globex, olga, blobs=blobs),
        }
        ids = (acme.id, richard.id, nora.id)
    with RunningPages(sessions, blobs, settings) as pages:
        yield World(pages, sessions, blobs, settings, demo, *ids, other)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Headless Debian Chromium; console messages and page errors are collected."""
    with chromium_page(tmp_path / "screenshots") as found:
        # The delete and remove buttons ask first (static/admin.js): say yes.
        found.page.on("dialog", lambda dialog: dialog.accept())
        yield found


def _admin(world: World, browser: Browser) -> None:
    sign_in(browser, signin_link(world.sessions, world.url, world.richard))


def _token(browser: Browser) -> str:
    """The session's CSRF token, as every signed-in page carries it."""
    value = browser.page.get_attribute("input[name=csrf]", "value")
    assert value
    return str(value)


def _clean(browser: Browser) -> None:
    """No script failed, the page has no inline script (the CSP would block it), and nothing
    was blocked; the only console errors are the 4xx answers the test asked for."""
    page = browser.page
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    assert browser.errors == []
    expected = "Failed to load resource: the server responded with a status of 4"
    assert [m for m in browser.console if m.startswith("error") and expected not in m] == []


def _staff(world: World, username: str) -> Staff:
    with world.sessions() as session:
        return session.scalars(
            select(Staff).where(Staff.tenant_id == world.acme, Staff.username == username)
        ).one()


def test_an_admin_adds_disables_and_removes_staff_and_contacts(
    world: World, browser: Browser
) -> None:
    """Staff and contacts are added, changed and removed from the pages, through the same
    store rules as the CLI: a taken username or a free-mail company domain is refused with
    the reason, and the last admin cannot unmake or remove himself."""
    page = browser.page
    _admin(world, browser)
    page.click("nav a[href='/admin']")
    page.click("a[href='/admin/staff']")
    assert "richard" in page.text_content("#staff")
    browser.shot("admin-staff")

    page.fill("#username", "richard")
    page.fill("#addresses", "someone@acme.example")
    with page.expect_response("**/admin/staff") as answer:
        page.click("#add-staff button[type=submit]")
    assert answer.value.status == 422
    assert "already has a staff member" in page.text_content("#error")
    assert page.input_value("#addresses") == "someone@acme.example"

    page.fill("#username", "dana")
    page.fill("#name", "Dana Scully")
    page.fill("#addresses", "dana@acme.example, dana.scully@gmail.com")
    page.click("#add-staff button[type=submit]")
    page.wait_for_selector("#done")
    row = page.locator("#staff tr[data-username=dana]")
    assert "danascully@gmail.com" in row.text_content()  # Gmail ignores dots (DESIGN §5)
    assert "never checked" in row.text_content()
    page.click("#staff a:text('dana')")
    browser.shot("admin-staff-one")

    page.click("#disable button")
    page.wait_for_selector("#done")
    assert page.text_content("#member-state").startswith("disabled")
    assert _staff(world, "dana").disabled_at is not None
    page.click("#enable button")
    page.wait_for_selector("#done")
    assert _staff(world, "dana").disabled_at is None
    page.click("#admin button")
    page.wait_for_selector("#done")
    assert _staff(world, "dana").admin
    page.click("#admin button")
    page.wait_for_selector("#done")
    assert not _staff(world, "dana").admin

    page.click("#remove button")  # no history choice: refused, nothing removed
    assert "history" in page.text_content("#error")
    assert _staff(world, "dana").removed_at is None
    page.check("#remove input[value=keep]")
    page.click("#remove button")
    page.wait_for_url("**/admin/staff?done=removed")
    assert "removed" in page.text_content("#staff tr[data-username=dana]")
    assert _staff(world, "dana").removed_at is not None

    # Richard is the only admin: he may neither unmake nor remove himself.
    page.goto(f"{world.url}/admin/staff/{world.richard}")
    page.click("#admin button")
    assert "only admin" in page.text_content("#error")
    page.check("#remove input[value=remove]")
    page.click("#remove button")
    assert "only admin" in page.text_content("#error")
    assert _staff(world, "richard").admin and _staff(world, "richard").removed_at is None

    page.goto(f"{world.url}/admin/contacts")
    browser.shot("admin-contacts")
    page.fill("#contact-addresses", "Erin@Prospect.example")
    page.fill("#contact-name", "Erin Example")
    page.fill("#contact-company", "Prospect Ltd")
    page.click("#add-contact button[type=submit]")
    page.wait_for_selector("#done")
    erin = page.locator("#contacts tr", has_text="erin@prospect.example")
    assert "Prospect Ltd" in erin.text_content()
    contact_id = int(str(erin.get_attribute("data-contact")))
    assert erin.locator("a", has_text="Erin Example").get_attribute("href") == (
        f"/contacts/{contact_id}"
    )
    page.fill("#contact-addresses", "erin@prospect.example")
    page.click("#add-contact button[type=submit]")
    assert "already a contact" in page.text_content("#error")

    page.fill("#company-name", "Webmail Fans")
    page.fill("#company-domains", "gmail.com")
    page.click("#add-company button[type=submit]")
    assert "free-mail" in page.text_content("#error")
    page.fill("#company-name", "Initech")
    page.fill("#company-domains", "initech.example")
    page.click("#add-company button[type=submit]")
    page.wait_for_selector("#done")
    page.fill("#company-name", "Initech")
    page.fill("#company-domains", "")
    page.click("#add-company button[type=submit]")
    assert "already has a company" in page.text_content("#error")

    page.fill("#q", "prosp")
    page.click("form.search button")
    assert page.locator("#contacts tr[data-contact]").count() == 1
    assert page.locator("#company-list tr[data-company]").count() == 1  # Prospect Ltd
    page.fill("#q", "initech.ex")
    page.click("form.search button")
    assert page.locator("#contacts tr[data-contact]").count() == 0
    assert "Initech" in page.text_content("#company-list")
    browser.shot("admin-contacts-search")

    page.goto(f"{world.url}/admin/contacts/{contact_id}")
    page.fill("#name", "Erin Prospect")
    page.fill("#add_addresses", "erin@home.example")
    page.click("#edit-contact button[type=submit]")
    page.wait_for_selector("#done")
    assert page.text_content("h1") == "Erin Prospect"
    browser.shot("admin-contact")
    page.check("#remove input[value=remove]")
    page.click("#remove button")
    page.wait_for_url("**/admin/contacts?done=contact-removed")
    with world.sessions() as session:
        assert session.get(Contact, contact_id) is None
        assert not session.scalars(
            select(ContactAddress).where(ContactAddress.address == "erin@home.example")
        ).first()
        initech = session.scalars(select(Company).where(Company.name == "Initech")).one().id

    page.goto(f"{world.url}/admin/companies/{initech}")
    browser.shot("admin-company")
    page.check("#edit-company input[value='initech.example']")
    page.click("#edit-company button[type=submit]")
    page.wait_for_selector("#done")
    assert "initech.example" not in page.text_content("#edit-company")
    page.click("#remove button")
    page.wait_for_url("**/admin/contacts?done=company-removed*")
    with world.sessions() as session:
        assert session.get(Company, initech) is None
    _clean(browser)


def test_never_log_entries_are_added_and_removed(world: World, browser: Browser) -> None:
    """Tenant-wide and per-staff entries, a bad pattern refused with the reason."""
    page = browser.page
    _admin(world, browser)
    page.goto(f"{world.url}/admin/never-log")
    page.fill("#pattern", "not a domain!")
    page.click("#add-entry button[type=submit]")
    assert "not a domain" in page.text_content("#error")
    page.fill("#pattern", "HR.example")
    page.click("#add-entry button[type=submit]")
    page.wait_for_selector("#done")
    page.fill("#pattern", "doctor@clinic.example")
    page.select_option("#staff", "nora")
    page.click("#add-entry button[type=submit]")
    page.wait_for_selector("#done")
    assert "nora" in page.text_content("#entries tr[data-pattern='doctor@clinic.example']")
    assert "everyone" in page.text_content("#entries tr[data-pattern='hr.example']")
    browser.shot("admin-never-log")
    page.click("#entries tr[data-pattern='hr.example'] button")
    page.wait_for_selector("#done")
    with world.sessions() as session:
        left = session.scalars(select(NeverLog.pattern).where(NeverLog.tenant_id == world.acme))
        assert list(left) == ["doctor@clinic.example"]
    _clean(browser)


def _process_waiting(world: World) -> None:
    """What the processing worker of ``serve`` does next: claim and process waiting mail."""
    worker = Worker(world.sessions, world.blobs, world.settings)
    for message_id in worker.claim_batch():
        worker.process_one(message_id)


def test_a_released_message_becomes_an_activity(world: World, browser: Browser) -> None:
    """Mail from an unknown sender is quarantined by the pipeline; the admin reads why and the
    trace, downloads the raw bytes as plain text, adds the sender as a contact and releases
    it: the worker records it, and it shows on the contact's timeline."""
    raw = make_email(
        sender="Newt Scamander <newt@prospect.example>",
        subject="Beasts, and where to find them",
        body="Hello Richard,\r\n<b>not markup</b>\r\nNewt\r\n",
    )
    held = store_received(
        world.sessions,
        world.blobs,
        raw,
        [world.demo.user_capture],
        mail_from="newt@prospect.example",
    )
    _process_waiting(world)
    with world.sessions.begin() as session:
        message = session.get_one(ReceivedMessage, held)
        assert message.state is MessageState.QUARANTINED
        assert message.reason.startswith("unknown-sender")
        # Another held message, for a second reason in words.
        insert_quarantined(
            session,
            session.get_one(Tenant, world.acme),
            session.get_one(Staff, world.richard),
            reason="auto-reply: Auto-Submitted: auto-replied",
        )

    page = browser.page
    _admin(world, browser)
    page.goto(f"{world.url}/admin/quarantine")
    row = page.locator(f"#quarantine tr[data-message='{held}']")
    assert "newt@prospect.example" in row.text_content()
    assert f"to {world.demo.user_capture}" in row.text_content()
    assert "not one of your contacts" in row.text_content()
    assert "automatic reply" in page.text_content("#quarantine")
    # globex's quarantined message is not listed.
    assert page.locator(f"#quarantine tr[data-message='{world.other['message']}']").count() == 0
    browser.shot("admin-quarantine")

    page.click(f"#quarantine tr[data-message='{held}'] a")
    assert "Add them as a contact" in page.text_content("#reason-words")
    assert page.text_content("#reason").startswith("unknown-sender")
    trace = page.text_content("#trace")
    assert "intake" in trace and "quarantine" in trace
    browser.shot("admin-quarantine-one")
    raw_url = page.get_attribute("#raw", "href")
    download = page.request.get(f"{world.url}{raw_url}")
    assert download.status == 200
    assert download.headers["content-type"].startswith("text/plain")
    assert download.headers["content-disposition"].startswith("attachment")
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.body() == raw

    page.goto(f"{world.url}/admin/contacts")
    page.fill("#contact-addresses", "newt@prospect.example")
    page.fill("#contact-name", "Newt Scamander")
    page.click("#add-contact button[type=submit]")
    page.wait_for_selector("#done")
    page.goto(f"{world.url}/admin/quarantine/{held}")
    page.click("#release button")
    page.wait_for_url("**/admin/quarantine?released=1*")
    assert "1 message(s) released" in page.text_content("#done")
    with world.sessions() as session:
        assert session.get_one(ReceivedMessage, held).state is MessageState.RECEIVED

    _process_waiting(world)
    with world.sessions() as session:
        assert session.get_one(ReceivedMessage, held).state is MessageState.PROCESSED
        activity = session.scalars(
            select(Activity).where(Activity.subject == "Beasts, and where to find them")
        ).one()
        assert activity.tenant_id == world.acme
        newt = session.scalars(
            select(Participant.contact_id).where(
                Participant.activity_id == activity.id,
                Participant.address == "newt@prospect.example",
            )
        ).one()
        assert newt is not None
    # The released message is no longer in the quarantine; the contact's timeline shows it.
    assert page.goto(f"{world.url}/admin/quarantine/{held}").status == 404
    timeline = page.goto(f"{world.url}/contacts/{newt}")
    assert timeline.status == 200
    assert "Beasts, and where to find them" in page.content()
    browser.shot("contact-timeline")
    _clean(browser)


def test_bulk_delete_of_two_quarantined_messages(world: World, browser: Browser) -> None:
    """Two ticked messages go with their raw bytes in one form; the unticked one stays."""
    with world.sessions.begin() as session:
        acme = session.get_one(Tenant, world.acme)
        richard = session.get_one(Staff, world.richard)
        ids = [
            insert_quarantined(
                session, acme, richard, blobs=world.blobs, raw=f"Subject: {n}\r\n\r\nx\r\n".encode()
            )
            for n in ("one", "two", "three")
        ]
        digests = [session.get_one(ReceivedMessage, i).blob for i in ids]
    page = browser.page
    _admin(world, browser)
    page.goto(f"{world.url}/admin/quarantine")
    assert page.locator("#quarantine input[name=id]").count() == 3
    page.check("#select-all")  # admin.js ticks every box
    assert page.locator("#quarantine input[name=id]:checked").count() == 3
    page.uncheck("#select-all")
    assert page.locator("#quarantine input[name=id]:checked").count() == 0
    page.click("#delete-ticked")  # nothing ticked: said so, nothing deleted
    assert "Tick the messages" in page.text_content("#error")
    for message_id in ids[:2]:
        page.check(f"#quarantine input[value='{message_id}']")
    browser.shot("admin-quarantine-ticked")
    page.click("#delete-ticked")
    page.wait_for_url("**/admin/quarantine?deleted=2*")
    assert "2 message(s) deleted" in page.text_content("#done")
    assert page.locator("#quarantine input[name=id]").count() == 1
    with world.sessions() as session:
        assert [session.get(ReceivedMessage, i) is None for i in ids] == [True, True, False]
    assert [world.blobs.path(d).exists() for d in digests] == [False, False, True]
    _clean(browser)


def _admin_urls(world: World, own: dict[str, int]) -> list[str]:
    return [
        "/admin",
        "/admin/staff",
        f"/admin/staff/{own['staff']}",
        "/admin/contacts",
        f"/admin/contacts/{own['contact']}",
        f"/admin/companies/{own['company']}",
        "/admin/never-log",
        "/admin/quarantine",
        f"/admin/quarantine/{own['message']}",
        f"/admin/quarantine/{own['message']}/raw",
    ]


def _posts(rows: dict[str, int]) -> list[tuple[str, str]]:
    """Every admin form, aimed at ``rows``: (path, body without the token)."""
    staff, contact, company = rows["staff"], rows["contact"], rows["company"]
    message, entry = rows["message"], rows["never_log"]
    return [
        (f"/admin/staff/{staff}/disable", ""),
        (f"/admin/staff/{staff}/enable", ""),
        (f"/admin/staff/{staff}/admin", "admin=no"),
        (f"/admin/staff/{staff}/remove", "history=remove"),
        (f"/admin/contacts/{contact}", "name=x&company="),
        (f"/admin/contacts/{contact}/remove", "history=remove"),
        (f"/admin/companies/{company}", "name=x"),
        (f"/admin/companies/{company}/remove", ""),
        (f"/admin/never-log/{entry}/remove", ""),
        (f"/admin/quarantine/{message}/release", ""),
        (f"/admin/quarantine/{message}/delete", ""),
        ("/admin/quarantine", f"action=delete&id={message}"),
    ]


def _acme_rows(world: World) -> dict[str, int]:
    with world.sessions.begin() as session:
        acme = session.get_one(Tenant, world.acme)
        richard = session.get_one(Staff, world.richard)
        return {
            "staff": world.nora,
            "contact": directory.find_contact(session, acme, world.demo.contact_address).id,
            "company": directory.find_company(session, acme, "Client Co").id,
            "never_log": directory.add_never_log(session, acme, "hr.example").id,
            "message": insert_quarantined(session, acme, richard, blobs=world.blobs),
        }


def _counts(world: World) -> tuple[int, ...]:
    """How many rows of each kind the admin forms change; equal before and after: no change."""
    with world.sessions() as session:
        return tuple(
            int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)
            for model, where in (
                (Staff, [Staff.disabled_at.is_(None), Staff.removed_at.is_(None), Staff.admin]),
                (Staff, [Staff.disabled_at.is_(None)]),
                (Contact, []),
                (Company, []),
                (NeverLog, []),
                (ReceivedMessage, [ReceivedMessage.state == MessageState.QUARANTINED]),
            )
        )


def test_a_staff_member_who_is_not_an_admin_gets_404_everywhere(
    world: World, browser: Browser
) -> None:
    """Nora sees no admin link, and every admin URL (pages and forms, with her own valid
    token) answers 404 as if it did not exist; signed out, they lead to the sign-in page."""
    own = _acme_rows(world)
    page = browser.page
    assert page.goto(f"{world.url}/admin/staff").url.endswith("/signin")
    sign_in(browser, signin_link(world.sessions, world.url, world.nora))
    assert page.locator("nav a[href='/admin']").count() == 0
    token = _token(browser)
    for url in _admin_urls(world, own):
        response = page.goto(f"{world.url}{url}")
        assert response.status == 404, url
        assert "Not found" in page.text_content("h1"), url
    browser.shot("non-admin-404")
    before = _counts(world)
    for url, body in _posts(own):
        answer = page.request.post(f"{world.url}{url}", data=f"csrf={token}&{body}", headers=FORM)
        assert answer.status == 404, url
    assert _counts(world) == before


def test_another_tenants_ids_are_not_found(world: World, browser: Browser) -> None:
    """Richard, acme's admin, gets 404 for globex's staff, contact, company, never-log entry
    and quarantined message, on every page and form, and nothing of globex's changes; a bulk
    form mixing his own message with globex's changes neither."""
    own = _acme_rows(world)
    page = browser.page
    _admin(world, browser)
    token = _token(browser)
    foreign = _admin_urls(world, world.other)
    for url in foreign[2:]:
        if url.count("/") < 3:  # the lists: his own tenant's, without globex's rows
            assert page.goto(f"{world.url}{url}").status == 200, url
            assert "road@runner.example" not in page.content()
            assert "Acme Rockets" not in page.content()
            assert "secret.example" not in page.content()
            continue
        assert page.goto(f"{world.url}{url}").status == 404, url
        assert "globex" not in page.content().lower()
    before = _counts(world)
    for url, body in _posts(world.other):
        answer = page.request.post(f"{world.url}{url}", data=f"csrf={token}&{body}", headers=FORM)
        assert answer.status == 404, url
    mixed = page.request.post(
        f"{world.url}/admin/quarantine",
        data=f"csrf={token}&action=delete&id={own['message']}&id={world.other['message']}",
        headers=FORM,
    )
    assert mixed.status == 404
    assert _counts(world) == before
    with world.sessions() as session:
        assert session.get(ReceivedMessage, own["message"]) is not None


def test_a_post_without_the_csrf_token_is_refused(world: World, browser: Browser) -> None:
    """Every admin form posted without the session's token, or with another, answers 403 and
    changes nothing; with it, the same form works."""
    own = _acme_rows(world)
    page = browser.page
    _admin(world, browser)
    token = _token(browser)
    before = _counts(world)
    forms: list[tuple[str, str]] = [
        ("/admin/staff", "username=mallory&addresses=mallory%40acme.example"),
        ("/admin/contacts", "addresses=mallory%40evil.example"),
        ("/admin/companies", "name=Evil"),
        ("/admin/never-log", "pattern=evil.example"),
        *_posts(own),
    ]
    for url, body in forms:
        for sent in (body, f"csrf=guess&{body}"):
            answer = page.request.post(f"{world.url}{url}", data=sent, headers=FORM)
            assert answer.status == 403, (url, sent)
            assert "security token" in answer.text()
    # A form that is not urlencoded is never read as one.
    as_json = page.request.post(
        f"{world.url}/admin/staff/{world.nora}/disable", data={"csrf": token}
    )
    assert as_json.status == 403
    assert _counts(world) == before
    answer = page.request.post(
        f"{world.url}/admin/staff/{world.nora}/disable", data=f"csrf={token}", headers=FORM
    )
    assert answer.ok
    assert _staff(world, "nora").disabled_at is not None


def test_the_quarantine_page_reads_on_a_phone(world: World, tmp_path: Path) -> None:
    """At a phone's width the quarantine list needs no sideways scrolling."""
    with world.sessions.begin() as session:
        acme = session.get_one(Tenant, world.acme)
        richard = session.get_one(Staff, world.richard)
        insert_quarantined(session, acme, richard, blobs=world.blobs)
    with chromium_page(tmp_path / "phone", width=390, height=844) as phone:
        sign_in(phone, signin_link(world.sessions, world.url, world.richard))
        phone.page.goto(f"{world.url}/admin/quarantine")
        width: Any = phone.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390
        phone.shot("admin-quarantine-phone")
        _clean(phone)
