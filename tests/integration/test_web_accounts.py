"""Mailbox accounts on the web pages, in headless Chromium against the real HTTP server, a real
Dovecot and the local OAuth provider: connect, sync now, re-connect, sign in with Google,
disconnect, who may see what, and the admin's page.

"Sync now" makes the account due; the sync worker runs the pass. Here the test runs that pass
itself with the engine (``sync.passes``, as ``account sync`` does) and reloads the page.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.config import OAuthSettings, OAuthSettingsAll, Settings
from mailledger.store import directory
from mailledger.store.blobs import BlobStore
from mailledger.store.mailaccounts import AccountRequest, add_account
from mailledger.store.models import (
    AccountKind,
    AccountStatus,
    MailboxAccount,
    MailboxError,
    Staff,
    Tenant,
    utcnow,
)
from mailledger.store.secretbox import SecretBox
from mailledger.testing.dovecot import Dovecot, running_dovecot
from mailledger.testing.mail import make_email
from mailledger.testing.oauthserver import CLIENT_ID, CLIENT_SECRET, OAuthServer
from mailledger.testing.syncing import activity_count, process_received, syncer
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
sync_api = pytest.importorskip("playwright.sync_api")

USER = "richard.smith@mail.test.example"
PASSWORD = "correct horse battery"
WRONG = "incorrect donkey"


@dataclass
class World:
    pages: RunningPages
    sessions: sessionmaker[Session]
    blobs: BlobStore
    settings: Settings
    dovecot: Dovecot
    provider: OAuthServer
    richard: int
    olga: int
    ada: int
    globex_admin: int

    def link(self, staff_id: int) -> str:
        return signin_link(self.sessions, self.pages.url, staff_id)

    def run_pass(self, account_id: int) -> AccountStatus:
        """What the sync worker does once the account is due: one pass, then processing."""
        result = syncer(self.sessions, self.blobs, self.settings, self.dovecot).run(account_id)
        process_received(self.sessions, self.blobs, self.settings)
        return result.status

    def account(self, account_id: int) -> MailboxAccount | None:
        with self.sessions() as session:
            row = session.get(MailboxAccount, account_id)
            if row is not None:
                session.expunge(row)
            return row

    def only_account_id(self) -> int:
        with self.sessions() as session:
            ids = session.scalars(select(MailboxAccount.id)).all()
        assert len(ids) == 1, ids
        return ids[0]


@pytest.fixture
def provider() -> Iterator[OAuthServer]:
    with OAuthServer() as server:
        yield server


@pytest.fixture
def dovecot(provider: OAuthServer) -> Iterator[Dovecot]:
    for server in running_dovecot(oauth2_url=provider.introspection_url):
        server.add_user(USER, PASSWORD)
        yield server


@pytest.fixture
def world(
    *,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
    provider: OAuthServer,
) -> Iterator[World]:
    """The demo tenant with Richard, Olga (staff) and Ada (admin); Globex with its own admin.

    Google sign-in points at the local provider; the redirect address is the default one,
    under the running server's public URL.
    """
    google = OAuthSettings(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        auth_url=provider.auth_url,
        token_url=provider.token_url,
        scopes=["https://mail.google.com/"],
    )
    settings = settings.model_copy(update={"oauth": OAuthSettingsAll(google=google)})
    with sessions.begin() as session:
        acme = session.scalars(select(Tenant).where(Tenant.name == "acme")).one()
        richard = session.scalars(select(Staff).where(Staff.tenant_id == acme.id)).one()
        olga = directory.add_staff(session, acme, "olga", ["olga@acme.example"])
        ada = directory.add_staff(session, acme, "ada", ["ada@acme.example"])
        ada.admin = True
        globex = directory.add_tenant(session, "globex", "globex.capture.example", ["globex.test"])
        boss = directory.add_staff(session, globex, "boss", ["boss@globex.test"])
        boss.admin = True
        session.flush()
        ids = (richard.id, olga.id, ada.id, boss.id)
    with RunningPages(sessions, blobs, settings) as pages:
        yield World(pages, sessions, blobs, settings, dovecot, provider, *ids)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with chromium_page(tmp_path / "screenshots", height=1400) as found:
        yield found


def _status(browser: Browser, account_id: int) -> str:
    text: str = browser.page.inner_text(f"#account-{account_id}-status")
    return text


def _connect_imap(world: World, browser: Browser, password: str) -> int:
    """Fill in and send the IMAP form on the integrations page; the new account's id."""
    page = browser.page
    page.goto(f"{world.pages.url}/integrations#mailbox")
    page.fill("#imap-host", f"{world.dovecot.host}:{world.dovecot.port}")
    page.fill("#imap-login", USER)
    page.fill("#imap-password", password)
    page.select_option("#imap-security", "none")
    page.select_option("#imap-since", "1m")
    page.click("#connect-imap-button")
    page.wait_for_selector("#account-done")
    assert "done=added" in page.url
    assert password not in page.url
    assert password not in page.content()
    return world.only_account_id()


