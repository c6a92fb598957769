"""The tenant admin's operations pages in headless Chromium: API tokens, webhooks with their
delivery log and replay, DNS records and the live check, the outbound queue.

Real parts throughout: the HTTP server on a loopback port, the webhook worker delivering to a
real receiver, the DNS check asking a DNS server on 127.0.0.1, the API answering the token
the page made. Every page's screenshot is kept under the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from mailledger.config import Settings, WebhookSettings
from mailledger.dnsauth.resolver import Resolver
from mailledger.store import apitokens, outbox, webhooks
from mailledger.store.models import (
    ApiToken,
    OutboundKind,
    Staff,
    Tenant,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from mailledger.store.secretbox import SecretBox
from mailledger.testing.api import bearer, insert_activity
from mailledger.testing.dnsserver import DNSServer
from mailledger.testing.webhookreceiver import WebhookReceiver
from mailledger.web.webhooks import WebhookWorker

try:  # the shared harness, wherever it lives
    from tests.integration.webpages import (
        Browser,
        World,
        _link,
        _sign_in,
        browser,
        world,
    )
except ImportError:
    from tests.integration.test_web_pages import (
        Browser,
        World,
        _link,
        _sign_in,
        browser,
        world,
    )

__all__ = ["browser", "world"]  # fixtures used by name

pytestmark = pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists(),
    reason="Debian's chromium is not installed (apt-get install chromium)",
)

RELAY = "192.0.2.10"
INCLUDE = "_spf.capture.example"
DOMAIN = "acme.example"
CAPTURE = "acme.capture.example"
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def dns_server() -> Iterator[DNSServer]:
    """The DNS server the pages' checks ask (and the webhook target lookups, never used:
    the receiver's URL is an address)."""
    with DNSServer() as server:
        yield server


@pytest.fixture
def settings(settings: Settings, dns_server: DNSServer, tmp_path: Path) -> Settings:
    """Webhooks to loopback with a fast schedule; our relay, SPF include and MX host; DNS on
    the test's server."""
    service = settings.service.model_copy(
        update={
            "relay_addresses": [RELAY],
            "spf_include_domain": INCLUDE,
            "hostname": "mx.capture.example",
        }
    )
    relay = settings.relay.model_copy(update={"dkim_key_dir": str(tmp_path / "dkim")})
    dns = settings.dns.model_copy(
        update={"nameservers": [dns_server.address], "timeout_seconds": 0.5}
    )
    hooks = WebhookSettings(
        allow_private_targets=True,
        retry_schedule_seconds=[0.2, 0.2],
        timeout_seconds=2.0,
        poll_interval_seconds=0.05,
        lease_seconds=5.0,
    )
    return settings.model_copy(
        update={"service": service, "relay": relay, "dns": dns, "webhooks": hooks}
    )


@pytest.fixture
def admin(world: World) -> World:
    """Richard, acme's staff member, made a tenant admin."""
    with world.sessions.begin() as session:
        session.execute(update(Staff).where(Staff.id == world.richard).values(admin=True))
    return world


def _tenant_id(sessions: sessionmaker[Session], name: str) -> int:
    with sessions() as session:
        return session.scalars(select(Tenant.id).where(Tenant.name == name)).one()


def _csrf(browser: Browser) -> str:
    token: str = browser.page.input_value("input[name=csrf]")
    return token


def _open(browser: Browser, url: str, status: int = 200) -> Any:
    """Go to ``url``; the answer has the status, no-store and the strict CSP."""
    response = browser.page.goto(url)
    _check_page(response, status)
    return response


def _submit(browser: Browser, selector: str, status: int = 200) -> Any:
    """Click a submit button and wait for the page it leads to (after any redirect)."""
    with browser.page.expect_navigation() as navigation:
        browser.page.click(selector)
    _check_page(navigation.value, status)
    return navigation.value


def _check_page(response: Any, status: int) -> None:
    assert response.status == status, response.url
    headers = response.headers
    assert headers["cache-control"] == "no-store"
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]


