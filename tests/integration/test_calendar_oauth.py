"""Google Calendar's way in: OAuth sign-in, bearer tokens, refresh and rotation, reconnect.

Radicale stands in for the CalDAV server behind a loopback front door that, like Google's,
takes only bearer tokens and checks each one with the local OAuth provider's introspection
endpoint before forwarding the request; the provider rotates refresh tokens on every
refresh and kills the old one, so a rotated token that is not stored fails the test.
"""

from __future__ import annotations

import re
import sys
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from mailledger.calendar.passes import CalendarSyncer
from mailledger.cli.demo import DemoAddresses
from mailledger.config import OAuthSettings, OAuthSettingsAll, Settings
from mailledger.store.blobs import BlobStore
from mailledger.store.models import (
    AccountStatus,
    Activity,
    CalendarAccount,
    CalendarError,
    CalendarEvent,
    CalendarKind,
)
from mailledger.store.secretbox import SecretBox
from mailledger.testing.bearerproxy import BearerProxy
from mailledger.testing.cli import InProcessCli as Cli
from mailledger.testing.cli import use_settings
from mailledger.testing.oauthserver import CLIENT_ID, CLIENT_SECRET, OAuthServer
from mailledger.testing.radicale import Radicale
from mailledger.testing.webpages import RunningPages

USER = "richard"
PASSWORD = "radicale secret"
LOGIN = "richard@acme.example"
CONTACT = "carol@client.example"
REDIRECT = "http://127.0.0.1:9/accounts/oauth/callback"
CALENDAR_SCOPE = "https://www.googleapis.com/auth/calendar"


class Browser:
    """Standard input for `--oauth`: opens the printed address at the provider and pastes
    back the address it redirected to (what a person does on a headless server)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.opened: list[str] = []

    def readline(self) -> str:
        printed = self.capsys.readouterr().err
        found = re.search(r"^  (http\S+)$", printed, re.MULTILINE)
        assert found is not None, printed
        self.opened.append(found.group(1))
        answer = httpx.get(found.group(1), follow_redirects=False)
        assert answer.status_code == 302
        return answer.headers["location"] + "\n"


@pytest.fixture
def provider() -> Iterator[OAuthServer]:
    with OAuthServer() as server:
        yield server


@pytest.fixture
def radicale() -> Iterator[Radicale]:
    with Radicale({USER: PASSWORD}) as server:
        server.make_calendar(USER, "work", "Work")
        yield server


@pytest.fixture
def proxy(radicale: Radicale, provider: OAuthServer) -> Iterator[BearerProxy]:
    with BearerProxy(radicale.url, provider.introspection_url, {LOGIN: (USER, PASSWORD)}) as p:
        yield p


@pytest.fixture
def settings(settings: Settings, provider: OAuthServer) -> Settings:
    """Google sign-in pointed at the local provider, as the CLI's environment says too."""
    google = OAuthSettings(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        auth_url=provider.auth_url,
        token_url=provider.token_url,
        scopes=["https://mail.google.com/"],
        calendar_scopes=[CALENDAR_SCOPE],
        redirect_uri=REDIRECT,
    )
    return settings.model_copy(update={"oauth": OAuthSettingsAll(google=google)})