def test_a_staff_member_connects_an_imap_mailbox_and_sync_now_enables_it(
    world: World, browser: Browser
) -> None:
    """The form adds a pending account (password sealed, never echoed); Sync now makes it
    due, the pass runs, and the card says Enabled with the count."""
    world.dovecot.append(USER, "INBOX", [make_email(subject="Spring order")])
    sign_in(browser, world.link(world.richard))
    browser.shot("integrations-empty")
    assert browser.page.inner_text("#no-accounts")

    account_id = _connect_imap(world, browser, PASSWORD)
    assert _status(browser, account_id).startswith("Pending")
    browser.shot("connected-pending")
    row = world.account(account_id)
    assert row is not None
    assert row.kind is AccountKind.IMAP and row.staff_id == world.richard
    assert PASSWORD not in row.secret
    assert SecretBox.from_file(world.settings.secrets.key_file).open(row.secret) == PASSWORD

    browser.page.click(f"#sync-{account_id}")
    browser.page.wait_for_selector("#account-done")
    assert "Sync requested" in browser.page.inner_text("#account-done")
    assert world.run_pass(account_id) is AccountStatus.ENABLED
    browser.page.goto(f"{world.pages.url}/integrations#mailbox")
    assert _status(browser, account_id).startswith("Enabled")
    assert browser.page.inner_text(f"#account-{account_id}-count") == "1"
    assert browser.page.inner_text(f"#account-{account_id}-last-sync") != "never"
    browser.shot("synced-enabled")
    browser.shot("integrations-mailbox")
    assert not browser.errors, browser.errors


def test_a_wrong_password_shows_reconnect_with_the_fix_and_reconnecting_clears_it(
    world: World, browser: Browser
) -> None:
    """Dovecot refuses the login: the card says Re-connect and how to fix it; the right
    password, typed into the re-connect form, makes it pending and the next pass enables it."""
    world.dovecot.append(USER, "INBOX", [make_email(subject="Spring order")])
    sign_in(browser, world.link(world.richard))
    account_id = _connect_imap(world, browser, WRONG)
    browser.page.click(f"#sync-{account_id}")
    browser.page.wait_for_selector("#account-done")
    assert world.run_pass(account_id) is AccountStatus.RECONNECT

    page = browser.page
    page.goto(f"{world.pages.url}/integrations#mailbox")
    assert _status(browser, account_id).startswith("Re-connect")
    errors = page.inner_text(f"#account-{account_id}-errors")
    assert "the password is wrong or was changed" in errors
    assert "How to fix it: re-connect the account with the current password" in errors
    browser.shot("reconnect-needed")
    # Sync now does not hammer the server with a refused password.
    page.click(f"#sync-{account_id}")
    page.wait_for_selector("#account-error")
    assert "needs re-connecting first" in page.inner_text("#account-error")

    # The whole error log is on the account's own page.
    page.goto(f"{world.pages.url}/accounts/{account_id}")
    assert "the password is wrong" in page.inner_text(f"#account-{account_id}-errors")

    page.fill(f"#password-{account_id}", PASSWORD)
    page.click(f"#reconnect-{account_id}")
    page.wait_for_selector("#account-done")
    assert "Re-connected" in page.inner_text("#account-done")
    assert PASSWORD not in page.url and PASSWORD not in page.content()
    assert _status(browser, account_id).startswith("Pending")
    assert world.run_pass(account_id) is AccountStatus.ENABLED
    page.reload()
    assert _status(browser, account_id).startswith("Enabled")
    browser.shot("reconnected")