def _no_inline_script_or_errors(browser: Browser) -> None:
    page = browser.page
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    assert browser.errors == []
    # The refusals the test asked for are logged by Chromium as failed loads; nothing else.
    expected = re.compile(r"error: Failed to load resource: .* status of (400|403|404|422) ")
    assert [m for m in browser.console if m.startswith("error") and not expected.match(m)] == []


def _fits_a_phone(browser: Browser, name: str) -> None:
    """At a phone's width nothing runs off the side of the page."""
    page = browser.page
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), name
    browser.shot(f"{name}-phone")
    page.set_viewport_size({"width": 1000, "height": 900})


@contextlib.contextmanager
def _delivering(world: World) -> Iterator[None]:
    """The webhook worker serve() runs, on the pages server's event loop."""
    settings = world.pages.app.state.pages.settings
    worker = WebhookWorker(world.sessions, settings, Resolver(settings.dns))
    loop = world.pages.loop
    running = asyncio.run_coroutine_threadsafe(worker.run(), loop)
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(worker.stop(), loop).result(20)
        running.result(20)


def _activity_event(world: World, tenant: str, subject: str) -> None:
    """An activity recorded for ``tenant``, with its ``activity.created`` event."""
    with world.sessions.begin() as session:
        tenant_id = session.scalars(select(Tenant.id).where(Tenant.name == tenant)).one()
        activity = insert_activity(session, tenant_id, subject=subject)
        webhooks.activity_changed(session, tenant_id, activity, webhooks.ACTIVITY_CREATED)


def test_an_api_token_made_in_the_page_works_until_revoked_there(
    admin: World, browser: Browser
) -> None:
    """The token the page shows once reads /v1/activities; after Revoke it gets a 401. The
    other tenant's token id is a 404 and that token keeps working."""
    world, page, url = admin, browser.page, admin.pages.url
    with world.sessions.begin() as session:
        globex = session.scalars(select(Tenant).where(Tenant.name == "globex")).one()
        foreign_row, foreign_token = apitokens.create_token(session, globex, name="globex crm")
        foreign_id = foreign_row.id
    _sign_in(browser, _link(world))
    _open(browser, f"{url}/admin/tokens")
    assert "globex crm" not in page.content()
    browser.shot("tokens")

    page.fill("#name", "CRM sync")
    _submit(browser, "#create", status=201)
    token = page.text_content("#new-token") or ""
    assert token.startswith(apitokens.TOKEN_PREFIX)
    assert token not in page.url
    assert page.is_visible("button[data-copy=new-token]")
    browser.shot("token-created")
    _no_inline_script_or_errors(browser)

    answer = httpx.get(f"{url}/v1/activities", headers=bearer(token))
    assert answer.status_code == 200, answer.text
    with world.sessions() as session:
        row = session.scalars(select(ApiToken).where(ApiToken.name == "CRM sync")).one()
    # Shown once: the list has its first characters and its last use, never the token.
    _open(browser, f"{url}/admin/tokens")
    assert token not in page.content()
    listed = page.text_content(f"#token-{row.id}") or ""
    assert "CRM sync" in listed and row.prefix in listed and "never" not in listed

    _submit(browser, f"#revoke-{row.id}")
    assert page.url.endswith("/admin/tokens?done=revoked")
    assert "revoked" in (page.text_content(f"#token-{row.id}") or "")
    browser.shot("token-revoked")
    assert httpx.get(f"{url}/v1/activities", headers=bearer(token)).status_code == 401

    csrf = _csrf(browser)
    other = page.request.post(f"{url}/admin/tokens/{foreign_id}/revoke", form={"csrf": csrf})
    assert other.status == 404
    assert httpx.get(f"{url}/v1/activities", headers=bearer(foreign_token)).status_code == 200
    forged = page.request.post(f"{url}/admin/tokens", form={"name": "forged"})
    assert forged.status == 403
    too_long = page.request.post(f"{url}/admin/tokens", form={"csrf": csrf, "name": "x" * 201})
    assert too_long.status == 422 and "at most 200 characters" in too_long.text()
    with world.sessions() as session:
        names = set(session.scalars(select(ApiToken.name)))
    assert names == {"CRM sync", "globex crm"}


