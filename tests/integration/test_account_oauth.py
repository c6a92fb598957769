"""OAuth 2.0 accounts: sign-in through `account add --oauth`, XOAUTH2 against Dovecot's oauth2
passdb, refresh before expiry with the rotated refresh token stored, and invalid_grant.

The provider is ``testing.oauthserver`` on 127.0.0.1 (Google's and Microsoft's own servers
are the only things not real here); Dovecot asks its introspection endpoint about each token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mailledger.cli.demo import DemoAddresses
from mailledger.cli.main import main
from mailledger.config import OAuthSettings, OAuthSettingsAll, Settings, masked
from mailledger.store import directory
from mailledger.store.blobs import BlobStore
from mailledger.store.mailaccounts import AccountRequest, add_account
from mailledger.store.models import AccountKind, AccountStatus, MailboxAccount, MailboxError
from mailledger.store.secretbox import SecretBox
from mailledger.sync import oauth
from mailledger.sync.credentials import login_for
from mailledger.testing.cli import use_settings
from mailledger.testing.dovecot import Dovecot, running_dovecot
from mailledger.testing.mail import make_email
from mailledger.testing.oauthserver import CLIENT_ID, CLIENT_SECRET, OAuthServer
from mailledger.testing.syncing import syncer

USER = "richard.smith@mail.test.example"
REDIRECT = "http://127.0.0.1:9/accounts/oauth/callback"


@pytest.fixture
def provider() -> Iterator[OAuthServer]:
    with OAuthServer() as server:
        yield server


@pytest.fixture
def dovecot(provider: OAuthServer) -> Iterator[Dovecot]:
    for server in running_dovecot(oauth2_url=provider.introspection_url):
        server.add_user(USER, "correct horse")
        yield server


@pytest.fixture
def settings(settings: Settings, provider: OAuthServer) -> Settings:
    """Google sign-in pointed at the local provider."""
    google = OAuthSettings(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        auth_url=provider.auth_url,
        token_url=provider.token_url,
        scopes=["https://mail.google.com/"],
        redirect_uri=REDIRECT,
    )
    return settings.model_copy(update={"oauth": OAuthSettingsAll(google=google)})


class Browser:
    """Standard input for `account add --oauth`: opens the printed address, pastes the
    address the provider redirected to (what a person does on a headless server)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.printed = ""

    def readline(self) -> str:
        self.printed = self.capsys.readouterr().err
        url = re.search(r"^  (http\S+)$", self.printed, re.MULTILINE)
        assert url is not None, self.printed
        answer = httpx.get(url.group(1), follow_redirects=False)
        assert answer.status_code == 302
        return answer.headers["location"] + "\n"


def _env(monkeypatch: pytest.MonkeyPatch, settings: Settings, provider: OAuthServer) -> None:
    use_settings(
        monkeypatch,
        settings,
        OAUTH__GOOGLE__CLIENT_ID=CLIENT_ID,
        OAUTH__GOOGLE__CLIENT_SECRET=CLIENT_SECRET,
        OAUTH__GOOGLE__AUTH_URL=provider.auth_url,
        OAUTH__GOOGLE__TOKEN_URL=provider.token_url,
        OAUTH__GOOGLE__REDIRECT_URI=REDIRECT,
    )


def _account(sessions: sessionmaker[Session], account_id: int) -> MailboxAccount:
    with sessions() as session:
        account = session.get_one(MailboxAccount, account_id)
        session.expunge(account)
        return account


def _google_account(
    sessions: sessionmaker[Session], settings: Settings, dovecot: Dovecot, refresh: str
) -> int:
    """A Google account on the test Dovecot whose user signed in before (``refresh``)."""
    box = SecretBox.from_file(settings.secrets.key_file)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        account = add_account(
            session,
            box,
            AccountRequest(
                tenant=directory.find_tenant(session, "acme"),
                username="richard",
                login=USER,
                imap=f"{dovecot.host}:{dovecot.port}",
                oauth=AccountKind.GOOGLE,
                security="none",
                since="1m",
            ),
            now=now,
        )
        account.secret = box.seal(refresh)
        account.access_token = box.seal("at-long-gone")
        account.access_token_expires_at = now - timedelta(minutes=1)
        account.status = AccountStatus.PENDING
        return account.id