def test_the_sender_checks_server_is_set_on_the_card(world: World, browser: Browser) -> None:
    """The card's "Authentication-Results id" form sets whose checks the mail is judged on,
    as ``account set --authserv-id`` does; a value that is not one name is refused in words."""
    sign_in(browser, world.link(world.richard))
    account_id = _connect_imap(world, browser, PASSWORD)
    page = browser.page
    assert "nobody" in page.inner_text(f"#account-{account_id}-authserv-id")
    page.fill(f"#authserv-id-{account_id}", "Mail.Acme.COM")
    page.click(f"#authserv-{account_id}")
    page.wait_for_selector("#account-done")
    assert "Saved" in page.inner_text("#account-done")
    assert "mail.acme.com" in page.inner_text(f"#account-{account_id}-authserv-id")
    assert page.input_value(f"#authserv-id-{account_id}") == "mail.acme.com"
    account = world.account(account_id)
    assert account is not None and account.authserv_id == "mail.acme.com"

    page.fill(f"#authserv-id-{account_id}", "mail.acme.com; dkim=pass")
    page.click(f"#authserv-{account_id}")
    page.wait_for_selector("#account-error")
    assert "give the one name" in page.inner_text("#account-error")
    account = world.account(account_id)
    assert account is not None and account.authserv_id == "mail.acme.com"
    assert not browser.errors, browser.errors


def test_google_sign_in_stores_the_refresh_token_sealed(world: World, browser: Browser) -> None:
    """Connect with Google: to the provider and back through the callback; the refresh token
    is stored sealed, and a pass logs in to Dovecot with XOAUTH2."""
    world.dovecot.append(USER, "INBOX", [make_email(subject="Spring order")])
    page = browser.page
    sign_in(browser, world.link(world.richard))
    page.fill("#oauth-login", USER)
    page.select_option("#oauth-since", "1m")
    page.click("#connect-google")
    page.wait_for_selector("#account-done")
    assert "done=connected" in page.url
    assert "Signed in and connected" in page.inner_text("#account-done")
    assert [r["grant_type"] for r in world.provider.requests] == ["authorization_code"]

    account_id = world.only_account_id()
    row = world.account(account_id)
    assert row is not None
    assert row.kind is AccountKind.GOOGLE and row.oauth_state is None
    box = SecretBox.from_file(world.settings.secrets.key_file)
    assert box.open(row.secret) in world.provider.refresh_tokens(USER)
    assert "rt-" not in row.secret
    assert _status(browser, account_id).startswith("Pending")
    browser.shot("google-connected")

    # Google's IMAP server is the test Dovecot here; the pass signs in with the stored token.
    with world.sessions.begin() as session:
        session.execute(
            update(MailboxAccount)
            .where(MailboxAccount.id == account_id)
            .values(host=world.dovecot.host, port=world.dovecot.port, security="none")
        )
    assert world.run_pass(account_id) is AccountStatus.ENABLED
    assert "method=XOAUTH2" in world.dovecot.log_text()
    assert not browser.errors, browser.errors


def test_sign_in_refusals_show_a_clear_page_never_a_500(world: World, browser: Browser) -> None:
    """The provider says access_denied: a page in words, and no half-made account; an unknown
    state or a missing code: the same, with status 400."""
    page = browser.page
    sign_in(browser, world.link(world.richard))
    world.provider.refuse_sign_in = True
    page.fill("#oauth-login", USER)
    page.click("#connect-google")
    page.wait_for_selector("#signin-failed")
    assert "did not allow mailledger to read the mailbox" in page.inner_text("#signin-failed")
    browser.shot("signin-refused")
    with world.sessions() as session:
        assert session.scalar(select(func.count(MailboxAccount.id))) == 0

    callback = f"{world.pages.url}/accounts/oauth/callback"
    for query in ("?state=made-up&code=abc", "?code=abc", ""):
        answer = page.goto(callback + query)
        assert answer is not None and answer.status == 400
        assert page.inner_text("#signin-failed")
    assert "unknown or was already used" in httpx.get(callback + "?state=x&code=y").text


def test_disconnect_asks_keep_or_remove_and_remove_history_deletes_what_it_brought(
    world: World, browser: Browser
) -> None:
    """Disconnect without a choice is refused; with "remove" the account goes with the
    activity only it brought in."""
    world.dovecot.append(USER, "INBOX", [make_email(subject="Only synced")])
    sign_in(browser, world.link(world.richard))
    account_id = _connect_imap(world, browser, PASSWORD)
    assert world.run_pass(account_id) is AccountStatus.ENABLED
    assert activity_count(world.sessions) == 1

    page = browser.page
    page.reload()
    page.click(f"#disconnect-{account_id}")
    page.wait_for_selector("#account-error")
    assert "Choose what happens" in page.inner_text("#account-error")
    assert world.account(account_id) is not None

    page.check(f"#remove-{account_id}")
    page.click(f"#disconnect-{account_id}")
    page.wait_for_selector("#account-done")
    assert "1 activity(ies) deleted" in page.inner_text("#account-done")
    browser.shot("disconnected")
    assert world.account(account_id) is None
    assert activity_count(world.sessions) == 0
    assert page.inner_text("#no-accounts")