def test_a_webhook_added_in_the_page_delivers_and_replays_with_the_same_id(
    admin: World, browser: Browser
) -> None:
    """Add an endpoint (secret shown once), an event reaches the receiver signed with that
    secret, the log shows the attempt, Replay sends it again with the same webhook-id."""
    world, page, url = admin, browser.page, admin.pages.url
    _sign_in(browser, _link(world))
    with WebhookReceiver() as receiver, _delivering(world):
        _open(browser, f"{url}/admin/webhooks")
        browser.shot("webhooks-empty")
        page.fill("#url", "ftp://crm.example/hook")
        _submit(browser, "#add", status=422)
        assert "not an http:// or https:// URL" in (page.text_content("#error") or "")
        assert page.input_value("#url") == "ftp://crm.example/hook"

        page.fill("#url", receiver.url("/hook"))
        page.check("input[value='activity.created']")
        _submit(browser, "#add", status=201)
        secret = page.text_content("#secret") or ""
        assert secret.startswith("whsec_") and secret not in page.url
        browser.shot("webhook-secret")
        with world.sessions() as session:
            endpoint = session.scalars(select(WebhookEndpoint)).one()
        assert endpoint.events == ["activity.created"]
        assert secret not in endpoint.secret  # kept sealed, never in clear

        _activity_event(world, "acme", "Signed contract")
        (first,) = receiver.wait_for(1, path="/hook")
        standardwebhooks.Webhook(secret).verify(first.body, first.headers)

        _open(browser, f"{url}/admin/webhooks")
        assert "active" in (page.text_content(f"#endpoint-{endpoint.id}") or "")
        _open(browser, f"{url}/admin/webhooks/{endpoint.id}")
        with world.sessions() as session:
            delivery = session.scalars(select(WebhookDelivery)).one()
        logged = page.text_content(f"#delivery-{delivery.id}") or ""
        assert "activity.created" in logged and "delivered" in logged
        assert "200" in logged and " ms" in logged and "ok" in logged
        assert first.headers["webhook-id"] in logged
        browser.shot("webhook-log")

        _submit(browser, f"#replay-{delivery.id}")
        assert "Replay queued" in (page.text_content("#done") or "")
        first_again, second = receiver.wait_for(2, path="/hook")
        assert first_again is first
        assert second.headers["webhook-id"] == first.headers["webhook-id"]
        standardwebhooks.Webhook(secret).verify(second.body, second.headers)
        _open(browser, f"{url}/admin/webhooks/{endpoint.id}")
        assert page.locator("li.delivery").count() == 2
        assert f"replay of {delivery.id}" in (page.text_content("#deliveries") or "")
        browser.shot("webhook-replayed")
        _fits_a_phone(browser, "webhook-log")
        _no_inline_script_or_errors(browser)

        _submit(browser, "#rotate")
        rotated = page.text_content("#secret") or ""
        assert rotated.startswith("whsec_") and rotated != secret
        assert page.is_visible("#overlap")
        browser.shot("webhook-rotated")


def test_a_private_webhook_target_is_refused_with_the_reason(
    admin: World, browser: Browser
) -> None:
    """With private targets not allowed, a loopback URL re-renders the form (422), saying
    which setting allows it; nothing is added."""
    world, page, url = admin, browser.page, admin.pages.url
    pages = world.pages.app.state.pages
    strict = pages.settings.webhooks.model_copy(update={"allow_private_targets": False})
    pages.settings = pages.settings.model_copy(update={"webhooks": strict})
    _sign_in(browser, _link(world))
    _open(browser, f"{url}/admin/webhooks")
    page.fill("#url", "http://127.0.0.1:8080/hook")
    _submit(browser, "#add", status=422)
    error = page.text_content("#error") or ""
    assert "127.0.0.1 is a loopback address" in error
    assert "[webhooks] allow_private_targets" in error
    browser.shot("webhook-refused")
    with world.sessions() as session:
        assert session.scalars(select(WebhookEndpoint)).first() is None