@pytest.fixture
def cli(
    settings: Settings,
    provider: OAuthServer,
    demo: DemoAddresses,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    use_settings(
        monkeypatch,
        settings,
        OAUTH__GOOGLE__CLIENT_ID=CLIENT_ID,
        OAUTH__GOOGLE__CLIENT_SECRET=CLIENT_SECRET,
        OAUTH__GOOGLE__AUTH_URL=provider.auth_url,
        OAUTH__GOOGLE__TOKEN_URL=provider.token_url,
        OAUTH__GOOGLE__CALENDAR_SCOPES=f'["{CALENDAR_SCOPE}"]',
        OAUTH__GOOGLE__REDIRECT_URI=REDIRECT,
    )
    return Cli(capsys)


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Browser:
    typed = Browser(capsys)
    monkeypatch.setattr(sys, "stdin", typed)
    return typed


def _ics(uid: str, start: datetime, summary: str) -> str:
    stamp = start.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    finish = (start + timedelta(hours=1)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return (
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//calendar app//EN\r\n"
        f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20260101T000000Z\r\n"
        f"DTSTART:{stamp}\r\nDTEND:{finish}\r\nSUMMARY:{summary}\r\n"
        f"ORGANIZER:mailto:{LOGIN}\r\nATTENDEE;CN=Carol:mailto:{CONTACT}\r\n"
        "END:VEVENT\r\nEND:VCALENDAR\r\n"
    )


def _soon(days: int) -> datetime:
    today = datetime.now(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    return today + timedelta(days=days)


def _account(sessions: sessionmaker[Session], account_id: int) -> CalendarAccount:
    with sessions() as session:
        account = session.get_one(CalendarAccount, account_id)
        session.expunge(account)
        return account


def _add(cli: Cli, proxy: BearerProxy) -> int:
    out = cli(
        "calendar", "add", "acme", USER, "--caldav", proxy.url + "/", "--login", LOGIN,
        "--oauth", "google", "--calendar", "Work",
    )  # fmt: skip
    return int(out.strip().splitlines()[-1])  # the id is the last line printed


def _access_token_lapsed(sessions: sessionmaker[Session], provider: OAuthServer) -> None:
    """An hour has passed: the provider no longer takes the access token, and we know it."""
    provider.expire_access_tokens()
    with sessions.begin() as session:
        session.execute(
            update(CalendarAccount).values(
                access_token_expires_at=datetime.now(UTC) - timedelta(minutes=1)
            )
        )


def test_add_with_google_sign_in_then_a_pass_syncs_through_bearer_tokens(
    *,
    cli: Cli,
    browser: Browser,
    provider: OAuthServer,
    proxy: BearerProxy,
    radicale: Radicale,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """`calendar add --oauth google` signs in with the calendar scope (PKCE, state), stores
    the refresh token sealed, finds the calendar with the bearer token, and a pass reads a
    meeting with a client onto the timeline; every CalDAV request carried a live token."""
    account_id = _add(cli, proxy)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(browser.opened[0]).query)
    assert query["scope"] == [CALENDAR_SCOPE]
    assert query["code_challenge_method"] == ["S256"]
    assert query["login_hint"] == [LOGIN]
    assert [g["grant_type"] for g in provider.requests] == ["authorization_code"]

    box = SecretBox.from_file(settings.secrets.key_file)
    account = _account(sessions, account_id)
    assert account.kind is CalendarKind.GOOGLE
    assert account.status is AccountStatus.PENDING
    assert account.calendar_url == proxy.url + "/richard/work/"
    assert account.calendar_name == "Work"
    assert account.oauth_state is None and account.oauth_verifier == ""
    assert box.open(account.secret) in provider.refresh_tokens(LOGIN)
    assert account.access_token and box.open(account.access_token).startswith("at-")

    radicale.put(
        USER, radicale.calendar_url(USER, "work") + "review.ics", _ics("g-1", _soon(3), "Review")
    )
    before = len(proxy.requests)
    out = cli("calendar", "sync", str(account_id))
    assert "enabled" in out, out
    with sessions() as session:
        event = session.scalars(
            select(CalendarEvent).where(CalendarEvent.account_id == account_id)
        ).one()
        assert event.uid == "g-1" and event.activity_id is not None
        assert session.get_one(Activity, event.activity_id).kind == "meeting"
    sent = proxy.requests[before:]
    assert sent and all(r.accepted for r in sent), sent
    # The token was fresh: no refresh was needed for this pass.
    assert provider.grants("refresh_token") == []


@pytest.mark.postgres
def test_an_expired_access_token_is_refreshed_and_the_rotated_refresh_token_stored(
    *,
    cli: Cli,
    browser: Browser,
    provider: OAuthServer,
    proxy: BearerProxy,
    radicale: Radicale,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """A lapsed access token is refreshed before the pass connects (under a row lock on
    PostgreSQL); the provider's new refresh token replaces the old (which no longer works),
    pass after pass."""
    account_id = _add(cli, proxy)
    box = SecretBox.from_file(settings.secrets.key_file)
    syncer = CalendarSyncer(sessions, settings, box)
    radicale.put(USER, radicale.calendar_url(USER, "work") + "a.ics", _ics("g-2", _soon(2), "Call"))
    for round_ in (1, 2):
        first = box.open(_account(sessions, account_id).secret)
        _access_token_lapsed(sessions, provider)
        before = len(proxy.requests)
        result = syncer.run(account_id)
        assert result.status is AccountStatus.ENABLED, result.problem
        assert len(provider.grants("refresh_token")) == round_
        account = _account(sessions, account_id)
        rotated = box.open(account.secret)
        assert rotated != first
        assert provider.refresh_tokens(LOGIN) == [rotated]  # the old one is dead
        assert account.access_token_expires_at is not None
        assert account.access_token_expires_at > datetime.now(UTC) + timedelta(minutes=30)
        sent = proxy.requests[before:]
        assert sent and all(r.accepted for r in sent), sent
    with sessions() as session:
        assert session.scalars(
            select(CalendarEvent.uid).where(CalendarEvent.account_id == account_id)
        ).all() == ["g-2"]


def test_invalid_grant_is_reconnect_without_a_caldav_request_then_sign_in_again(
    *,
    cli: Cli,
    browser: Browser,
    provider: OAuthServer,
    proxy: BearerProxy,
    radicale: Radicale,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """A revoked grant (`invalid_grant`) stops the account at `reconnect` with the fix in
    words, before any CalDAV request; `calendar reconnect` signs in again and it syncs."""
    account_id = _add(cli, proxy)
    provider.revoke_user(LOGIN)
    _access_token_lapsed(sessions, provider)
    before_proxy, before_radicale = len(proxy.requests), radicale.requests()
    out = cli("calendar", "sync", str(account_id), expect=1)
    assert "reconnect" in out, out
    assert "invalid_grant" in out
    assert f"fix:  sign in to Google again: `mailledger calendar reconnect {account_id}`" in out
    assert len(proxy.requests) == before_proxy  # no CalDAV request was made
    assert radicale.requests() == before_radicale
    account = _account(sessions, account_id)
    assert account.status is AccountStatus.RECONNECT
    assert account.retry_at is None
    with sessions() as session:
        logged = session.scalars(
            select(CalendarError).where(CalendarError.account_id == account_id)
        ).one()
        assert logged.status == "reconnect" and "invalid_grant" in logged.what
    # The service leaves it alone; `calendar sync` says what to do first.
    cli("calendar", "sync", str(account_id), expect=1)
    assert "needs re-connecting" in cli.err

    out = cli("calendar", "reconnect", str(account_id))
    assert "re-connected" in out
    assert len(browser.opened) == 2
    account = _account(sessions, account_id)
    assert account.status is AccountStatus.PENDING
    box = SecretBox.from_file(settings.secrets.key_file)
    assert provider.refresh_tokens(LOGIN) == [box.open(account.secret)]
    out = cli("calendar", "sync", str(account_id))
    assert "enabled" in out, out
    assert all(r.accepted for r in proxy.requests[before_proxy:])


def test_a_password_is_refused_for_a_google_calendar(
    cli: Cli, browser: Browser, proxy: BearerProxy
) -> None:
    """Google calendars sign in; `reconnect` with a password says so, and `add` wants one
    way to log in, not two or none."""
    account_id = _add(cli, proxy)
    cli("calendar", "reconnect", str(account_id), "--password-file", "-", expect=2)
    assert "signs in with google" in cli.err
    cli("calendar", "add", "acme", USER, "--caldav", proxy.url + "/", "--login", LOGIN, expect=2)
    assert "--oauth google" in cli.err


def test_the_web_callback_completes_a_calendar_sign_in(
    *,
    cli: Cli,
    provider: OAuthServer,
    proxy: BearerProxy,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The provider sends the browser to our own callback page: the state names the
    calendar account (not a mailbox), the page says so, and Enter in the command finishes."""
    google = settings.oauth.google.model_copy(update={"redirect_uri": ""})
    web_settings = settings.model_copy(update={"oauth": OAuthSettingsAll(google=google)})
    landed: list[httpx.Response] = []

    class WebBrowser:
        def readline(self) -> str:
            printed = capsys.readouterr().err
            found = re.search(r"^  (http\S+)$", printed, re.MULTILINE)
            assert found is not None, printed
            landed.append(httpx.get(found.group(1), follow_redirects=True))
            return "\n"  # the page said it is connected: just Enter

    with RunningPages(sessions, blobs, web_settings) as pages:
        monkeypatch.setenv("MAILLEDGER_OAUTH__GOOGLE__REDIRECT_URI", "")
        monkeypatch.setenv("MAILLEDGER_HTTP__PUBLIC_URL", pages.url)
        monkeypatch.setattr(sys, "stdin", WebBrowser())
        account_id = _add(cli, proxy)
    assert landed[0].status_code == 200
    assert landed[0].url.path == "/accounts/oauth/callback"
    assert "Calendar connected" in landed[0].text
    account = _account(sessions, account_id)
    assert account.status is AccountStatus.PENDING
    assert account.calendar_url == proxy.url + "/richard/work/"
    box = SecretBox.from_file(settings.secrets.key_file)
    assert provider.refresh_tokens(LOGIN) == [box.open(account.secret)]