def _account_of_richard(world: World) -> int:
    with world.sessions.begin() as session:
        account = add_account(
            session,
            SecretBox.from_file(world.settings.secrets.key_file),
            AccountRequest(
                tenant=directory.find_tenant(session, "acme"),
                username="richard",
                login=USER,
                imap=f"{world.dovecot.host}:{world.dovecot.port}",
                password=WRONG,
                security="none",
            ),
            now=utcnow(),
        )
        return account.id


def _csrf(browser: Browser) -> str:
    token: str = browser.page.get_attribute("#connect-imap input[name=csrf]", "value") or ""
    assert token
    return token


def test_other_staff_get_404_and_the_admin_sees_every_account(
    world: World, browser: Browser
) -> None:
    """Olga (same tenant) and Globex's admin get 404 on Richard's account; Ada, the admin,
    sees it on /admin/accounts with its last error in words, and adds a shared mailbox that
    Olga then sees without its buttons. A POST without the token changes nothing."""
    account_id = _account_of_richard(world)
    assert world.run_pass(account_id) is AccountStatus.RECONNECT
    page = browser.page
    base = world.pages.url

    sign_in(browser, world.link(world.olga))
    token = _csrf(browser)
    assert page.locator(f"#account-{account_id}").count() == 0
    answer = page.goto(f"{base}/accounts/{account_id}")
    assert answer is not None and answer.status == 404
    for action in ("sync", "reconnect", "authserv", "remove"):
        posted = page.request.post(
            f"{base}/accounts/{account_id}/{action}",
            form={"csrf": token, "password": PASSWORD, "history": "remove", "authserv_id": "x"},
            max_redirects=0,
        )
        assert posted.status == 404, action
    answer = page.goto(f"{base}/admin/accounts")
    assert answer is not None and answer.status == 404
    assert world.account(account_id) is not None

    sign_in(browser, world.link(world.globex_admin))
    answer = page.goto(f"{base}/admin/accounts/{account_id}")
    assert answer is not None and answer.status == 404
    assert page.locator(f"#account-{account_id}").count() == 0
    page.goto(f"{base}/admin/accounts")
    assert page.inner_text("#empty")

    sign_in(browser, world.link(world.ada))
    page.goto(f"{base}/admin")
    page.click("a[href='/admin/accounts']")
    page.wait_for_selector("#accounts")
    assert page.inner_text(f"#account-{account_id}-status") == "Re-connect"
    assert "the password is wrong" in page.inner_text(f"#account-{account_id}-error")
    browser.shot("admin-accounts")
    page.click(f"a[href='/admin/accounts/{account_id}']")
    assert "How to fix it" in page.inner_text(f"#account-{account_id}-errors")
    browser.shot("admin-account")
    forged = page.request.post(
        f"{base}/admin/accounts/{account_id}/remove", form={"history": "remove"}
    )
    assert forged.status == 403
    assert world.account(account_id) is not None

    # A shared mailbox, seen by Olga.
    page.goto(f"{base}/admin/accounts")
    page.fill("#imap-host", f"{world.dovecot.host}:{world.dovecot.port}")
    page.fill("#imap-login", "sales@mail.test.example")
    page.fill("#imap-password", "sales secret")
    page.select_option("#imap-security", "none")
    page.fill("#visible-to", "olga")
    page.click("#add-shared-button")
    page.wait_for_selector("#done")
    assert "sales secret" not in page.content()
    with world.sessions() as session:
        shared_id = session.scalars(
            select(MailboxAccount.id).where(MailboxAccount.shared.is_(True))
        ).one()
    assert "olga" in page.inner_text(f"#account-{shared_id}")

    sign_in(browser, world.link(world.olga))
    assert page.inner_text(f"#account-{shared_id}-status").startswith("Pending")
    assert page.locator(f"#sync-{shared_id}").count() == 0
    posted = page.request.post(
        f"{base}/accounts/{shared_id}/sync", form={"csrf": _csrf(browser)}, max_redirects=0
    )
    assert posted.status == 404
    answer = page.goto(f"{base}/accounts/{shared_id}")
    assert answer is not None and answer.status == 200
    with world.sessions() as session:
        assert session.scalar(select(func.count(MailboxError.id))) == 1
    assert not browser.errors, browser.errors