def test_another_tenants_webhook_ids_are_not_found(admin: World, browser: Browser) -> None:
    """Globex's endpoint and delivery ids are a 404 to acme's admin, for every page and action,
    and nothing of globex's changes."""
    world, page, url = admin, browser.page, admin.pages.url
    box = SecretBox.from_file(world.pages.app.state.pages.settings.secrets.key_file)
    with WebhookReceiver() as receiver:
        with world.sessions.begin() as session:
            acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
            globex = session.scalars(select(Tenant).where(Tenant.name == "globex")).one()
            ours, _ = webhooks.add_endpoint(session, acme, receiver.url("/acme"), box=box)
            theirs, _ = webhooks.add_endpoint(session, globex, receiver.url("/globex"), box=box)
            ours_id, theirs_id, theirs_secret = ours.id, theirs.id, theirs.secret
        _activity_event(world, "globex", "Globex secret plans")
        with world.sessions() as session:
            (foreign,) = session.scalars(select(WebhookDelivery.id))
        _sign_in(browser, _link(world))
        csrf = _csrf(browser)
        _open(browser, f"{url}/admin/webhooks/{theirs_id}", status=404)
        assert "globex" not in page.content().lower()
        for path in (
            f"/admin/webhooks/{theirs_id}/remove",
            f"/admin/webhooks/{theirs_id}/rotate",
            f"/admin/webhooks/{theirs_id}/enable",
            f"/admin/webhooks/{theirs_id}/deliveries/{foreign}/replay",
            f"/admin/webhooks/{ours_id}/deliveries/{foreign}/replay",
        ):
            answer = page.request.post(url + path, form={"csrf": csrf})
            assert answer.status == 404, path
            assert "whsec_" not in answer.text()
        _open(browser, f"{url}/admin/webhooks")
        assert receiver.url("/globex") not in page.content()
        with world.sessions() as session:
            kept = session.get_one(WebhookEndpoint, theirs_id)
            assert kept.secret == theirs_secret
            assert session.scalars(select(WebhookDelivery.id)).all() == [foreign]


def test_the_dns_page_shows_the_records_and_checks_them_live(
    admin: World, browser: Browser, dns_server: DNSServer
) -> None:
    """The records to paste per domain, then Check now against the test's DNS server: SPF
    wrong (our include missing) with the fix, MX missing; once the MX is published, it is ok."""
    world, page, url = admin, browser.page, admin.pages.url
    dns_server.add(DOMAIN, "TXT", "v=spf1 mx -all")
    _sign_in(browser, _link(world))
    _open(browser, f"{url}/admin/dns")
    customer = page.locator(f'[id="domain-{DOMAIN}"]')
    capture = page.locator(f'[id="domain-{CAPTURE}"]')
    spf_value = customer.locator("code.value").first.text_content() or ""
    assert f"include:{INCLUDE}" in spf_value and "mx" in spf_value
    assert "_dmarc.acme.example" in (customer.text_content() or "")
    assert "mx.capture.example." in (capture.text_content() or "")
    assert customer.locator("button.copy").count() >= 2
    assert "Not checked yet" in (page.text_content("#checked-at") or "")
    browser.shot("dns")

    _submit(browser, "#check-now")
    assert "to fix" in (page.text_content("#checked-at") or "")
    spf = customer.locator("li.check").filter(has_text="SPF").first
    assert "wrong" in (spf.text_content() or "")
    assert f"our include:{INCLUDE} is missing" in (spf.text_content() or "")
    assert f"include:{INCLUDE}" in (spf.locator("code[id$=-fix]").text_content() or "")
    assert "missing" in (capture.locator("li.check").text_content() or "")
    browser.shot("dns-checked")
    _fits_a_phone(browser, "dns-checked")
    _no_inline_script_or_errors(browser)

    dns_server.add(CAPTURE, "MX", (10, "mx.capture.example"))
    _submit(browser, "#check-now")
    fixed = capture.locator("li.check-ok").text_content() or ""
    assert "MX points at mx.capture.example" in fixed
    # The last check stays on the page until the next one, kept with who ran it.
    _open(browser, f"{url}/admin/dns")
    assert "Last checked" in (page.text_content("#checked-at") or "")
    assert "by richard on this page" in (page.text_content("#checked-at") or "")
    assert capture.locator("li.check-ok").count() == 1
    forged = page.request.post(f"{url}/admin/dns/check", form={"csrf": "guess"})
    assert forged.status == 403