def test_account_add_oauth_signs_in_headless_and_syncs_over_xoauth2(
    *,
    sessions: sessionmaker[Session],
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
    provider: OAuthServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The printed address, pasted back, connects the account; a pass logs in with XOAUTH2."""
    dovecot.append(USER, "INBOX", [make_email(subject="Spring order")])
    _env(monkeypatch, settings, provider)
    browser = Browser(capsys)
    monkeypatch.setattr("sys.stdin", browser)
    code = main(
        [
            "account", "add", "acme", "richard", "--imap", f"{dovecot.host}:{dovecot.port}",
            "--security", "none", "--login", USER, "--oauth", "google", "--since", "1m",
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    account_id = int(out.strip())
    assert "sign in to Google as " + USER in browser.printed
    assert "code_challenge_method=S256" in browser.printed
    # The code was exchanged with the PKCE verifier; the refresh token is stored sealed.
    assert [r["grant_type"] for r in provider.requests] == ["authorization_code"]
    account = _account(sessions, account_id)
    box = SecretBox.from_file(settings.secrets.key_file)
    assert account.status is AccountStatus.PENDING
    assert account.oauth_state is None
    assert box.open(account.secret) in provider.refresh_tokens(USER)
    assert "rt-" not in account.secret

    assert main(["account", "sync", str(account_id)]) == 0
    out, err = capsys.readouterr()
    assert "enabled, 1 message(s) fetched" in out, out + err
    assert "method=XOAUTH2" in dovecot.log_text()
    assert provider.introspections  # Dovecot asked the provider about the token


def test_an_expired_access_token_is_refreshed_and_the_rotated_refresh_token_stored(
    *,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
    provider: OAuthServer,
) -> None:
    """Microsoft-style rotation: the old refresh token stops working the moment a new one is
    issued, so a pass that did not store it would end the account at the next refresh."""
    dovecot.append(USER, "INBOX", [make_email(subject="Spring order")])
    first = provider.issue_refresh_token(USER)
    account_id = _google_account(sessions, settings, dovecot, first)
    engine = syncer(sessions, blobs, settings, dovecot)
    box = SecretBox.from_file(settings.secrets.key_file)

    result = engine.run(account_id)
    assert result.problem is None, result.problem
    assert result.fetched == 1
    assert len(provider.grants("refresh_token")) == 1
    account = _account(sessions, account_id)
    rotated = box.open(account.secret)
    assert rotated != first
    assert provider.refresh_tokens(USER) == [rotated]
    assert account.access_token_expires_at is not None
    assert account.access_token_expires_at > datetime.now(UTC) + timedelta(minutes=55)

    # A valid token is used as it is; one expiring within five minutes is refreshed first.
    assert engine.run(account_id).problem is None
    assert len(provider.grants("refresh_token")) == 1
    with sessions.begin() as session:
        row = session.get_one(MailboxAccount, account_id)
        expires = row.access_token_expires_at
        assert expires is not None
        login_for(session, row, box, settings.oauth, expires - timedelta(minutes=4))
    assert len(provider.grants("refresh_token")) == 2
    assert provider.grants("refresh_token")[1]["refresh_token"] == rotated
    assert box.open(_account(sessions, account_id).secret) == provider.refresh_tokens(USER)[0]
    # ... and the next pass logs in with what was stored.
    provider.expire_access_tokens()
    with sessions.begin() as session:
        session.get_one(MailboxAccount, account_id).access_token_expires_at = datetime.now(UTC)
    assert engine.run(account_id).status is AccountStatus.ENABLED


def test_invalid_grant_means_reconnect_without_an_imap_login(
    *,
    sessions: sessionmaker[Session],
    blobs: BlobStore,
    settings: Settings,
    demo: DemoAddresses,
    dovecot: Dovecot,
    provider: OAuthServer,
) -> None:
    """A revoked grant: reconnect, in words, and Dovecot never sees a login attempt."""
    refresh = provider.issue_refresh_token(USER)
    account_id = _google_account(sessions, settings, dovecot, refresh)
    provider.revoke_user(USER)
    result = syncer(sessions, blobs, settings, dovecot).run(account_id)
    assert result.status is AccountStatus.RECONNECT
    assert result.problem is not None
    assert "invalid_grant" in result.problem.what
    assert result.problem.fix == "re-connect the account with Google sign-in"
    assert "auth failed" not in dovecot.log_text()
    with sessions() as session:
        logged = session.scalars(select(MailboxError.status)).all()
    assert logged == ["reconnect"]


def test_sign_in_refusals_are_said_in_words(
    sessions: sessionmaker[Session], settings: Settings, demo: DemoAddresses, provider: OAuthServer
) -> None:
    """Refused at the provider, an unknown or lapsed state, a reused code: clear errors."""
    box = SecretBox.from_file(settings.secrets.key_file)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        account = add_account(
            session,
            box,
            AccountRequest(
                tenant=directory.find_tenant(session, "acme"),
                username="richard",
                login=USER,
                oauth=AccountKind.GOOGLE,
            ),
            now=now,
        )
        assert (account.host, account.port) == ("imap.gmail.com", 993)
        assert account.status is AccountStatus.RECONNECT
        url = oauth.begin_authorization(
            session, account, box, settings.oauth, public_url="http://x", now=now
        )
        state = account.oauth_state
    assert state is not None
    with pytest.raises(oauth.AuthorizationError, match="refused: access_denied"):
        oauth.parse_redirect(REDIRECT + "?error=access_denied&state=" + state)
    location = httpx.get(url, follow_redirects=False).headers["location"]
    _, code = oauth.parse_redirect(location)
    kwargs: dict[str, Any] = {
        "box": box,
        "oauth": settings.oauth,
        "public_url": "http://x",
    }
    with sessions.begin() as session, pytest.raises(oauth.AuthorizationError, match="unknown"):
        oauth.complete_authorization(session, "nonsense", code, now=now, **kwargs)
    with sessions.begin() as session, pytest.raises(oauth.AuthorizationError, match="lapsed"):
        oauth.complete_authorization(
            session, state, code, now=now + timedelta(minutes=16), **kwargs
        )
    with sessions.begin() as session:
        done = oauth.complete_authorization(session, state, code, now=now, **kwargs)
        assert done.status is AccountStatus.PENDING
    with sessions.begin() as session, pytest.raises(oauth.AuthorizationError, match="unknown"):
        oauth.complete_authorization(session, state, code, now=now, **kwargs)


def test_client_secrets_are_masked_in_check_config(settings: Settings) -> None:
    shown = masked(settings)["oauth"]
    assert shown["google"]["client_secret"] == "********"
    assert shown["google"]["client_id"] == CLIENT_ID
    assert shown["microsoft"]["token_url"].startswith("https://login.microsoftonline.com/")
    assert shown["microsoft"]["scopes"] == [
        "https://outlook.office.com/IMAP.AccessAsUser.All",
        "offline_access",
    ]