def test_the_queue_page_lists_the_tenants_outbound_mail(admin: World, browser: Browser) -> None:
    """Queued and deferred mail of acme, newest first, with the last reply in words; globex's
    mail is not there; the state filter works and a bad state is a 400."""
    world, page, url = admin, browser.page, admin.pages.url
    acme, globex = _tenant_id(world.sessions, "acme"), _tenant_id(world.sessions, "globex")
    raw = b"From: richard@acme.example\r\nTo: carol@client.example\r\nSubject: hi\r\n\r\nhi\r\n"
    with world.sessions.begin() as session:
        (waiting,) = outbox.enqueue(
            session, world.blobs, raw=raw, mail_from="richard@acme.example",
            rcpt_to=["carol@client.example"], kind=OutboundKind.RELAY, tenant_id=acme,
        )  # fmt: skip
        (deferred,) = outbox.enqueue(
            session, world.blobs, raw=raw, mail_from="richard@acme.example",
            rcpt_to=["dave@full.example"], kind=OutboundKind.RELAY, tenant_id=acme,
        )  # fmt: skip
        (foreign,) = outbox.enqueue(
            session, world.blobs, raw=raw, mail_from="olga@globex.test",
            rcpt_to=["x@globex-client.example"], kind=OutboundKind.RELAY, tenant_id=globex,
        )  # fmt: skip
        # What the delivery worker records after a 451 (relay.worker._result).
        reply = "451 4.2.2 Mailbox full (mx.full.example[192.0.2.7]:25)"
        deferred.attempts = 1
        deferred.last_error = reply
        deferred.results = {
            "dave@full.example": {
                "status": "deferred", "code": 451, "text": "4.2.2 Mailbox full",
                "host": "mx.full.example[192.0.2.7]:25", "reply": reply,
                "at": utcnow().isoformat(), "attempt": 1,
            }
        }  # fmt: skip
        ids = (waiting.queue_id, deferred.queue_id, foreign.queue_id)
        rows = (waiting.id, deferred.id)
    _sign_in(browser, _link(world))
    _open(browser, f"{url}/admin/queue")
    listed = page.text_content("#queue") or ""
    assert ids[0] in listed and ids[1] in listed and ids[2] not in listed
    order = [page.locator("#queue tbody tr").nth(i).get_attribute("id") for i in (0, 1)]
    assert order == [f"row-{rows[1]}", f"row-{rows[0]}"]
    assert "not tried yet" in (page.text_content(f"#row-{rows[0]}") or "")
    words = page.text_content(f"#row-{rows[1]} td.reply") or ""
    assert words.startswith("will try again: the mailbox is full: a temporary failure")
    assert reply in words
    browser.shot("queue")
    _fits_a_phone(browser, "queue")
    _no_inline_script_or_errors(browser)

    page.select_option("#state", "held")
    _submit(browser, "#filter button")
    assert page.url.endswith("/admin/queue?state=held")
    assert page.text_content("#empty") == "No held mail."
    _open(browser, f"{url}/admin/queue?state=bogus", status=400)
    assert "choose one of" in (page.text_content("#error") or "")


def test_a_staff_member_who_is_not_an_admin_gets_404(world: World, browser: Browser) -> None:
    """Every admin page and action answers a non-admin 404, like a page that does not exist."""
    page, url = browser.page, world.pages.url
    _sign_in(browser, _link(world))
    csrf = _csrf(browser)
    for path in ("/admin/queue", "/admin/dns", "/admin/webhooks", "/admin/tokens"):
        assert page.goto(url + path).status == 404, path
    for path in ("/admin/dns/check", "/admin/webhooks", "/admin/tokens"):
        answer = page.request.post(url + path, form={"csrf": csrf, "url": "http://x.test/"})
        assert answer.status == 404, path
    browser.shot("admin-notfound")
    with world.sessions() as session:
        assert session.scalars(select(ApiToken)).first() is None
        assert session.scalars(select(WebhookEndpoint)).first() is None
